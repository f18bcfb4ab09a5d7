"""Jobs over several processes (issue 16): torchrun under run_spec and under the
worker, DDP that leaves the teacher alone, and numbers that do not depend on how
many ranks computed them.

Every multi-process test runs for real: ``torchrun --standalone`` with 2 gloo
ranks on this CPU. Each independent path is named where it is used: one process
holding the whole batch (DDP), one process evaluating every image (evaluation),
a second single-process evaluation of the job's own checkpoint (the worker).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from trained_models import Run
from worker_helpers import stack

from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.errors import RankFailed, RankLost
from pgd_core.presets import get_preset
from pgd_core.runner import RunCallbacks, run_spec
from pgd_core.spec import RunSpec
from pgd_service import queue as queues

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BACKBONE = "tiny-r18"


# -- what stays true without launching anything ------------------------------------


def _spec(name: str = "tiny-fcos-student", **changes: Any) -> RunSpec:
    data = get_preset(name).model_dump(mode="json")
    schedule = changes.pop("schedule", {})
    if "max_iters" in schedule:
        schedule.setdefault("milestones", [])
        schedule.setdefault("warmup_iters", 0)
    data["schedule"].update(schedule)
    data.update(changes)
    return RunSpec.model_validate(data)


def test_processes_are_bounded_and_must_split_the_batch_evenly():
    assert _spec(processes=2).batch_per_process == 2
    assert _spec(processes=4).batch_per_process == 1
    for bad in (0, 9):
        with pytest.raises(ValueError, match="processes"):
            _spec(processes=bad)
    with pytest.raises(ValueError, match=r"schedule.batch_size: 4 images .* over 3 processes"):
        _spec(processes=3)
    # An evaluation has no training batch to split.
    evaluate = _spec(kind="evaluate", checkpoint_ref="x", processes=3)
    assert evaluate.processes == 3


def test_the_process_count_changes_neither_the_stored_hash_of_old_specs_nor_the_group():
    one = _spec()
    # The canonical JSON written out by hand, without the field that did not exist
    # when the jobs stored so far were hashed.
    data = one.model_dump(mode="json")
    del data["processes"]
    import hashlib

    old = hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert one.spec_hash() == old
    two = _spec(processes=2)
    assert two.spec_hash() != one.spec_hash()  # an idempotent replay tells them apart
    assert two.config_hash() == one.config_hash()  # the leaderboard groups them


def test_queue_names_and_the_queues_a_worker_serves(monkeypatch: pytest.MonkeyPatch):
    assert queues.queue_for({"device": "cpu"}) == "cpu"
    assert queues.queue_for({"device": "cuda", "processes": 1}) == "gpu"
    assert queues.queue_for({"device": "cuda", "processes": 4}) == "gpu-x4"
    assert queues.queue_for({"device": "cpu", "processes": 2}) == "cpu-x2"
    assert queues.worker_queues(2, 0) == ["gpu", "gpu-x2"]
    assert queues.worker_queues(0, 3) == ["cpu", "cpu-x2", "cpu-x3"]
    assert queues.worker_queues(16, 0)[-1] == "gpu-x8"
    assert queues.parse_queues("gpu, cpu-x2") == ["gpu", "cpu-x2"]
    with pytest.raises(ValueError, match="gpu-x9"):
        queues.parse_queues("gpu,gpu-x9")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    assert queues.detect_gpus() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert queues.detect_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert queues.detect_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")  # CUDA stops at the invalid one
    assert queues.detect_gpus() == 1


def test_pgd_worker_refuses_a_queue_that_does_not_exist():
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "worker", "--queues", "gpu,gpu-x16"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "gpu-x16" in result.stderr and "gpu-xN" in result.stderr


def test_a_multi_process_config_is_mmengines_own_distributed_runner(tmp_path: Path):
    from pgd_core.configs.runner import runner_cfg
    from pgd_core.data.manifest import load_dataset_info

    make_coco_shapes(tmp_path, "shapes", num_train=2, num_val=1)
    info = load_dataset_info(tmp_path, "shapes")
    one = runner_cfg(_spec(), info, tmp_path)
    two = runner_cfg(_spec(processes=2), info, tmp_path)
    assert "launcher" not in one and "model_wrapper_cfg" not in one
    assert one["train_dataloader"]["batch_size"] == 4
    assert two["launcher"] == "pytorch"
    assert two["env_cfg"]["dist_cfg"] == {"backend": "gloo"}
    assert two["model_wrapper_cfg"]["type"] == "PGDDistributedDataParallel"
    assert two["train_dataloader"]["batch_size"] == 2  # the global 4 over 2 ranks
    cuda = runner_cfg(_spec(processes=2, device="cuda"), info, tmp_path)
    assert cuda["env_cfg"]["dist_cfg"] == {"backend": "nccl"}


@pytest.mark.parametrize("detector", ["fcos", "atss", "gfl", "autoassign", "ddod"])
@pytest.mark.parametrize(
    ("method", "adapter"), [("none", False), ("pgd", False), ("pgd", True), ("pgd_cls_only", True)]
)
def test_ddp_is_told_exactly_when_a_trainable_parameter_gets_no_gradient(
    detector: str, method: str, adapter: bool
):
    """DDP without ``find_unused_parameters`` hangs or raises on a parameter that gets
    no gradient; with it, every iteration pays a graph traversal. The config asks
    for it exactly when one backward leaves a trainable parameter without one."""
    from helpers import synthetic_batch
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    from pgd_core.configs.runner import _has_unused_parameters, model_cfg

    spec = get_preset(f"tiny-{detector}-pgd")
    if method == "none":
        spec = spec.baseline_spec()
    else:
        distill = spec.distill.model_copy(update={"adapter": adapter})
        if adapter:  # a narrower student bridged by the 1x1 adapters
            student = spec.student.model_copy(update={"head_channels": 16})
            distill = distill.model_copy(update={"init_student": False})
            spec = spec.model_copy(update={"student": student})
        spec = RunSpec.model_validate(
            {**spec.model_dump(), "method": method, "distill": distill.model_dump()}
        )
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(model_cfg(spec, 3)))
    model.init_weights()
    model.train()
    batch = model.data_preprocessor(synthetic_batch(num_images=2), training=True)
    losses = model.loss(batch["inputs"], batch["data_samples"])
    loss, _ = model.parse_losses(losses)  # what train_step back-propagates
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert bool(unused) == _has_unused_parameters(spec), unused


def test_a_rank_that_died_is_named_from_torchruns_summary(tmp_path: Path):
    from pgd_core.launch import Channel, failure_of

    channel = Channel(tmp_path)
    channel.reset()
    log = tmp_path / "launcher.log"
    # torchrun's summary when rank 1 was killed and rank 0 then lost its connection.
    log.write_text(
        "Failures:\n[1]:\n  time      : 2026-12-04_18:00:01\n  host      : h\n"
        "  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 122)\n----\n"
        "Root Cause (first observed failure):\n"
        "[0]:\n  time      : 2026-12-04_18:00:00\n  host      : h\n"
        "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 123)  (SIGKILL)\n"
    )
    channel.write_atomic(
        channel.root / "error-rank0.json",
        {"rank": 0, "time": 2.0, "reason": "error", "type": "RuntimeError", "message": "gloo"},
    )
    lost = failure_of(channel, log, 1)
    assert isinstance(lost, RankLost) and (lost.rank, lost.exitcode) == (1, -9)
    assert "rank 1 died: killed by SIGKILL" in str(lost)
    # No rank killed: the first error report written wins, with its reason.
    log.write_text(
        "Failures:\n  <NO_OTHER_FAILURES>\n----\nRoot Cause (first observed failure):\n"
        "[0]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 122)\n"
    )
    channel.write_atomic(
        channel.root / "error-rank1.json",
        {"rank": 1, "time": 1.0, "reason": "diverged", "type": "TrainingDiverged", "message": "a"},
    )
    failed = failure_of(channel, log, 1)
    assert isinstance(failed, RankFailed)
    assert (failed.rank, failed.reason, str(failed)) == (
        1,
        "diverged",
        "rank 1 failed: TrainingDiverged: a",
    )
    # Rank 0 raised after the last collective (its stop checkpoint: no space left)
    # while rank 1 waited at the final barrier; torchrun then stopped rank 1 with
    # SIGTERM before it could report. The job failed (rank 0's error): it is not a
    # lost rank to requeue.
    channel.reset()
    log.write_text(
        "Failures:\n[1]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : -15 (pid: 123)"
        "  (SIGTERM)\n----\nRoot Cause (first observed failure):\n"
        "[0]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 122)\n"
    )
    channel.write_atomic(
        channel.root / "error-rank0.json",
        {"rank": 0, "time": 1.0, "reason": "error", "type": "OSError", "message": "no space"},
    )
    full = failure_of(channel, log, 1)
    assert isinstance(full, RankFailed)
    assert (full.rank, str(full)) == (0, "rank 0 failed: OSError: no space")


def test_the_metric_refuses_results_that_hold_an_image_twice_or_miss_one():
    from pgd_core.evaluation.evaluators import ImageCountError, check_each_image_once

    check_each_image_once([3, 1, 2], {1, 2, 3})
    with pytest.raises(ImageCountError, match=r"1 image\(s\) twice \(first: 1\)"):
        check_each_image_once([1, 2, 1], {1, 2, 3})
    with pytest.raises(ImageCountError, match=r"1 image\(s\) missing \(first: 3\)"):
        check_each_image_once([1, 2], {1, 2, 3})


# -- launched: 2 gloo ranks under torchrun -------------------------------------------


@pytest.fixture(scope="module")
def dist_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A shapes set with an odd number of validation images, backbone weights (so the
    student's BatchNorm is frozen, as with the paper's ImageNet backbones) and a
    teacher checkpoint."""
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    import pgd_core.distill.distiller  # noqa: F401
    from pgd_core.configs.model import backbone_cfg, detector_cfg

    root = tmp_path_factory.mktemp("dist")
    make_coco_shapes(root / "data", "shapes", num_train=12, num_val=7, num_classes=3, seed=4)
    spec = get_preset("tiny-fcos-pgd")
    (root / "weights").mkdir()
    torch.manual_seed(1)
    backbone = MODELS.build(ConfigDict(backbone_cfg(spec.student, None)))
    torch.save({"state_dict": backbone.state_dict()}, root / "weights" / f"{BACKBONE}.pth")
    teacher = MODELS.build(ConfigDict(detector_cfg("fcos", spec.teacher, 3)))
    teacher.init_weights()
    torch.save({"state_dict": teacher.state_dict()}, root / "teacher.pth")
    return {
        "root": root,
        "data_root": str(root / "data"),
        "weights_root": str(root / "weights"),
        "teacher_checkpoint": str(root / "teacher.pth"),
    }


