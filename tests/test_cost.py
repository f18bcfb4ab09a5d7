"""What a model costs to run (pgd_core.cost), each number against another path:
parameters and FLOPs by hand on a small network, FLOPs against mmengine's own
entry point on the tiny detectors, parameters against the checkpoint's tensors,
the ONNX file against onnxruntime run here, the percentiles against numpy; then
the worker storing it all with a job's result, and a failed export that leaves
the job succeeded with a warning."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from worker_helpers import Stack, stack, tiny_spec

from pgd_core import cost
from pgd_core.configs.model import detector_cfg
from pgd_core.presets import get_preset

BROKER_DOWN = "redis://127.0.0.1:1/0"
DETECTORS = ("fcos", "atss", "gfl", "autoassign", "ddod")


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))


def test_params_and_flops_of_a_small_network_by_hand():
    net = small_net()
    # 3x3 conv 3->8 with bias, 1x1 conv 8->4 with bias.
    assert cost.count_params(net) == (3 * 8 * 9 + 8) + (8 * 4 + 4) == 260
    # One multiply-add per weight per output position (bias and ReLU not counted,
    # as mmengine and fvcore count): 16 x 16 positions.
    assert cost.count_flops(net, torch.zeros(1, 3, 16, 16)) == 16 * 16 * (8 * 3 * 9 + 4 * 8)
    assert 16 * 16 * (8 * 3 * 9 + 4 * 8) == 63488


def test_a_shared_parameter_counts_once():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, shared)
    assert cost.count_params(net) == 20


@pytest.mark.parametrize(
    ("scale", "shape"),
    [((1333, 800), (800, 1344)), ((1400, 800), (800, 1408)), ((160, 160), (160, 160))],
)
def test_the_measured_input_is_the_padded_test_size(scale, shape):
    assert cost.network_input_shape(scale) == shape


def tiny_detector(name: str, num_classes: int = 3) -> nn.Module:
    from mmdet.registry import MODELS

    import pgd_core.compat  # noqa: F401

    spec = get_preset(f"tiny-{name}-student")
    model = MODELS.build(detector_cfg(name, spec.student, num_classes))
    model.init_weights()
    return model.eval()


def _conv_macs(module: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-adds of every convolution of one forward, from forward hooks."""
    total = 0

    def hook(conv: nn.Conv2d, _args, output: torch.Tensor) -> None:
        nonlocal total
        k = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels // conv.groups
        total += output.numel() * k

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(inputs)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("name", DETECTORS)
def test_flops_of_each_tiny_detector_are_mmengines_and_its_convolutions(name: str):
    from mmengine.analysis import FlopAnalyzer, get_model_complexity_info

    detector = tiny_detector(name)
    inputs = torch.randn(1, 3, 160, 160)
    ours = cost.count_flops(cost.TensorForward(detector), inputs)
    # mmdet's get_flops path: the detector itself, its tensor-mode forward.
    info = get_model_complexity_info(detector, inputs=inputs, show_table=False, show_arch=False)
    assert ours == info["flops"]
    # The convolutions, counted from hooks, are mmengine's "conv" share exactly.
    by_op = FlopAnalyzer(cost.TensorForward(detector), (inputs,)).by_operator()
    assert by_op["conv"] == _conv_macs(cost.TensorForward(detector), inputs)
    assert cost.count_params(detector) == info["params"]


def test_params_equal_the_checkpoints_weight_tensors(tmp_path: Path):
    detector = tiny_detector("gfl")
    path = tmp_path / "model.pth"
    # A distiller's checkpoint: the detector's weights plus adapters and a teacher's.
    state = {k: v.clone() for k, v in detector.state_dict().items()}
    state["adapters.0.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save({"state_dict": state, "meta": {}}, path)
    spec = get_preset("tiny-gfl-student")
    loaded = cost.load_detector(detector_cfg("gfl", spec.student, 3), path)
    # Every detector tensor of the file but the buffers: BatchNorm's statistics and
    # GFL's integral projection (0..reg_max), which are not learned.
    buffers = {name for name, _ in detector.named_buffers()}
    assert "bbox_head.integral.project" in buffers
    weights = sum(
        v.numel()
        for k, v in state.items()
        if k.startswith(cost.DETECTOR_PREFIXES) and k not in buffers
    )
    assert cost.count_params(loaded) == weights
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path: Path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": tiny_detector("fcos").state_dict()}, path)
    spec = get_preset("tiny-gfl-student")
    with pytest.raises(cost.CostError, match="lacks|another shape"):
        cost.load_detector(detector_cfg("gfl", spec.student, 3), path)


def test_onnx_export_of_a_tiny_detector_matches_pytorch(tmp_path: Path):
    import onnxruntime

    detector = tiny_detector("fcos")
    module = cost.TensorForward(detector).eval()
    inputs = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    report = cost.export_onnx(module, inputs, tmp_path / "model.onnx")
    assert report.status == "ok", report.error
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-3
    # Here on another input: the file computes the network, not a constant.
    other = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(4))
    session = onnxruntime.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": other.numpy()})
    with torch.no_grad():
        expected = cost.flatten(detector._forward(other))
    # FCOS: per level a class score, a box and a centerness map (5 levels).
    assert len(got) == len(expected) == 15
    for mine, theirs in zip(expected, got, strict=True):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(theirs, mine.numpy(), atol=1e-3, rtol=1e-3)
    assert not list(tmp_path.glob("*.part"))


