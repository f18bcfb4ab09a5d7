"""Job queries and state changes; routes call these and map the outcomes to HTTP."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, case, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db.models import ApiToken, Job
from api.db.types import rowcount, utcnow
from api.services import enqueue
from api.settings import Settings
from pgd_core.datasets import MANIFEST_NAME, DatasetError, DatasetInfo, load_dataset_info
from pgd_core.spec import ModelSpec, RunSpec

log = logging.getLogger("pgd.jobs")

CANCELLABLE = ("queued", "running")
#: Kinds of job whose result is a checkpoint another job may start from.
CHECKPOINT_KINDS = ("train", "distill")


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


def dataset_info(data_root: Path, name: str) -> DatasetInfo | str:
    """The registered dataset ``name``, or why it cannot be used (no server paths in it).

    Cached per process while the manifest keeps its mtime and size: reading and
    validating it (and checking its split files) on every POST cost more than the
    rest of the validation. A rewritten manifest is read again; a split file
    removed behind an unchanged manifest is only noticed by the worker.
    """
    manifest = data_root / name / MANIFEST_NAME
    try:
        stat = manifest.stat()
    except (OSError, ValueError):
        stat = None
    if stat is None or not S_ISREG(stat.st_mode):
        return f"no dataset '{name}' is registered on this server"
    key, version = (data_root, name), (stat.st_mtime_ns, stat.st_size)
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


@dataclass
class RefChecker:
    """Checks a spec's dataset, ``teacher_ref`` and ``checkpoint_ref`` against this server.

    Answers are cached for the checker's lifetime, so one sweep reads each
    dataset manifest and each referenced job once.
    """

    db_session: Session
    data_root: Path
    weights_root: Path
    _datasets: dict[str, DatasetInfo | str] = field(default_factory=dict)
    _jobs: dict[str, Job | None] = field(default_factory=dict)

    def check(self, spec: RunSpec) -> str | None:
        """Raise SpecRejected naming every bad field; return the teacher job's id, if any."""
        errors = self._dataset_errors(spec)
        teacher_job_id = None
        if spec.teacher_ref is not None:
            teacher_job_id, message = self._model_ref(
                spec, spec.teacher_ref, spec.teacher, "teacher"
            )
            if message:
                errors.append({"field": "teacher_ref", "message": message})
        if spec.checkpoint_ref is not None:
            _, message = self._model_ref(spec, spec.checkpoint_ref, spec.student, "student")
            if message:
                errors.append({"field": "checkpoint_ref", "message": message})
        if errors:
            raise SpecRejected(errors)
        return teacher_job_id

    def _dataset(self, name: str) -> DatasetInfo | str:
        """The registered dataset, or why it cannot be used (no server paths in it)."""
        if name not in self._datasets:
            self._datasets[name] = dataset_info(self.data_root, name)
        return self._datasets[name]

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

    def _job(self, job_id: str) -> Job | None:
        if job_id not in self._jobs:
            self._jobs[job_id] = self.db_session.scalar(select(Job).where(Job.id == job_id))
        return self._jobs[job_id]

    def _model_ref(
        self, spec: RunSpec, ref: str, expected: ModelSpec | None, what: str
    ) -> tuple[str | None, str | None]:
        """(job id when ``ref`` is a job, the problem or None) for a job id or checkpoint name."""
        job = self._job(ref)
        if job is None:
            root = self.weights_root.resolve()
            path = (root / f"{ref}.pth").resolve()
            if path.is_relative_to(root) and path.is_file():
                return None, None
            return None, f"no job and no registered checkpoint is named '{ref}'"
        if job.state != "succeeded":
            return job.id, f"job {ref} is {job.state}, not succeeded"
        if job.kind not in CHECKPOINT_KINDS:
            return job.id, (
                f"job {ref} is an '{job.kind}' job; only train or distill jobs make a checkpoint"
            )
        if job.detector != spec.detector:
            return job.id, f"job {ref} trained a '{job.detector}' detector, not '{spec.detector}'"
        if expected is not None:
            mismatch = _model_mismatch(job.spec.get("student"), expected)
            if mismatch:
                return job.id, f"job {ref}'s student model differs from this {what}: {mismatch}"
        return job.id, None


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


def _visible(token: ApiToken) -> ColumnElement[bool]:
    return true() if token.is_admin else Job.owner == token.owner


def get(*, db_session: Session, job_id: str, token: ApiToken) -> Job | None:
    """The job, or None when it does not exist or belongs to someone else (non-admin)."""
    return db_session.scalar(select(Job).where(Job.id == job_id, _visible(token)))


def _by_key(db_session: Session, owner: str, key: str) -> Job | None:
    return db_session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _replay(existing: Job, spec_hash: str) -> Job:
    if existing.spec_hash != spec_hash:
        raise IdempotencyConflict("this Idempotency-Key was already used with another spec")
    return existing


def new_job(
    *,
    spec: RunSpec,
    owner: str,
    max_attempts: int,
    sweep_id: str | None = None,
    teacher_job_id: str | None = None,
    spec_hash: str | None = None,
) -> Job:
    """A queued job row for ``spec``, marked for sending (not added to a session: the
    caller owns the transaction and sends it with enqueue.send_job after the commit).
    ``spec_hash``: ``spec.spec_hash()`` when the caller has already computed it."""
    job = Job(
        kind=spec.kind,
        detector=spec.detector,
        dataset=spec.dataset.name,
        method=spec.method,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec_hash if spec_hash is not None else spec.spec_hash(),
        owner=owner,
        max_attempts=max_attempts,
        sweep_id=sweep_id,
        teacher_job_id=teacher_job_id,
    )
    enqueue.mark_for_send(job)
    return job


def create(
    *,
    db_session: Session,
    settings: Settings,
    spec: RunSpec,
    owner: str,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Store a queued job, then send it; returns (job, created).

    A replayed key returns the first job and sends nothing. The spec's dataset
    and references are checked first (SpecRejected, unless the key was used
    before); the row is committed before its message is sent, and a broker that
    is down leaves it to the re-sender.
    """
    spec_hash = spec.spec_hash()
    checker = RefChecker(db_session, settings.data_root, settings.weights_root)
    try:
        teacher_job_id = checker.check(spec)
    except SpecRejected:
        # A replay returns the first job even if its references have changed since.
        existing = _by_key(db_session, owner, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, spec_hash), False
    job = new_job(
        spec=spec,
        owner=owner,
        max_attempts=settings.max_attempts,
        teacher_job_id=teacher_job_id,
        spec_hash=spec_hash,
    )
    job.idempotency_key = idempotency_key
    db_session.add(job)
    try:
        db_session.commit()
    except IntegrityError:
        # The key was used before (or two requests with one key raced): the unique
        # (owner, key) index let the first win. Inserting first spares every new
        # job a lookup; a replay pays for the failed INSERT instead.
        db_session.rollback()
        existing = _by_key(db_session, owner, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, spec_hash), False
    if not enqueue.send_job(db_session, settings, job):
        db_session.refresh(job)  # send_job cleared enqueued_at (and so updated_at)
    return job, True


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
    token: ApiToken,
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


def cancel(*, db_session: Session, job: Job) -> bool:
    """Queued -> cancelled, running -> cancelling; False when the job has already finished.

    One guarded UPDATE (compare-and-set on the state), so a worker finishing the
    job at the same moment can never be overwritten.
    """
    now = utcnow()
    queued = Job.state == "queued"
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
    # A second cancel of a job still stopping is accepted again, not a conflict.
    return rowcount(result) == 1 or job.state == "cancelling"
