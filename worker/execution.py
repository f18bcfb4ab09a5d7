"""Run one claimed job with pgd_core and record its outcome.

Every state change is one guarded UPDATE of pgd_service.lifecycle on (id,
attempt, state): a duplicate or stale message claims nothing, and a worker whose
job was taken over by the reaper (its heartbeat went stale) can no longer
finish it.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from pgd_core.errors import RankLost
from pgd_core.launch import LAUNCHER_LOG
from pgd_service import lifecycle
from pgd_service.db.models import METRICS, Artifact, EvalResult, Job
from pgd_service.db.session import make_engine, make_session_factory
from pgd_service.settings import Settings
from worker.reporting import LostOwnership, Reporter, forget_steps_after

log = logging.getLogger("pgd.worker")

_ITER = re.compile(r"iter_(\d+)\.pth$")
_DUMPED_CONFIG = re.compile(r"\d{8}_\d{6}\.py")


class JobInputError(Exception):
    """A job's inputs cannot be found (teacher or checkpoint reference)."""

    pgd_reason = "missing_file"


@dataclass
class Outcome:
    state: str
    reason: str | None = None
    message: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[tuple[str, str, Path]] = field(default_factory=list)  # name, kind, path
    #: pgd_core.cost.ModelCost.as_json() of the evaluated model, when it was measured.
    cost: dict[str, Any] | None = None


_factories: dict[str, sessionmaker[Session]] = {}


def session_factory_for(settings: Settings) -> sessionmaker[Session]:
    """One engine per database URL and process (a worker child runs one job)."""
    if settings.database_url not in _factories:
        _factories[settings.database_url] = make_session_factory(make_engine(settings.database_url))
    return _factories[settings.database_url]


def claim(
    session_factory: sessionmaker[Session], job_id: str, attempt: int, worker: str
) -> Job | None:
    """queued -> running for exactly this attempt; None when the message is stale."""
    with session_factory() as db_session:
        return lifecycle.claim(db_session, job_id, attempt, worker)


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.work_root / "jobs" / job_id


def _checkpoint_of_job(db_session: Session, job_id: str, what: str) -> Path | None:
    row = db_session.execute(
        select(Job.state, Artifact.path)
        .outerjoin(Artifact, (Artifact.job_id == Job.id) & (Artifact.name == "checkpoint"))
        .where(Job.id == job_id)
    ).first()
    if row is None:
        return None
    if row.state != "succeeded" or row.path is None:
        raise JobInputError(f"{what}: job {job_id} has no checkpoint (it is {row.state})")
    return row.path


def resolve_ref(
    db_session: Session, settings: Settings, ref: str, *, job_id: str | None, what: str
) -> Path:
    """A teacher / checkpoint reference -> a file: a finished job's checkpoint artifact,
    or ``<weights_root>/<ref>.pth``."""
    stored = _checkpoint_of_job(db_session, job_id or ref, what)
    if stored is not None:
        path = (settings.work_root / stored).resolve()
    else:
        path = (settings.weights_root / f"{ref}.pth").resolve()
    if not path.is_file():
        raise JobInputError(f"{what} '{ref}': checkpoint file {path} does not exist")
    return path


def resume_iteration(work_dir: Path) -> int | None:
    """The iteration of the checkpoint a resumed run starts from, if any."""
    from pgd_core.runner import last_checkpoint

    path = last_checkpoint(work_dir)
    match = _ITER.search(path.name) if path else None
    return int(match.group(1)) if match else None


def _relative(settings: Settings, path: Path) -> str | None:
    """``path`` relative to the work root; None when it lies outside it."""
    resolved, root = Path(path).resolve(), settings.work_root.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else None


