"""Run a multi-process spec: ``torchrun --standalone`` in a subprocess, and its ranks.

:func:`pgd_core.runner.run_spec` comes here for a spec of ``processes`` > 1.
The calling process (a worker's job process, ``pgd run``, a notebook) starts::

    python -m torch.distributed.run --standalone --nproc-per-node N -m pgd_core.launch ...

in its own session, with the standard library only (never multiprocessing: a
Celery child is daemonic and may not have children of its own). torchrun
starts the ranks, picks a free rendezvous port (two jobs on one machine never
collide) and stops every rank when one fails.

The caller and the ranks talk through files in ``<work_dir>/.dist``:

* ``events.jsonl``: rank 0 appends progress and metrics (averaged over the
  ranks); the caller hands them to its callbacks as they come;
* ``stop``: the caller creates it when its ``should_stop`` says so; the ranks
  agree to stop at the same iteration, rank 0 saves the checkpoint once;
* ``result.json``: rank 0's :class:`~pgd_core.runner.RunResult`;
* ``error-rank<r>.json``: a rank's exception and its reason word, written
  before it exits, so the caller can say which rank failed and why.

If the caller dies (``kill -9`` of a worker), torchrun gets SIGTERM from the
kernel (``PR_SET_PDEATHSIG``) and stops its ranks; a rank whose torchrun dies
gets SIGKILL the same way. Nothing is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pgd_core.errors import RankFailed, RankLost, failure_reason
from pgd_core.spec import RunSpec

CHANNEL_DIR = ".dist"
LAUNCHER_LOG = "launcher.log"
_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 30.0


def _die_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux;
    elsewhere nothing). Kept across ``exec``."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


#: Run as ``python -c _EXEC_WITH_PARENT <parent pid> <command...>``: arm SIGTERM on
#: the parent's death, leave if the parent is already gone, then become the command.
#: (A ``preexec_fn`` would do the same between fork and exec, which Python calls
#: unsafe in a process with threads, as a worker's job process is.)
_EXEC_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class Channel:
    """The files the caller and the ranks of one run share (see the module doc)."""

    def __init__(self, work_dir: Path) -> None:
        self.root = Path(work_dir) / CHANNEL_DIR
        self.events = self.root / "events.jsonl"
        self.stop_file = self.root / "stop"
        self.result_file = self.root / "result.json"
        self.inputs_file = self.root / "inputs.json"
        self._offset = 0
        self._last_progress = 0.0

    # -- the caller's side ------------------------------------------------------------
    def reset(self) -> None:
        """Forget a previous attempt's messages (a stale stop request above all)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path in self.root.iterdir():
            if path.is_file():
                path.unlink()
        self._offset = 0

    def request_stop(self) -> None:
        self.stop_file.touch()

    def deliver(self, on_progress: Any, on_metrics: Any) -> None:
        """Hand the complete event lines written since the last call to the callbacks."""
        if not self.events.is_file():
            return
        with self.events.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            event = json.loads(line)
            if "progress" in event and on_progress:
                on_progress(*event["progress"])
            elif "metrics" in event and on_metrics:
                on_metrics(event["metrics"][0], event["metrics"][1])

    def errors(self) -> list[dict[str, Any]]:
        """The ranks' error reports, the first one written first."""
        found = []
        for path in self.root.glob("error-rank*.json"):
            with contextlib.suppress(ValueError, OSError):
                found.append(json.loads(path.read_text()))
        return sorted(found, key=lambda e: e["time"])

    # -- the ranks' side --------------------------------------------------------------
    def _append(self, event: dict[str, Any]) -> None:
        with self.events.open("a") as fh:
            fh.write(json.dumps(event) + "\n")

    def progress(self, iteration: int, max_iters: int) -> None:
        now = time.monotonic()
        if iteration >= max_iters or now - self._last_progress >= 0.2:
            self._last_progress = now
            self._append({"progress": [iteration, max_iters]})

    def metrics(self, iteration: int, values: dict[str, float]) -> None:
        self._append({"metrics": [iteration, values]})

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def write_atomic(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def write_error(self, rank: int, exc: BaseException) -> None:
        self.write_atomic(
            self.root / f"error-rank{rank}.json",
            {
                "rank": rank,
                "time": time.time(),
                "reason": failure_reason(exc),
                "type": type(exc).__name__,
                "message": str(exc) or type(exc).__name__,
                "traceback": "".join(traceback.format_exception(exc)[-6:]),
            },
        )


def torchrun_command(processes: int, args: list[str]) -> list[str]:
    """The command that runs :func:`rank_main` on ``processes`` local ranks."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "--module",
        "pgd_core.launch",
        *args,
    ]


def _failed_ranks(log_text: str) -> list[tuple[int, int]]:
    """(rank, exitcode) of every failure in torchrun's last summary, the root cause
    (its first observed failure) first. torchrun lists only the ranks that had
    failed when it noticed; those it stopped afterwards are not failures."""
    summary = log_text.rsplit("Failures:", 1)
    if len(summary) < 2:
        return []
    others, _, root = summary[1].partition("Root Cause (first observed failure):")
    found: list[tuple[int, int]] = []
    for section in (root, others):
        ranks = re.findall(r"^\s*rank\s*:\s*(\d+)", section, re.M)
        codes = re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", section, re.M)
        found.extend((int(r), int(c)) for r, c in zip(ranks, codes, strict=False))
    return found


def _tail(path: Path, size: int = 3000, *, start: int = 0) -> str:
    """The last ``size`` bytes of ``path`` written at or after offset ``start``."""
    with contextlib.suppress(OSError):
        with path.open("rb") as fh:
            end = fh.seek(0, 2)
            fh.seek(max(start, end - size))
            return fh.read().decode("utf-8", errors="replace")
    return ""


#: Deaths that say nothing about the job: the OOM killer, kill -9, a shutdown. The
#: job goes back to its queue. Any other signal (SIGABRT from NCCL's watchdog after
#: a collective timed out, SIGSEGV) is a failure of the run itself.
_LOST_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def failure_of(channel: Channel, log_path: Path, returncode: int, *, start: int = 0) -> Exception:
    """What a failed torchrun means, from this attempt's output (``log_path`` from
    offset ``start``) and the ranks' error reports.

    A rank killed by a signal (it wrote no error report) is the cause, even when
    the others then reported errors: theirs are the broken connections to it. A
    SIGTERM of a rank other than torchrun's root cause is not: that is torchrun
    stopping the group after the root cause (a rank that raised and reported).
    Otherwise the first rank that raised, with its reason and message.
    """
    errors = channel.errors()
    reported = {e["rank"] for e in errors}
    failed = _failed_ranks(_tail(log_path, 40_000, start=start))
    for index, (rank, exitcode) in enumerate(failed):
        if index > 0 and exitcode == -signal.SIGTERM:
            continue
        if exitcode < 0 and rank not in reported:
            name = _signal_name(exitcode)
            if -exitcode in _LOST_SIGNALS:
                return RankLost(rank, exitcode, f"killed by {name}")
            hint = " (NCCL aborts a rank whose collective timed out)" if name == "SIGABRT" else ""
            return RankFailed(
                rank, "error", f"the rank died of {name}{hint}", _tail(log_path, 1500, start=start)
            )
    if errors:
        first = errors[0]
        return RankFailed(
            first["rank"],
            first["reason"],
            f"{first['type']}: {first['message']}",
            first.get("traceback", ""),
        )
    if failed:
        rank, exitcode = failed[0]
        return RankFailed(
            rank,
            "error",
            f"exited with code {exitcode} without a Python error",
            _tail(log_path, 1500, start=start),
        )
    return RankFailed(
        None,
        "error",
        f"torchrun exited with code {returncode}: {_tail(log_path, 1500, start=start)}",
    )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to torchrun (it stops its ranks), SIGKILL after a grace period."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def launch(
    spec: RunSpec,
    work_dir: str | os.PathLike,
    *,
    reports: list[str],
    data_root: str | os.PathLike,
    weights_root: str | os.PathLike | None = None,
    teacher_checkpoint: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: Any = None,
    timeout_s: float = 1800.0,
    poll_s: float = 0.2,
) -> Any:
    """Run ``spec`` as ``spec.processes`` ranks and wait for them (see the module doc).

    ``callbacks`` (:class:`pgd_core.runner.RunCallbacks`) are called in this process.
    An exception from ``callbacks.should_stop`` (the worker lost the job) stops the
    group at once and is raised again.
    """
    from pgd_core.runner import RunCallbacks, RunResult

    callbacks = callbacks or RunCallbacks()
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    channel = Channel(work)
    channel.reset()
    channel.write_atomic(
        channel.inputs_file,
        {
            "spec": spec.model_dump(mode="json"),
            "reports": reports,
            "data_root": str(Path(data_root).resolve()),
            "weights_root": str(Path(weights_root).resolve()) if weights_root else None,
            # Absolute: the ranks run in the work folder.
            "teacher_checkpoint": str(Path(teacher_checkpoint).resolve())
            if teacher_checkpoint
            else None,
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
            "resume": resume,
            "metrics_interval": callbacks.metrics_interval,
            "timeout_s": timeout_s,
        },
    )
    log_path = work / LAUNCHER_LOG
    env = dict(os.environ)
    # The ranks import pgd_core from wherever this process does.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), *filter(None, [env.get("PYTHONPATH")])]
    )
    with log_path.open("ab") as log:
        start = log.tell()  # this attempt's output begins here
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {spec.processes} ranks\n".encode())
        log.flush()
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _EXEC_WITH_PARENT,
                str(os.getpid()),
                *torchrun_command(spec.processes, ["--work-dir", str(work)]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=work,
            start_new_session=True,
        )
    stop_sent = False
    try:
        while process.poll() is None:
            channel.deliver(callbacks.on_progress, callbacks.on_metrics)
            if not stop_sent and callbacks.should_stop and callbacks.should_stop():
                channel.request_stop()
                stop_sent = True
            time.sleep(poll_s)
        channel.deliver(callbacks.on_progress, callbacks.on_metrics)
    except BaseException:
        _stop_group(process)
        raise
    if process.returncode != 0 or not channel.result_file.is_file():
        raise failure_of(channel, log_path, process.returncode, start=start)
    data = json.loads(channel.result_file.read_text())
    return RunResult(
        status=data["status"],
        iteration=data["iteration"],
        metrics=data["metrics"],
        checkpoint=Path(data["checkpoint"]) if data["checkpoint"] else None,
        work_dir=work,
        plots=[Path(p) for p in data["plots"]],
        data_reports=reports,
    )


def rank_main(argv: list[str] | None = None) -> int:
    """One rank (torchrun runs this module): join the group, run, report."""
    parser = argparse.ArgumentParser(prog="pgd_core.launch")
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args(argv)
    _die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:  # torchrun died before the line above
        return 1
    channel = Channel(Path(args.work_dir))
    rank = int(os.environ["RANK"])
    try:
        inputs = json.loads(channel.inputs_file.read_text())
        spec = RunSpec.model_validate(inputs["spec"])
        from pgd_core.distributed import init_process_group
        from pgd_core.runner import RunCallbacks, run_checked

        init_process_group(spec.device, timeout_s=inputs["timeout_s"])
        callbacks = RunCallbacks(
            on_progress=channel.progress if rank == 0 else None,
            on_metrics=channel.metrics if rank == 0 else None,
            should_stop=channel.stop_requested,
            metrics_interval=inputs["metrics_interval"],
        )
        result = run_checked(
            spec,
            args.work_dir,
            reports=inputs["reports"],
            data_root=inputs["data_root"],
            weights_root=inputs["weights_root"],
            teacher_checkpoint=inputs["teacher_checkpoint"],
            checkpoint=inputs["checkpoint"],
            resume=inputs["resume"],
            callbacks=callbacks,
        )
        if rank == 0:
            channel.write_atomic(
                channel.result_file,
                {
                    "status": result.status,
                    "iteration": result.iteration,
                    "metrics": result.metrics,
                    "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                    "plots": [str(p) for p in result.plots],
                },
            )
        import torch.distributed as dist

        if dist.is_initialized():
            # Leave together: a rank that tore its group down and exited while rank 0
            # was still writing the stop checkpoint died of SIGABRT ("terminate called
            # without an active exception") in 4 of 40 two-rank stops on gloo. Inside
            # the try: a barrier broken by a rank that failed is reported like any error.
            dist.barrier()
    except BaseException as exc:
        try:
            traceback.print_exc()
            sys.stderr.flush()
            channel.write_error(rank, exc)
        finally:
            # Leave at once, whatever the report did: the other ranks may be blocked
            # in a collective that this rank will never join; torchrun stops them
            # when it sees this exit.
            os._exit(1)
    # ``dist`` was imported in the try, which completed.
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(rank_main())