def _ranks_of(work_dir: Path) -> list[tuple[int, str | None]]:
    """(pid, RANK) of every live process started for ``work_dir`` (torchrun and its ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if str(work_dir).encode() not in cmdline:
                continue
            status = (entry / "status").read_text()
            if "\nState:\tZ" in status:  # a zombie is gone already
                continue
            env = dict(
                item.split(b"=", 1)
                for item in (entry / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        rank = env.get(b"RANK")
        found.append((int(entry.name), rank.decode() if rank else None))
    return found


def _wait_gone(work_dir: Path, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while _ranks_of(work_dir):
        assert time.monotonic() < deadline, f"left running: {_ranks_of(work_dir)}"
        time.sleep(0.2)


def test_two_ranks_take_the_step_one_process_takes_on_the_whole_batch(
    dist_inputs: dict[str, Any], tmp_path: Path
):
    """One distill iteration of global batch 4: 2 gloo ranks of 2 images each under
    mmengine's DDP against one process holding the 4 images. Same losses (the mean
    over the ranks, as a job reports them), same weights after the SGD step, and a
    teacher that DDP never touched."""
    sys.path.insert(0, str(TESTS))
    from dist_step import step

    base = get_preset("tiny-fcos-pgd").model_dump(mode="json")
    base["student"]["pretrained"] = BACKBONE
    base["schedule"]["batch_size"] = 4

    def inputs(processes: int) -> dict[str, Any]:
        spec = dict(base, processes=processes)
        work = tmp_path / f"work-{processes}"
        return {**dist_inputs, "spec": spec, "work_dir": str(work)}

    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({k: v for k, v in inputs(2).items() if k != "root"}))
    out = tmp_path / "out.json"
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(TESTS / "dist_step.py"),
            str(path),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    two = json.loads(out.read_text())
    one = step({k: v for k, v in inputs(1).items() if k != "root"})

    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["wrapper"] == "PGDDistributedDataParallel"
    assert set(two["losses"]) == set(one["losses"])
    assert {"loss_pgd_cls", "loss_pgd_reg", "loss_cls", "loss_bbox"} <= set(one["losses"])
    for name, value in one["losses"].items():
        assert two["losses"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    for name, after in one["params"].items():
        assert torch.allclose(
            torch.tensor(two["params"][name]), torch.tensor(after), rtol=1e-5, atol=1e-7
        ), name
    # ... and the step did move the student (a test of nothing would pass above).
    before = step_free_params(inputs(1))
    changed = sum(
        not torch.equal(torch.tensor(before[n]), torch.tensor(v)) for n, v in one["params"].items()
    )
    assert changed > 10
    # The teacher is outside DDP: not among its parameters, frozen, in eval mode.
    assert two["ddp_synced"] == two["student_trainable"]
    assert not two["teacher_in_module_tree"]
    assert not two["teacher_trainable"] and not two["teacher_training"]
    assert two["teacher_unchanged"]


def step_free_params(inputs: dict[str, Any]) -> dict[str, list[float]]:
    """The student's weights before any step (same build and initialisation)."""
    from mmengine.model import is_model_wrapper

    from pgd_core.runner import build_runner

    spec = RunSpec.model_validate(inputs["spec"])
    runner = build_runner(
        spec,
        inputs["work_dir"] + "-before",
        data_root=inputs["data_root"],
        weights_root=inputs["weights_root"],
        teacher_checkpoint=inputs["teacher_checkpoint"],
        resume=False,
    )
    runner._init_model_weights()
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return {n: p.detach().flatten().tolist() for n, p in model.named_parameters()}


