"""Job queries and state changes; routes call these and map the outcomes to HTTP."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from sqlalchemy import ColumnElement, case, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db.models import ApiToken, Job
from api.db.types import utcnow
from pgd_core.spec import RunSpec

CANCELLABLE = ("queued", "running")


class IdempotencyConflict(Exception):
    """The idempotency key was already used with another spec."""


class InvalidCursor(ValueError):
    """The pagination cursor was not produced by this API."""


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


def new_job(*, spec: RunSpec, owner: str, max_attempts: int, sweep_id: str | None = None) -> Job:
    """A queued job row for ``spec`` (not added to a session: the caller owns the transaction)."""
    return Job(
        kind=spec.kind,
        detector=spec.detector,
        dataset=spec.dataset.name,
        method=spec.method,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.spec_hash(),
        owner=owner,
        max_attempts=max_attempts,
        sweep_id=sweep_id,
    )


def create(
    *,
    db_session: Session,
    spec: RunSpec,
    owner: str,
    max_attempts: int,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Store a queued job; returns (job, created). A replayed key returns the first job."""
    spec_hash = spec.spec_hash()
    if idempotency_key is not None:
        existing = _by_key(db_session, owner, idempotency_key)
        if existing is not None:
            return _replay(existing, spec_hash), False
    job = new_job(spec=spec, owner=owner, max_attempts=max_attempts)
    job.idempotency_key = idempotency_key
    db_session.add(job)
    try:
        db_session.commit()
    except IntegrityError:
        # Two requests with one key raced; the unique (owner, key) index let one win.
        db_session.rollback()
        existing = _by_key(db_session, owner, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, spec_hash), False
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
            finished_at=case((queued, now), else_=Job.finished_at),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    db_session.commit()
    db_session.refresh(job)
    # A second cancel of a job still stopping is accepted again, not a conflict.
    return result.rowcount == 1 or job.state == "cancelling"