class Unexportable(nn.Module):
    """A forward the TorchScript exporter cannot express in ONNX opset 17."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.linalg.svd(x[0, 0]).S,)


def test_a_failed_export_is_reported_not_raised_and_leaves_no_file(tmp_path: Path):
    report = cost.export_onnx(Unexportable(), torch.randn(1, 1, 4, 4), tmp_path / "model.onnx")
    assert report.status == "failed"
    assert report.error and "svd" in report.error.lower()
    assert list(tmp_path.iterdir()) == []


def test_latency_percentiles_device_and_threads():
    latency = cost.time_forward(small_net(), torch.zeros(1, 3, 32, 32), warmup=2, runs=9)
    assert latency.runs == 9 and latency.warmup == 2
    assert 0 < latency.median_ms <= latency.p90_ms
    assert latency.device.startswith("cpu (")
    assert latency.threads == torch.get_num_threads()


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=50))
def test_p90_is_numpys_default_percentile(values):
    assert cost._percentile(sorted(values), 0.9) == pytest.approx(
        float(np.percentile(values, 90)), rel=1e-12, abs=1e-12
    )


def test_the_latency_budget_cuts_runs_but_keeps_the_minimum():
    class Slow(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import time

            time.sleep(0.02)
            return x

    latency = cost.time_forward(Slow(), torch.zeros(1), warmup=5, runs=1000, budget_s=0.05)
    # One warm-up (20 ms is past a quarter of 50 ms), then min_runs: 3 x 20 ms is
    # already past 50 ms.
    assert (latency.warmup, latency.runs) == (1, 3)
    assert latency.median_ms >= 20


def test_cpu_peak_is_the_high_water_mark_of_allocations_and_frees():
    def event(start: int, end: int, change: int) -> SimpleNamespace:
        return SimpleNamespace(
            self_cpu_memory_usage=change, time_range=SimpleNamespace(start=start, end=end)
        )

    # Allocations count at their event's start, frees at its end: +100 at 1, +50 at
    # 2 (150), the parent freeing 100 when it ends at 3 (50), +80 at 4 (130).
    events = [event(1, 3, -100), event(1, 1, 100), event(4, 5, 80), event(2, 2, 50)]
    events.append(event(0, 9, 0))  # an op that holds nothing of its own
    assert cost.cpu_peak_bytes(events) == 150
    # Events sharing a timestamp stay in their recorded order: +100 then -100 then
    # +50 peaks at 100 (sorting a free before its allocation would say 50).
    tied = [event(1, 1, 100), event(0, 1, -100), event(1, 1, 50)]
    assert cost.cpu_peak_bytes(tied) == 100


def test_peak_memory_of_a_forward_is_at_least_its_largest_activation():
    net = small_net().eval()
    inputs = torch.zeros(1, 3, 64, 64)
    peak = cost.peak_memory_mb(net, inputs)
    # The first conv's output (8 x 64 x 64 float32) is alive at some point.
    assert peak * 2**20 >= 8 * 64 * 64 * 4
    assert peak < 64  # and nothing like the process's resident size


def test_measure_puts_it_all_together(tmp_path: Path):
    detector = tiny_detector("atss")
    measured = cost.measure(detector, (160, 160), onnx_path=tmp_path / "m.onnx", runs=5)
    assert measured.params == cost.count_params(detector)
    assert measured.flops == cost.count_flops(
        cost.TensorForward(detector), torch.zeros(1, 3, 160, 160)
    )
    assert measured.input_shape == (160, 160)
    assert measured.onnx is not None and measured.onnx.status == "ok"
    assert measured.latency.runs == 5 and measured.peak_memory_mb > 0
    data = measured.as_json()
    assert data["latency"]["median_ms"] == measured.latency.median_ms
    assert data["input_shape"] == [160, 160] and not data["warnings"]
    assert math.isfinite(data["seconds"])


# -- the worker: measured with the result, a failed export only a warning --------------


# Each test trains a tiny job: PostgreSQL's run is in the slow pass (make test-all).
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def s(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with stack(request.param, BROKER_DOWN, tmp_path) as result:
        yield result


def _run_tiny_job(s: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    from pgd_service.db.models import Job
    from pgd_service.lifecycle import job_values
    from worker.execution import execute

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # execute() sets it; undone after
    job = Job(**job_values(spec=tiny_spec(), owner="u", max_attempts=3))
    with s.sessions() as session:
        session.add(job)
        session.commit()
        job_id = job.id
    assert execute(job_id, 0, s.settings, worker="w", session_factory=s.sessions) == "succeeded"
    return job_id


def _stored(s: Stack, job_id: str) -> tuple:
    from pgd_service.db.models import Artifact, EvalResult

    with s.sessions() as session:
        result = session.scalars(sa.select(EvalResult).where(EvalResult.job_id == job_id)).one()
        artifacts = {
            a.name: a for a in session.scalars(sa.select(Artifact).where(Artifact.job_id == job_id))
        }
        session.expunge_all()
    return result, artifacts


def test_a_job_stores_its_models_cost_and_onnx(s: Stack, monkeypatch: pytest.MonkeyPatch):
    import onnxruntime

    job_id = _run_tiny_job(s, monkeypatch)
    result, artifacts = _stored(s, job_id)
    assert s.job(job_id).message is None
    # The checkpoint artifact, loaded here: its parameters and its FLOPs.
    checkpoint = s.settings.work_root / artifacts["checkpoint"].path
    spec = tiny_spec()
    detector = cost.load_detector(detector_cfg("fcos", spec.student, 3), checkpoint)
    assert result.params == cost.count_params(detector)
    assert result.flops == cost.count_flops(
        cost.TensorForward(detector), torch.zeros(1, 3, *cost.network_input_shape((160, 160)))
    )
    assert 0 < result.latency_ms <= result.latency_p90_ms
    assert result.peak_memory_mb > 0
    assert result.cost["latency"]["device"].startswith("cpu")
    assert result.cost["input_shape"] == [160, 160]
    # The ONNX artifact computes the checkpoint's network.
    onnx = artifacts["model.onnx"]
    assert onnx.kind == "onnx"
    assert result.cost["onnx"]["status"] == "ok" and result.cost["onnx"]["max_abs_diff"] < 1e-3
    inputs = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(
        str(s.settings.work_root / onnx.path), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {"image": inputs.numpy()})
    with torch.no_grad():
        expected = cost.flatten(detector._forward(inputs))
    for mine, theirs in zip(expected, got, strict=True):
        np.testing.assert_allclose(theirs, mine.numpy(), atol=1e-3, rtol=1e-3)


def test_a_failed_export_leaves_the_job_succeeded_with_a_warning(
    s: Stack, monkeypatch: pytest.MonkeyPatch
):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    job_id = _run_tiny_job(s, monkeypatch)
    job = s.job(job_id)
    assert job.state == "succeeded"
    assert job.message.startswith("ONNX export failed: RuntimeError: Exporting the operator")
    result, artifacts = _stored(s, job_id)
    assert "model.onnx" not in artifacts and "checkpoint" in artifacts
    assert result.cost["onnx"]["status"] == "failed"
    assert result.params > 0 and result.flops > 0 and result.latency_ms > 0
    assert result.ap is not None
    assert not list((s.settings.work_root / job_id).glob("model.onnx*"))


def test_a_model_that_cannot_be_measured_keeps_its_result(
    s: Stack, monkeypatch: pytest.MonkeyPatch
):
    import pgd_core.runner

    def broken(*_args, **_kwargs):
        raise cost.CostError("checkpoint x lacks 3 of the detector's weights (first: a.b)")

    monkeypatch.setattr(pgd_core.runner, "measure_cost", broken)
    job_id = _run_tiny_job(s, monkeypatch)
    job = s.job(job_id)
    assert job.state == "succeeded"
    assert job.message == (
        "cost not measured: CostError: checkpoint x lacks 3 of the detector's weights (first: a.b)"
    )
    result, _ = _stored(s, job_id)
    assert result.ap is not None and result.params is None and result.cost is None


def test_measuring_can_be_switched_off(s: Stack, monkeypatch: pytest.MonkeyPatch):
    s.settings = s.settings.model_copy(update={"measure_cost": False})
    job_id = _run_tiny_job(s, monkeypatch)
    result, artifacts = _stored(s, job_id)
    assert result.params is None and "model.onnx" not in artifacts


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 20)),
        min_size=1,
        max_size=30,
    ),
    st.booleans(),
)
def test_pareto_front_is_every_undominated_point(points, lower):
    from api.services.results import pareto_front

    floats = [(float(c), float(m)) for c, m in points]
    front = pareto_front(floats, lower_is_better=lower)

    def better_or_equal(a: float, b: float) -> bool:
        return a <= b if lower else a >= b

    def dominated(i: int) -> bool:
        ci, mi = floats[i]
        for j, (cj, mj) in enumerate(floats):
            if j == i:
                continue
            if cj <= ci and better_or_equal(mj, mi) and (cj < ci or mj != mi):
                return True
            if (cj, mj) == (ci, mi) and j < i:  # of equal points the first is kept
                return True
        return False

    assert sorted(front) == [i for i in range(len(floats)) if not dominated(i)]
    costs = [floats[i][0] for i in front]
    assert costs == sorted(costs)
