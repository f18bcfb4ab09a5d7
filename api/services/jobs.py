"""Job queries and state changes; routes call these and map the outcomes to HTTP."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from stat import S_ISREG
from typing import Any, cast

import anyio
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Table, bindparam, case, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from api.auth import Caller
from api.db.aio import AsyncDatabase
from api.runtime import Runtime
from pgd_core.data.manifest import MANIFEST_NAME, DatasetError, DatasetInfo, load_dataset_info
from pgd_core.spec import ModelSpec, RunSpec
from pgd_service import lifecycle
from pgd_service import queue as enqueue
from pgd_service.db.models import Job, next_job_seq
from pgd_service.db.types import rowcount, utcnow
from pgd_service.settings import Settings

log = logging.getLogger("pgd.jobs")

CANCELLABLE = ("waiting", "queued", "running")
#: States of a teacher job a new student may wait for (it is stored ``waiting``).
UNFINISHED = ("waiting", "queued", "running")
#: Kinds of job whose result is a checkpoint another job may start from.
CHECKPOINT_KINDS = ("train", "distill")


@dataclass(frozen=True)
class CheckedRefs:
    """What :meth:`RefChecker.check` found: the teacher's job id (when the teacher is
    a job) and whether that job has yet to finish (the new job then waits for it)."""

    teacher_job_id: str | None = None
    teacher_pending: bool = False


class IdempotencyConflict(Exception):
    """The idempotency key was already used with another spec."""


class InvalidCursor(ValueError):
    """The pagination cursor was not produced by this API."""


class SpecRejected(ValueError):
    """The spec is well formed but names something this server cannot use.

    ``errors`` are ``{field, message}`` pairs, as the 422 problem lists them.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


#: (data root, name) -> (the manifest's (mtime_ns, size), the answer of dataset_info)
_DATASET_CACHE: dict[tuple[Path, str], tuple[tuple[int, int], DatasetInfo | str]] = {}
_DATASET_CACHE_MAX = 256


def _manifest_version(data_root: Path, name: str) -> tuple[int, int] | None:
    """(mtime_ns, size) of the dataset's manifest, or None when there is no such file."""
    try:
        stat = (data_root / name / MANIFEST_NAME).stat()
    except (OSError, ValueError):
        return None
    return (stat.st_mtime_ns, stat.st_size) if S_ISREG(stat.st_mode) else None


def cached_dataset_info(data_root: Path, name: str) -> DatasetInfo | str | None:
    """What :func:`dataset_info` would answer, when that needs no reading (one stat):
    None when the manifest must be read first."""
    version = _manifest_version(data_root, name)
    if version is None:
        return f"no dataset '{name}' is registered on this server"
    cached = _DATASET_CACHE.get((data_root, name))
    return cached[1] if cached is not None and cached[0] == version else None


def dataset_info(data_root: Path, name: str) -> DatasetInfo | str:
    """The registered dataset ``name``, or why it cannot be used (no server paths in it).

    Cached per process while the manifest keeps its mtime and size: reading and
    validating it (and checking its split files) on every POST cost more than the
    rest of the validation. A rewritten manifest is read again; a split file
    removed behind an unchanged manifest is only noticed by the worker.
    """
    version = _manifest_version(data_root, name)
    if version is None:
        return f"no dataset '{name}' is registered on this server"
    key = (data_root, name)
    cached = _DATASET_CACHE.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    answer: DatasetInfo | str
    try:
        answer = load_dataset_info(data_root, name)
    except DatasetError as exc:
        log.warning("dataset %s is registered but unusable: %s", name, exc)
        answer = (
            f"dataset '{name}' is registered but unusable "
            "(its manifest or files are invalid; see the server log)"
        )
    if len(_DATASET_CACHE) >= _DATASET_CACHE_MAX:
        _DATASET_CACHE.clear()
    _DATASET_CACHE[key] = (version, answer)
    return answer


#: What RefChecker reads of a referenced job.
_JOB_REF = select(Job.id, Job.state, Job.kind, Job.detector, Job.spec).where(
    Job.id == bindparam("job_id")
)
JobRef = Mapping[str, Any]