def test_two_ranks_evaluate_to_exactly_the_numbers_of_one_process(library_run: Run, tmp_path: Path):
    """7 validation images over 2 ranks (one rank gets a repeated padding sample):
    mmengine gathers the results, the metric checks each image is there once, and
    every number equals the single process's."""
    data = tmp_path / "data"
    make_coco_shapes(data, "shapes", num_train=2, num_val=7, num_classes=3, seed=12)
    spec = library_run.spec.model_copy(update={"kind": "evaluate", "checkpoint_ref": "x"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs (torchrun sets OMP_NUM_THREADS=1)
    try:
        one = run_spec(spec, tmp_path / "one", data_root=data, checkpoint=library_run.checkpoint)
    finally:
        torch.set_num_threads(threads)
    two_spec = RunSpec.model_validate({**spec.model_dump(), "processes": 2})
    seen: list[tuple[int, dict[str, float]]] = []
    two = run_spec(
        two_spec,
        tmp_path / "two",
        data_root=data,
        checkpoint=library_run.checkpoint,
        callbacks=RunCallbacks(on_metrics=lambda it, values: seen.append((it, values))),
    )
    assert one.metrics["AP"] > 5.0  # a trained model: a real number, not zeros
    assert two.metrics == one.metrics
    assert seen == [(0, {f"val/{k}": v for k, v in one.metrics.items()})]
    assert [p.name for p in two.plots] == ["pr_curves.png"]
    assert (tmp_path / "two" / "launcher.log").is_file()
    _wait_gone(tmp_path / "two")


def test_a_two_rank_run_stops_together_on_cancel_and_resumes(
    dist_inputs: dict[str, Any], tmp_path: Path
):
    """Cancel: every rank stops at the same iteration and one checkpoint is saved;
    the next run resumes from it and finishes with an evaluation."""
    # Long enough that the ranks cannot finish between the first progress event
    # and the stop file (the caller polls every 0.2 s; an iteration takes ~0.05 s).
    spec = _spec(processes=2, schedule={"max_iters": 60, "checkpoint_interval": 1000})
    work = tmp_path / "work"
    progress: list[int] = []
    points: dict[int, dict[str, float]] = {}

    def metrics(it: int, values: dict[str, float]) -> None:
        points[it] = values

    stopped = run_spec(
        spec,
        work,
        data_root=dist_inputs["data_root"],
        callbacks=RunCallbacks(
            on_progress=lambda it, total: progress.append(it),
            on_metrics=metrics,
            should_stop=lambda: bool(progress),
        ),
    )
    # A stop right after the first iterations: before the ranks waited for each
    # other at the end, rank 1 could exit while rank 0 wrote the checkpoint and die
    # of SIGABRT (4 of 40 such runs; 0 of 45 with the barrier in pgd_core.launch).
    said = f"{stopped}, progress {progress[:5]}..., metrics at {sorted(points)[:5]}..."
    assert stopped.status == "stopped", said
    k = stopped.iteration
    assert 1 <= k < 60, said
    assert sorted(p.name for p in work.glob("iter_*.pth")) == [f"iter_{k}.pth"], said
    assert stopped.checkpoint == work / f"iter_{k}.pth", said
    assert {"loss", "loss_cls", "lr"} <= set(points[1]), said
    _wait_gone(work)

    progress.clear()
    done = run_spec(
        spec,
        work,
        data_root=dist_inputs["data_root"],
        callbacks=RunCallbacks(on_progress=lambda it, total: progress.append(it)),
    )
    assert done.status == "completed" and done.iteration == 60
    assert progress[0] > k and progress[-1] == 60  # resumed, not restarted
    assert "AP" in done.metrics and done.checkpoint is not None and done.checkpoint.is_file()
    _wait_gone(work)


def test_a_killed_rank_ends_the_group_and_is_named(dist_inputs: dict[str, Any], tmp_path: Path):
    spec = _spec(processes=2, schedule={"max_iters": 2000, "checkpoint_interval": 1000})
    work = tmp_path / "work"
    progress: list[int] = []
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            run_spec(
                spec,
                work,
                data_root=dist_inputs["data_root"],
                callbacks=RunCallbacks(on_progress=lambda it, total: progress.append(it)),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 240
    while not progress:
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.2)
    ranks = dict((rank, pid) for pid, rank in _ranks_of(work) if rank is not None)
    assert set(ranks) == {"0", "1"}
    os.kill(ranks["1"], signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, RankLost), error
    assert error.rank == 1 and "SIGKILL" in str(error)
    _wait_gone(work)


def test_killing_the_caller_leaves_no_rank_behind(dist_inputs: dict[str, Any], tmp_path: Path):
    """kill -9 of the process that launched the run (a worker's job process): the
    kernel signals torchrun, torchrun's death signals the ranks."""
    spec = _spec(processes=2, schedule={"max_iters": 2000, "checkpoint_interval": 1000})
    work = tmp_path / "work"
    script = (
        "import sys, json\n"
        "from pgd_core.runner import run_spec\n"
        "from pgd_core.spec import RunSpec\n"
        f"run_spec(RunSpec.model_validate(json.loads({spec.model_dump_json()!r})), {str(work)!r},"
        f" data_root={dist_inputs['data_root']!r})\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    events = work / ".dist" / "events.jsonl"
    deadline = time.monotonic() + 240
    while not (events.is_file() and events.stat().st_size):
        assert caller.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    assert len(_ranks_of(work)) == 3  # torchrun and 2 ranks
    caller.kill()
    caller.wait()
    _wait_gone(work)


# -- the service: a real Celery worker runs a 2-process job ----------------------------


def test_the_worker_runs_a_two_process_job_and_the_api_shows_the_ap_of_its_model(
    tmp_path: Path,
):
    """Through the API and a real Celery worker on the embedded default: the job
    reaches the worker's cpu-x2 queue, runs as 2 ranks, and the AP on its /results
    row is the AP of its own checkpoint evaluated again by one process."""
    from db_helpers import bearer
    from fastapi.testclient import TestClient

    from api.main import create_app

    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with stack("sqlite", broker, tmp_path) as s:
        app = create_app(s.settings)
        headers = bearer(app, "dana")
        spec = _spec(processes=2, schedule={"max_iters": 6, "checkpoint_interval": 3})
        s.start_worker()
        with TestClient(app) as http:
            response = http.post("/jobs", json=spec.model_dump(mode="json"), headers=headers)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            done = s.wait(job_id, lambda j: j.state in ("succeeded", "failed"), timeout=400)
            assert done.state == "succeeded", (done.reason, done.message, s.worker_log()[-3000:])
            assert done.progress == 1.0
            artifacts = s.artifacts(job_id)
            assert {"checkpoint", "log", "launcher.log"} <= set(artifacts)
            listed = http.get(f"/jobs/{job_id}/artifacts", headers=headers).json()
            assert "launcher.log" in repr(listed)
            page = http.get("/results", params={"job": job_id}, headers=headers).json()
            (row,) = page["items"]
        again = run_spec(
            spec.model_copy(update={"kind": "evaluate", "processes": 1}),
            tmp_path / "again",
            data_root=s.settings.data_root,
            checkpoint=artifacts["checkpoint"],
        )
        assert row["ap"] == pytest.approx(again.metrics["AP"], abs=1e-9)
        steps = [step for name, step, _ in s.points(job_id) if name == "loss"]
        assert steps == [1, 2, 3, 4, 5, 6]  # rank 0's reports, once each
        assert row["params"] is not None  # measured after the run, in the job's process
        _wait_gone(s.settings.work_root / "jobs" / job_id)


def test_a_rank_killed_under_the_worker_requeues_the_job_which_resumes(tmp_path: Path):
    """A rank dies (the OOM killer, kill -9): the worker sees it at once, puts the
    job back in its queue with the attempt raised, and the next attempt resumes
    from the last checkpoint and succeeds."""
    from db_helpers import bearer
    from fastapi.testclient import TestClient

    from api.main import create_app

    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with stack("sqlite", broker, tmp_path) as s:
        app = create_app(s.settings)
        headers = bearer(app, "erin")
        spec = _spec(processes=2, schedule={"max_iters": 40, "checkpoint_interval": 4})
        s.start_worker()
        with TestClient(app) as http:
            response = http.post("/jobs", json=spec.model_dump(mode="json"), headers=headers)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
        work = s.settings.work_root / "jobs" / job_id
        s.wait(job_id, lambda j: (work / "iter_4.pth").is_file(), timeout=300)
        ranks = {rank: pid for pid, rank in _ranks_of(work) if rank is not None}
        os.kill(ranks["1"], signal.SIGKILL)
        done = s.wait(job_id, lambda j: j.state in ("succeeded", "failed"), timeout=400)
        assert done.state == "succeeded", (done.reason, done.message, s.worker_log()[-3000:])
        assert (done.attempt, done.lost_count) == (1, 1)
        log = s.worker_log()
        assert f"job {job_id} attempt 0: rank 1 died: killed by SIGKILL" in log
        assert re.search(rf"job {job_id}: resuming from iteration (\d+)", log)
        resumed = int(re.search(rf"job {job_id}: resuming from iteration (\d+)", log).group(1))
        assert resumed >= 4 and resumed % 4 == 0
        steps = [step for name, step, _ in s.points(job_id) if name == "loss"]
        assert steps == list(range(1, 41))  # every step once: none lost, none twice
        _wait_gone(work)


def test_a_rank_that_raises_fails_the_job_with_its_reason(
    dist_inputs: dict[str, Any], tmp_path: Path
):
    """Every rank diverges under a learning rate of 10^6: the run fails as the
    single-process one does (reason ``diverged``), naming the rank."""
    spec = _spec(
        processes=2,
        schedule={"max_iters": 30, "lr": 1e6, "grad_clip": None, "checkpoint_interval": 100},
    )
    with pytest.raises(RankFailed) as raised:
        run_spec(spec, tmp_path / "work", data_root=dist_inputs["data_root"])
    error = raised.value
    assert error.reason == "diverged" and error.rank in (0, 1)
    assert str(error).startswith(f"rank {error.rank} failed: TrainingDiverged: training diverged")
    _wait_gone(tmp_path / "work")


def test_every_rank_evaluates_with_rank_0s_batchnorm_statistics(tmp_path: Path):
    """With a BatchNorm that trains, each rank's running statistics drift apart; an
    evaluation must use rank 0's (the checkpoint's) on every rank, or the AP mixes
    several models, none of them the one saved."""
    out = tmp_path / "out.json"
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(TESTS / "dist_buffers.py"),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["before"][0] != seen["before"][1]  # the ranks did differ
    assert seen["after"] == [seen["before"][0], seen["before"][0]]


def test_only_this_attempts_output_and_only_a_kill_say_a_rank_was_lost(tmp_path: Path):
    from pgd_core.launch import Channel, failure_of

    channel = Channel(tmp_path)
    channel.reset()
    log = tmp_path / "launcher.log"
    old = (
        "Failures:\n  <NO_OTHER_FAILURES>\nRoot Cause (first observed failure):\n"
        "[0]:\n  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 1)  (SIGKILL)\n"
    )
    log.write_text(old + "==== next attempt\ntorchrun: rendezvous failed\n")
    # The earlier attempt's kill is not this attempt's failure.
    failed = failure_of(channel, log, 1, start=len(old))
    assert isinstance(failed, RankFailed) and failed.rank is None
    assert "torchrun exited with code 1" in str(failed) and "rendezvous failed" in str(failed)
    # A rank aborted (NCCL's watchdog after a collective timed out): a failure.
    log.write_text(old.replace("-9 (pid: 1)  (SIGKILL)", "-6 (pid: 1)  (SIGABRT)"))
    aborted = failure_of(channel, log, 1)
    assert isinstance(aborted, RankFailed) and (aborted.rank, aborted.reason) == (1, "error")
    assert "SIGABRT" in str(aborted)


def test_a_reason_comes_from_pgds_own_errors_only():
    import urllib.error

    from pgd_core.errors import failure_reason

    assert failure_reason(RankFailed(1, "diverged", "x")) == "diverged"
    assert failure_reason(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")) == (
        "invalid_spec"
    )
    assert failure_reason(urllib.error.URLError("no route")) == "error"
    assert failure_reason(FileNotFoundError("x")) == "missing_file"
