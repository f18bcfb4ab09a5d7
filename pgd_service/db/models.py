"""SQLAlchemy 2 models: the one schema of the service (created only through Alembic)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column
from sqlalchemy.sql.selectable import ScalarSelect

from pgd_service.db.types import BigIntPK, UTCDateTime, utcnow

#: The metric columns of ``eval_results`` (COCO AP family, CrowdHuman MR and JI).
METRICS: tuple[str, ...] = ("ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji")
#: Cost columns of a result (lower is cheaper), sortable like the metrics.
COSTS: tuple[str, ...] = ("params", "flops", "latency_ms", "peak_memory_mb")

#: The states of a job (the CHECK constraint); what moves a job between them is
#: pgd_service.lifecycle.
JOB_STATES: tuple[str, ...] = (
    # A student whose teacher job has not finished: queued when it succeeds,
    # failed (reason teacher_failed) when it does not.
    "waiting",
    "queued",
    "running",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)
JOB_KINDS: tuple[str, ...] = ("train", "distill", "evaluate")

# Deterministic constraint names: Alembic can only drop or alter (and SQLite's
# batch mode can only rebuild) constraints that have names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Sweep(Base):
    """A grid over hyper-parameters, seeds or methods; its jobs point back to it."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_new_id)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Study(Base):
    """A teacher and every (method, seed) student that waits for it; its jobs point back."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_new_id)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str | None] = mapped_column(String(128))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    teacher_job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    """One run (train, distill or evaluate); this row, not the broker, is the truth."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("state", JOB_STATES), name="state"),
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        CheckConstraint("attempt >= 0", name="attempt"),
        CheckConstraint("lost_count >= 0", name="lost_count"),
        UniqueConstraint("owner", "idempotency_key"),
        Index("ix_jobs_owner_seq", "owner", "seq"),
        Index("ix_jobs_state", "state"),
        # The reaper's query: running jobs whose heartbeat is stale.
        Index("ix_jobs_state_heartbeat_at", "state", "heartbeat_at"),
        Index("ix_jobs_sweep_id", "sweep_id"),
        Index("ix_jobs_study_id", "study_id"),
        # Seed groups and a distill job's same-seed no-KD control.
        Index("ix_jobs_config_hash_seed", "config_hash", "seed"),
        Index("ix_jobs_teacher_job_id", "teacher_job_id"),
        # The leaderboard's baseline lookup: the owner's newest succeeded train job
        # of a pair.
        Index(
            "ix_jobs_baseline_lookup",
            "detector",
            "dataset",
            "owner",
            "kind",
            "state",
            "finished_at",
            "created_at",
            "seq",
        ),
    )
    # Fetch server-generated values (seq) with RETURNING at insert time.
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=_new_id)
    # Insertion order for cursor pagination: UUIDs do not sort by time.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    detector: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # When the cancel was asked for: a task still running long after is revoked.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Worker losses (kill -9, OOM kill, reboot) of the current run; the reaper
    # fails the job with reason worker_lost once this reaches max_attempts.
    lost_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the broker last accepted this job's message (None: never, e.g. the
    # broker was down); the re-sender looks for queued jobs without a recent one.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    task_id: Mapped[str | None] = mapped_column(String(64))
    # "hostname:pid" of the worker process that claimed the current attempt.
    worker: Mapped[str | None] = mapped_column(String(255))
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"))
    teacher_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    study_id: Mapped[str | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"))
    # RunSpec.config_hash(): the spec without its seed; runs that differ only by
    # seed share it. baseline_hash: a distill job's no-KD control's config hash.
    config_hash: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(Integer)
    baseline_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def next_job_seq() -> ScalarSelect[int]:
    """``seq`` of a new job where the database has no identity columns (SQLite: only
    the rowid, which Job's UUID key is not). Its writers are serialised, so max + 1
    inside the INSERT is safe there; PostgreSQL uses the identity column instead."""
    return select(func.coalesce(func.max(Job.seq), 0) + 1).scalar_subquery()


@event.listens_for(Job, "before_insert")
def _number_job_without_identity(mapper: Mapper[Job], connection: Connection, job: Job) -> None:
    if job.seq is None and not connection.dialect.supports_identity_columns:
        job.seq = next_job_seq()


class MetricPoint(Base):
    """One scalar (a loss, the lr, an eval metric) at one step of a job."""

    __tablename__ = "metric_points"
    # A resumed job re-logging a step must not duplicate it.
    __table_args__ = (UniqueConstraint("job_id", "step", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)


class EvalResult(Base):
    """The final COCO-style (and CrowdHuman) metrics of a job, one row per evaluated model."""

    __tablename__ = "eval_results"
    # The leaderboard reads the first rows of an index range in either direction:
    # (metric, id) per sort key, and the default -ap under its usual filters.
    __table_args__ = (
        Index("ix_eval_results_leaderboard", "dataset", "detector", "method", "ap", "id"),
        Index("ix_eval_results_dataset_detector_ap", "dataset", "detector", "ap", "id"),
        *(
            Index(f"ix_eval_results_{key}_id", key, "id")
            for key in ("ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji", "created_at")
        ),
        *(Index(f"ix_eval_results_{key}_id", key, "id") for key in COSTS),
        # An owner's leaderboard (a token that sees its owner's results only).
        Index("ix_eval_results_owner_ap_id", "owner", "ap", "id"),
        Index("ix_eval_results_owner_created_at_id", "owner", "created_at", "id"),
        Index(
            "ix_eval_results_owner_dataset_detector_ap", "owner", "dataset", "detector", "ap", "id"
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    # The job's owner (which never changes), copied so that an owner's leaderboard
    # is an index range; filled at insert from the job when not given (below).
    # Nullable only because SQLite cannot add NOT NULL without rebuilding the table.
    owner: Mapped[str | None] = mapped_column(String(128))
    dataset: Mapped[str] = mapped_column(String(128))
    detector: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Copies of the headline metrics as columns so the leaderboard sorts on an index.
    ap: Mapped[float | None] = mapped_column(Float)
    ap50: Mapped[float | None] = mapped_column(Float)
    ap75: Mapped[float | None] = mapped_column(Float)
    aps: Mapped[float | None] = mapped_column(Float)
    apm: Mapped[float | None] = mapped_column(Float)
    apl: Mapped[float | None] = mapped_column(Float)
    mr: Mapped[float | None] = mapped_column(Float)
    ji: Mapped[float | None] = mapped_column(Float)
    # What the evaluated model costs to run (pgd_core.cost), as sortable columns;
    # ``cost`` holds the whole measurement (device, threads, input size, ONNX check).
    params: Mapped[int | None] = mapped_column(BigInteger)
    flops: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    latency_p90_ms: Mapped[float | None] = mapped_column(Float)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


@event.listens_for(EvalResult, "before_insert")
def _owner_of_the_job(
    mapper: Mapper[EvalResult], connection: Connection, result: EvalResult
) -> None:
    if result.owner is None:
        # Evaluated by the INSERT itself: no extra round trip.
        result.owner = select(Job.owner).where(Job.id == result.job_id).scalar_subquery()


class Artifact(Base):
    """A file a job produced (checkpoint, plot, log), stored under the work root."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LeaderboardVersion(Base):
    """One row whose ``version`` every change to what the leaderboard shows raises, in
    the transaction of that change (triggers on eval_results and jobs, migration
    0004). The API keys its cached pages and their ETags by it."""

    __tablename__ = "leaderboard_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


class ApiToken(Base):
    """A bearer token; only its hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    #: What it is for ("laptop", "ci"); optional.
    name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Refused from then on; None: never expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