@dataclass
class RefChecker:
    """Checks a spec's dataset, ``teacher_ref`` and ``checkpoint_ref`` against this server.

    ``load_job`` returns a referenced job's id, state, kind, detector and spec (or
    None): :meth:`for_session` reads them with a sync session; the async path reads
    them first (:func:`referenced_jobs`) and passes a dict's ``get``. Answers are
    cached for the checker's lifetime, so one sweep reads each dataset manifest and
    each referenced job once.
    """

    data_root: Path
    weights_root: Path
    load_job: Callable[[str], JobRef | None]
    #: Dataset answers (:func:`dataset_info`) by name, filled as they are read; the
    #: caller may pass those it already has.
    datasets: dict[str, DatasetInfo | str] = field(default_factory=dict)
    _jobs: dict[str, JobRef | None] = field(default_factory=dict)

    @classmethod
    def for_session(cls, db_session: Session, settings: Settings) -> RefChecker:
        def load(job_id: str) -> JobRef | None:
            row = db_session.execute(_JOB_REF, {"job_id": job_id}).mappings().first()
            return dict(row) if row is not None else None

        return cls(settings.data_root, settings.weights_root, load)

    def check(self, spec: RunSpec) -> CheckedRefs:
        """Raise SpecRejected naming every bad field; return the teacher job, if any.

        A teacher job that has not finished yet is accepted (the student waits for
        it); a checkpoint to evaluate must exist already."""
        errors = self._dataset_errors(spec)
        refs = CheckedRefs()
        if spec.teacher_ref is not None:
            teacher_job_id, message, pending = self._model_ref(
                spec, spec.teacher_ref, spec.teacher, "teacher", may_wait=True
            )
            refs = CheckedRefs(teacher_job_id, pending)
            if message:
                errors.append({"field": "teacher_ref", "message": message})
        if spec.checkpoint_ref is not None:
            _, message, _ = self._model_ref(spec, spec.checkpoint_ref, spec.student, "student")
            if message:
                errors.append({"field": "checkpoint_ref", "message": message})
        if errors:
            raise SpecRejected(errors)
        return refs

    def _dataset(self, name: str) -> DatasetInfo | str:
        """The registered dataset, or why it cannot be used (no server paths in it)."""
        if name not in self.datasets:
            self.datasets[name] = dataset_info(self.data_root, name)
        return self.datasets[name]

    def _dataset_errors(self, spec: RunSpec) -> list[dict[str, str]]:
        info = self._dataset(spec.dataset.name)
        if isinstance(info, str):
            return [{"field": "dataset.name", "message": info}]
        errors = []
        available = ", ".join(sorted(info.splits))
        for key in ("train_split", "val_split"):
            split = getattr(spec.dataset, key)
            if split not in info.splits:
                errors.append(
                    {
                        "field": f"dataset.{key}",
                        "message": f"dataset '{info.name}' has no split '{split}' "
                        f"(available: {available})",
                    }
                )
        return errors

    def _job(self, job_id: str) -> JobRef | None:
        if job_id not in self._jobs:
            self._jobs[job_id] = self.load_job(job_id)
        return self._jobs[job_id]

    def _model_ref(
        self,
        spec: RunSpec,
        ref: str,
        expected: ModelSpec | None,
        what: str,
        *,
        may_wait: bool = False,
    ) -> tuple[str | None, str | None, bool]:
        """(job id when ``ref`` is a job, the problem or None, whether that job has yet
        to finish) for a job id or checkpoint name."""
        job = self._job(ref)
        if job is None:
            root = self.weights_root.resolve()
            path = (root / f"{ref}.pth").resolve()
            if path.is_relative_to(root) and path.is_file():
                return None, None, False
            return None, f"no job and no registered checkpoint is named '{ref}'", False
        job_id, state, kind, detector = job["id"], job["state"], job["kind"], job["detector"]
        pending = may_wait and state in UNFINISHED
        if state != "succeeded" and not pending:
            expected_state = "succeeded or unfinished" if may_wait else "succeeded"
            return job_id, f"job {ref} is {state}, not {expected_state}", False
        if kind not in CHECKPOINT_KINDS:
            return (
                job_id,
                (f"job {ref} is an '{kind}' job; only train or distill jobs make a checkpoint"),
                False,
            )
        if detector != spec.detector:
            return (
                job_id,
                f"job {ref} trained a '{detector}' detector, not '{spec.detector}'",
                False,
            )
        if expected is not None:
            mismatch = _model_mismatch((job["spec"] or {}).get("student"), expected)
            if mismatch:
                return (
                    job_id,
                    f"job {ref}'s student model differs from this {what}: {mismatch}",
                    False,
                )
        return job_id, None, pending