def _log_file(work_dir: Path) -> Path | None:
    logs = sorted(work_dir.glob("*/*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def _config_file(work_dir: Path) -> Path | None:
    """The mmengine config the run's Runner dumped (``<timestamp>.py``): with the
    checkpoint, what mmdet's own tools need to rebuild and test the model."""
    configs = sorted(p for p in work_dir.glob("*.py") if _DUMPED_CONFIG.fullmatch(p.name))
    return configs[-1] if configs else None


def _artifacts(result: Any, work_dir: Path, kind: str) -> list[tuple[str, str, Path]]:
    found: list[tuple[str, str, Path]] = []
    # An evaluate job's checkpoint is its input (another job's, or a registered
    # file outside the work root), not something it made.
    if result.checkpoint is not None and kind != "evaluate":
        found.append(("checkpoint", "checkpoint", Path(result.checkpoint)))
    found.extend((f"plots/{p.name}", "plot", Path(p)) for p in result.plots)
    for name, path in (("log", _log_file(work_dir)), ("config", _config_file(work_dir))):
        if path is not None:
            found.append((name, name, path))
    launcher_log = work_dir / LAUNCHER_LOG  # torchrun's and every rank's output
    if launcher_log.is_file():
        found.append(("launcher.log", "launcher_log", launcher_log))
    return found


def _failure(exc: BaseException) -> Outcome:
    from pgd_core.errors import RankFailed, failure_reason

    reason = failure_reason(exc)
    message = str(exc) or type(exc).__name__
    if reason == "error":
        # An unexpected error: where it happened (the failing rank's own traceback
        # for a multi-process run) is what the user needs.
        tail = (
            exc.trace
            if isinstance(exc, RankFailed) and exc.trace
            else "".join(traceback.format_exception(exc)[-6:])
        )
        message = f"{type(exc).__name__}: {message}\n{tail}"
    return Outcome("failed", reason, message[:4000])


def _column(value: float | None) -> float | None:
    # COCO reports -1 for "no ground truth of this size": no value, not a score.
    return None if value is None or value < 0 else float(value)


def cost_columns(cost: dict[str, Any] | None) -> dict[str, Any]:
    if cost is None:
        return {}
    return {
        "params": cost["params"],
        "flops": cost["flops"],
        "latency_ms": cost["latency"]["median_ms"],
        "latency_p90_ms": cost["latency"]["p90_ms"],
        "peak_memory_mb": cost["peak_memory_mb"],
        "cost": cost,
    }


def measure(settings: Settings, spec: Any, checkpoint: Path, work_dir: Path) -> Outcome:
    """The cost of a finished job's model (``cost``, the ONNX artifact) and its warnings
    (``message``). Nothing here fails the job: a model that cannot be measured or
    exported is a warning on a job that succeeded."""
    from pgd_core.runner import measure_cost

    onnx_path = work_dir / "model.onnx" if settings.onnx_export else None
    try:
        cost = measure_cost(
            spec,
            checkpoint,
            data_root=settings.data_root,
            onnx_path=onnx_path,
            runs=settings.cost_runs,
            budget_s=settings.cost_budget_s,
        )
    except Exception as exc:  # noqa: BLE001 - the result stands without its cost
        log.exception("measuring the model of %s failed", work_dir.name)
        return Outcome("succeeded", message=f"cost not measured: {type(exc).__name__}: {exc}")
    log.info(
        "job %s: %d params, %.3g GFLOPs, %.1f ms median on %s (%.1f s to measure)",
        work_dir.name,
        cost.params,
        cost.flops / 1e9,
        cost.latency.median_ms,
        cost.latency.device,
        cost.seconds,
    )
    artifacts = []
    if cost.onnx is not None and cost.onnx.status == "ok" and cost.onnx.path:
        artifacts.append(("model.onnx", "onnx", Path(cost.onnx.path)))
    measured = cost.as_json()
    if measured["onnx"] is not None:  # the artifact's name, not a path on this worker
        measured["onnx"]["path"] = "model.onnx" if artifacts else None
    return Outcome(
        "succeeded",
        message="; ".join(cost.warnings)[:4000] or None,
        artifacts=artifacts,
        cost=measured,
    )


def finish(
    session_factory: sessionmaker[Session],
    settings: Settings,
    job: Job,
    attempt: int,
    outcome: Outcome,
) -> bool:
    """Record the outcome in one transaction, guarded on the attempt; False if taken over."""
    with session_factory() as db_session:
        if not lifecycle.finish(
            db_session,
            job.id,
            attempt,
            state=outcome.state,
            reason=outcome.reason,
            message=outcome.message,
        ):
            db_session.rollback()
            return False
        if outcome.state == "succeeded" and outcome.metrics:
            db_session.execute(delete(EvalResult).where(EvalResult.job_id == job.id))
            lowered = {k.lower(): v for k, v in outcome.metrics.items()}
            db_session.add(
                EvalResult(
                    job_id=job.id,
                    owner=job.owner,
                    dataset=job.dataset,
                    detector=job.detector,
                    method=job.method,
                    metrics=outcome.metrics,
                    **{column: _column(lowered.get(column)) for column in METRICS},
                    **cost_columns(outcome.cost),
                )
            )
        names = [name for name, _, _ in outcome.artifacts]
        if names:
            db_session.execute(
                delete(Artifact).where(Artifact.job_id == job.id, Artifact.name.in_(names))
            )
            for name, kind, path in outcome.artifacts:
                relative = _relative(settings, path)
                if relative is None:
                    # Recording it would need a path outside the work root; the
                    # outcome matters more than one artifact.
                    log.warning("job %s: artifact %s is outside the work root", job.id, path)
                    continue
                db_session.add(
                    Artifact(
                        job_id=job.id,
                        name=name,
                        kind=kind,
                        path=relative,
                        size=Path(path).stat().st_size,
                    )
                )
        db_session.commit()
    return True


def _inputs(
    session_factory: sessionmaker[Session], settings: Settings, job: Job, spec: Any
) -> dict[str, Any]:
    teacher = checkpoint = None
    with session_factory() as db_session:
        if spec.uses_teacher:
            if spec.teacher_ref is None:
                raise JobInputError("teacher_ref: a distill job needs its teacher's checkpoint")
            teacher = resolve_ref(
                db_session,
                settings,
                spec.teacher_ref,
                job_id=job.teacher_job_id,
                what="teacher_ref",
            )
        if spec.kind == "evaluate":
            checkpoint = resolve_ref(
                db_session, settings, spec.checkpoint_ref, job_id=None, what="checkpoint_ref"
            )
    return {"teacher_checkpoint": teacher, "checkpoint": checkpoint}


def execute(
    job_id: str,
    attempt: int,
    settings: Settings,
    *,
    worker: str,
    session_factory: sessionmaker[Session] | None = None,
) -> str:
    """Claim and run one attempt of a job; returns what happened (for the task log)."""
    session_factory = session_factory or session_factory_for(settings)
    job = claim(session_factory, job_id, attempt, worker)
    if job is None:
        log.info("job %s attempt %d: not queued for this attempt; message dropped", job_id, attempt)
        return "dropped"
    from pgd_core.spec import RunSpec

    try:
        spec = RunSpec.model_validate(job.spec)
    except ValueError as exc:  # a stored spec this version cannot read: fail, do not loop
        finish(session_factory, settings, job, attempt, Outcome("failed", "invalid_spec", str(exc)))
        return "failed"
    if spec.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA
    work_dir = job_dir(settings, job_id)
    # Points a lost attempt logged after its last checkpoint (all of them when
    # it saved none) describe weights that are gone: the run logs them again.
    resumed_from = resume_iteration(work_dir) or 0
    dropped = forget_steps_after(session_factory, job_id, resumed_from)
    if resumed_from or dropped:
        log.info(
            "job %s: resuming from iteration %d (%d later points dropped)",
            job_id,
            resumed_from,
            dropped,
        )
    reporter = Reporter(
        session_factory,
        job_id,
        attempt,
        heartbeat_s=settings.heartbeat_interval_s,
        poll_s=settings.cancel_poll_s,
    )
    reporter.start()
    outcome: Outcome
    try:
        from pgd_core.runner import run_spec

        result = run_spec(
            spec,
            work_dir,
            data_root=settings.data_root,
            weights_root=settings.weights_root,
            callbacks=reporter.callbacks(metrics_interval=settings.metrics_interval),
            dist_timeout_s=settings.dist_timeout_s,
            **_inputs(session_factory, settings, job, spec),
        )
    except LostOwnership:
        reporter.stop(flush=False)
        log.warning("job %s attempt %d was taken over; this worker stops", job_id, attempt)
        return "lost"
    except RankLost as exc:
        # Like a lost worker, but known at once: the next attempt resumes from the
        # last checkpoint (or the job fails once max_attempts attempts were lost).
        log.warning("job %s attempt %d: %s", job_id, attempt, exc)
        try:
            reporter.stop(flush=True)
        except Exception:  # noqa: BLE001 - the requeue matters more than the last points
            log.exception("job %s: final metric flush failed", job_id)
        return _requeue(session_factory, settings, job_id, attempt, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason on the row
        log.exception("job %s attempt %d failed", job_id, attempt)
        outcome = _failure(exc)
    else:
        state = "succeeded" if result.status == "completed" else "cancelled"
        outcome = Outcome(
            state,
            message=None if state == "succeeded" else f"stopped at iteration {result.iteration}",
            metrics=result.metrics if state == "succeeded" else {},
            artifacts=_artifacts(result, work_dir, spec.kind),
        )
        if (
            state == "succeeded"
            and outcome.metrics
            and settings.measure_cost
            and result.checkpoint is not None
            and not reporter.should_stop()  # a cancel asked for now is not kept waiting
        ):
            # While the reporter still heartbeats: on a CPU a paper-sized model's
            # measurement and export take a minute.
            measured = measure(settings, spec, Path(result.checkpoint), work_dir)
            outcome.cost, outcome.message = measured.cost, measured.message
            outcome.artifacts.extend(measured.artifacts)
    try:
        reporter.stop(flush=True)
    except Exception:  # noqa: BLE001 - the outcome matters more than the last points
        log.exception("job %s: final metric flush failed", job_id)
    if reporter.lost or not finish(session_factory, settings, job, attempt, outcome):
        log.warning("job %s attempt %d was taken over; outcome not recorded", job_id, attempt)
        return "lost"
    _settle_students(session_factory, settings, job_id)
    return outcome.state


def _requeue(
    session_factory: sessionmaker[Session],
    settings: Settings,
    job_id: str,
    attempt: int,
    how: str,
) -> str:
    with session_factory() as db_session:
        state = lifecycle.requeue_lost_rank(db_session, job_id, attempt, how)
        if state is None:
            return "lost"
        if state == "queued" and not lifecycle.resend(db_session, settings, job_id, attempt + 1):
            log.warning("job %s: re-queued; the re-sender will send it", job_id)
    if state != "queued":
        _settle_students(session_factory, settings, job_id)
    return state


def _settle_students(
    session_factory: sessionmaker[Session], settings: Settings, job_id: str
) -> None:
    """Queue (or fail) the students waiting for this job, now rather than at the next
    maintenance pass; a failure here is left to that pass."""
    try:
        with session_factory() as db_session:
            lifecycle.settle_students(db_session, settings, job_id)
    except Exception:  # noqa: BLE001 - the outcome is recorded; maintenance retries
        log.exception("job %s: could not settle its waiting students", job_id)