def _model_mismatch(stored: Any, expected: ModelSpec) -> str | None:
    """The fields where a job's stored student model differs from ``expected``."""
    try:
        model = ModelSpec.model_validate(stored)
    except ValidationError:
        return "the job's model cannot be read"
    diffs = [
        f"{name} {getattr(model, name)!r} in the job, {getattr(expected, name)!r} here"
        for name in ModelSpec.model_fields
        if getattr(model, name) != getattr(expected, name)
    ]
    return ", ".join(diffs) or None


@dataclass(frozen=True)
class JobFilters:
    state: str | None = None
    kind: str | None = None
    detector: str | None = None
    dataset: str | None = None
    method: str | None = None


def _visible(token: Caller) -> ColumnElement[bool]:
    return true() if token.is_admin else Job.owner == token.owner


def get(*, db_session: Session, job_id: str, token: Caller) -> Job | None:
    """The job, or None when it does not exist or belongs to someone else (non-admin)."""
    return db_session.scalar(select(Job).where(Job.id == job_id, _visible(token)))


def job_values(
    *,
    spec: RunSpec,
    owner: str,
    max_attempts: int,
    spec_hash: str | None = None,
    sweep_id: str | None = None,
    study_id: str | None = None,
    teacher_job_id: str | None = None,
    waiting: bool = False,
    idempotency_key: str | None = None,
    job_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every column of a new job but ``seq`` (numbered by the database).

    A queued job is stored already marked as sent (a task id and ``enqueued_at``),
    because it is sent right after its commit; if that send fails, ``enqueued_at``
    is cleared, and if the process dies in between, the stale ``enqueued_at`` has
    the re-sender send it later. A ``waiting`` job (its teacher job has not
    finished) is sent when the teacher succeeds (pgd_service.lifecycle).
    ``spec_hash``: ``spec.spec_hash()`` if the caller has it."""
    now = now or utcnow()
    baseline = spec.baseline_spec()
    return {
        "id": job_id or str(uuid.uuid4()),
        "kind": spec.kind,
        "detector": spec.detector,
        "dataset": spec.dataset.name,
        "method": spec.method,
        "spec": spec.model_dump(mode="json"),
        "spec_hash": spec_hash if spec_hash is not None else spec.spec_hash(),
        "config_hash": spec.config_hash(),
        "seed": spec.seed,
        "baseline_hash": baseline.config_hash() if baseline is not None else None,
        "state": "waiting" if waiting else "queued",
        "reason": None,
        "message": None,
        "attempt": 0,
        "max_attempts": max_attempts,
        "progress": 0.0,
        "heartbeat_at": None,
        "owner": owner,
        "idempotency_key": idempotency_key,
        "cancel_requested": False,
        "cancel_requested_at": None,
        "lost_count": 0,
        "enqueued_at": None if waiting else now,
        "task_id": None if waiting else enqueue.new_task_id(),
        "worker": None,
        "sweep_id": sweep_id,
        "study_id": study_id,
        "teacher_job_id": teacher_job_id,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
    }


def new_job(
    *,
    spec: RunSpec,
    owner: str,
    max_attempts: int,
    sweep_id: str | None = None,
    study_id: str | None = None,
    teacher_job_id: str | None = None,
    waiting: bool = False,
    job_id: str | None = None,
) -> Job:
    """A job row for ``spec`` (:func:`job_values`) not added to a session: the caller
    owns the transaction and sends a queued one with enqueue.send_job after the commit."""
    return Job(
        **job_values(
            spec=spec,
            owner=owner,
            max_attempts=max_attempts,
            sweep_id=sweep_id,
            study_id=study_id,
            teacher_job_id=teacher_job_id,
            waiting=waiting,
            job_id=job_id,
        )
    )


_JOBS = cast(Table, Job.__table__)
_JOB_BY_ID = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
_JOB_BY_KEY = select(_JOBS).where(
    _JOBS.c.owner == bindparam("owner"), _JOBS.c.idempotency_key == bindparam("key")
)
_UNSENT = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.state == "queued",
        _JOBS.c.attempt == bindparam("sent_attempt"),
    )
    .values(enqueued_at=None, updated_at=bindparam("now"))
    .returning(*_JOBS.c)
)


@lru_cache(maxsize=4)
def insert_statement(dialect: str) -> Executable:
    """``INSERT INTO jobs ... ON CONFLICT DO NOTHING`` with one bound parameter per
    :func:`job_values` key (``v_<column>``): the row is those values (and ``seq``,
    which no response shows); its row count says whether it was stored.

    Nothing is looked up first: the unique (owner, idempotency_key) index turns a
    replayed key into no row, and only then is the key's job read. The job id is
    chosen here, so sending the same INSERT twice (a retry on a lost connection)
    also returns no row, and the id finds the job the first one stored."""
    columns = [c for c in _JOBS.c if c.name != "seq"]
    values: dict[str, Any] = {
        c.name: bindparam(f"v_{c.name}", type_=c.type, required=True) for c in columns
    }
    if dialect == "postgresql":
        statement: Any = postgresql.insert(_JOBS)
    elif dialect == "sqlite":
        values["seq"] = next_job_seq()
        statement = sqlite.insert(_JOBS)
    else:
        raise ValueError(f"unsupported database {dialect!r}: use PostgreSQL or SQLite")
    return statement.values(values).on_conflict_do_nothing()


def _replay(existing: Mapping[str, Any], spec_hash: str) -> Mapping[str, Any]:
    if existing["spec_hash"] != spec_hash:
        raise IdempotencyConflict("this Idempotency-Key was already used with another spec")
    return existing


async def referenced_jobs(db: AsyncDatabase, spec: RunSpec) -> dict[str, JobRef | None]:
    """The jobs ``teacher_ref`` and ``checkpoint_ref`` may name (for RefChecker)."""
    refs = {ref for ref in (spec.teacher_ref, spec.checkpoint_ref) if ref is not None}
    return {ref: await db.fetch_one(_JOB_REF, {"job_id": ref}) for ref in sorted(refs)}


async def create(
    *,
    runtime: Runtime,
    settings: Settings,
    spec: RunSpec,
    owner: str,
    idempotency_key: str | None = None,
) -> tuple[Mapping[str, Any], bool]:
    """Store a queued job, then send it; returns (the job's row, created).

    A replayed key returns the first job and sends nothing. The spec's dataset
    and references are checked first (SpecRejected, unless the key was used
    before); the row is committed (one autocommitted INSERT) before its message
    is sent, and a broker that is down leaves it to the re-sender.
    """
    db = runtime.db
    spec_hash = spec.spec_hash()
    name = spec.dataset.name
    info = cached_dataset_info(settings.data_root, name)
    if info is None:
        # Reading a manifest is file I/O: not on the event loop.
        info = await anyio.to_thread.run_sync(dataset_info, settings.data_root, name)
    jobs = await referenced_jobs(db, spec)
    checker = RefChecker(settings.data_root, settings.weights_root, jobs.get, datasets={name: info})
    try:
        refs = checker.check(spec)
    except SpecRejected:
        # A replay returns the first job even if its references have changed since.
        existing = (
            await db.fetch_one(_JOB_BY_KEY, {"owner": owner, "key": idempotency_key})
            if idempotency_key
            else None
        )
        if existing is None:
            raise
        return _replay(existing, spec_hash), False
    values = job_values(
        spec=spec,
        owner=owner,
        max_attempts=settings.max_attempts,
        spec_hash=spec_hash,
        teacher_job_id=refs.teacher_job_id,
        waiting=refs.teacher_pending,
        idempotency_key=idempotency_key,
    )
    statement = insert_statement(db.dialect_name)
    row: Mapping[str, Any] = values
    if await db.execute(statement, {f"v_{k}": v for k, v in values.items()}) == 0:
        # No row: the key was used before, or this is our own INSERT sent twice
        # after a lost connection (the id is ours).
        mine = await db.fetch_one(_JOB_BY_ID, {"job_id": values["id"]})
        if mine is None:
            existing = await db.fetch_one(_JOB_BY_KEY, {"owner": owner, "key": idempotency_key})
            if existing is None:
                raise RuntimeError(f"job {values['id']} was neither stored nor a replay")
            return _replay(existing, spec_hash), False
        row = mine
    if row["state"] == "waiting":
        return await _release_if_teacher_done(db, runtime, row), True
    return await _publish(db, runtime, row), True


async def _publish(
    db: AsyncDatabase, runtime: Runtime, row: Mapping[str, Any]
) -> Mapping[str, Any]:
    """Send a queued row stored already marked as sent; if the broker refuses, clear
    ``enqueued_at`` (the re-sender's mark) and return the row as it is now."""
    sent = await runtime.publisher.publish(
        job_id=row["id"],
        attempt=row["attempt"],
        queue=enqueue.queue_for(row["spec"]),
        task_id=row["task_id"],
    )
    if sent:
        return row
    unsent = await db.fetch_one(
        _UNSENT, {"job_id": row["id"], "sent_attempt": row["attempt"], "now": utcnow()}
    )
    return unsent or row


_TEACHER_STATE = select(_JOBS.c.state).where(_JOBS.c.id == bindparam("teacher_id"))
_RELEASE = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.state == "waiting")
    .values(
        state="queued",
        task_id=bindparam("task_id"),
        enqueued_at=bindparam("now"),
        updated_at=bindparam("now"),
        message=None,
    )
    .returning(*_JOBS.c)
)


async def _release_if_teacher_done(
    db: AsyncDatabase, runtime: Runtime, row: Mapping[str, Any]
) -> Mapping[str, Any]:
    """A student stored ``waiting`` whose teacher succeeded meanwhile (after the check,
    before the INSERT) is queued and sent now; any other outcome of the teacher is
    settled by the worker or the next maintenance pass (pgd_service.lifecycle)."""
    teacher = await db.fetch_one(_TEACHER_STATE, {"teacher_id": row["teacher_job_id"]})
    if teacher is None or teacher["state"] != "succeeded":
        return row
    params = {"job_id": row["id"], "task_id": enqueue.new_task_id(), "now": utcnow()}
    released = await db.fetch_one(_RELEASE, params)
    if released is None:
        return row
    return await _publish(db, runtime, released)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("s"):
            raise ValueError
        return int(text[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("cursor: not a cursor returned by this API") from None


def list_page(
    *,
    db_session: Session,
    token: Caller,
    filters: JobFilters,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """Jobs newest first, keyset-paginated on seq: later inserts never shift a walk."""
    query = select(Job).where(_visible(token))
    for name in ("state", "kind", "detector", "dataset", "method"):
        value = getattr(filters, name)
        if value is not None:
            query = query.where(getattr(Job, name) == value)
    if cursor is not None:
        query = query.where(Job.seq < decode_cursor(cursor))
    rows = list(db_session.scalars(query.order_by(Job.seq.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(rows[limit - 1].seq)


def cancel(*, db_session: Session, settings: Settings, job: Job) -> bool:
    """Waiting or queued -> cancelled, running -> cancelling; False when the job has
    already finished. Students waiting for a job cancelled at once fail with it.

    One guarded UPDATE (compare-and-set on the state), so a worker finishing the
    job at the same moment can never be overwritten.
    """
    now = utcnow()
    queued = Job.state.in_(("waiting", "queued"))
    result = db_session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state.in_(CANCELLABLE))
        .values(
            state=case((queued, "cancelled"), else_="cancelling"),
            cancel_requested=case((queued, Job.cancel_requested), else_=True),
            cancel_requested_at=case((queued, Job.cancel_requested_at), else_=now),
            finished_at=case((queued, now), else_=Job.finished_at),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    db_session.commit()
    db_session.refresh(job)
    if job.state == "cancelled":
        lifecycle.settle_students(db_session, settings, job.id)
    # A second cancel of a job still stopping is accepted again, not a conflict.
    return rowcount(result) == 1 or job.state == "cancelling"
