"""Job queries and state changes; routes call these and map the outcomes to HTTP."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import ColumnElement, bindparam, func, select, true
from sqlalchemy.orm import Session

from api.auth import Caller
from pgd_core.data.manifest import MANIFEST_NAME, DatasetError, DatasetInfo, load_dataset_info
from pgd_core.spec import ModelSpec, RunSpec
from pgd_service import lifecycle
from pgd_service.db.models import JOB_KINDS, JOB_STATES, Job
from pgd_service.settings import Settings

log = logging.getLogger("pgd.jobs")

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


class TooManyJobs(Exception):
    """The owner already has as many unfinished jobs as the server allows."""


#: States of a job that still needs a worker.
ACTIVE_STATES = ("waiting", "queued", "running", "cancelling")


def check_quota(db_session: Session, settings: Settings, owner: str, adding: int) -> None:
    """Raise TooManyJobs when ``adding`` more jobs would take ``owner`` past
    ``limit_active_jobs`` unfinished ones."""
    if settings.limit_active_jobs is None:
        return
    active = db_session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.state.in_(ACTIVE_STATES))
    )
    limit = settings.limit_active_jobs
    if limit is not None and (active or 0) + adding > limit:
        raise TooManyJobs(
            f"{owner} has {active} unfinished jobs; {adding} more would pass this server's "
            f"limit of {limit} (PGD_LIMIT_ACTIVE_JOBS)"
        )


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
_OWNED_JOB_REF = _JOB_REF.where(Job.owner == bindparam("owner"))
JobRef = Mapping[str, Any]


@dataclass
class RefChecker:
    """Checks a spec's dataset, ``teacher_ref`` and ``checkpoint_ref`` against this server.

    ``load_job`` returns a referenced job's id, state, kind, detector and spec (or
    None); :meth:`for_session` reads them with the request's session. Answers are
    cached for the checker's lifetime, so one sweep reads each dataset manifest and
    each referenced job once.
    """

    data_root: Path
    weights_root: Path
    load_job: Callable[[str], JobRef | None]
    #: The server's limits on what one job may ask for (None: none).
    settings: Settings | None = None
    #: Dataset answers (:func:`dataset_info`) by name, filled as they are read; the
    #: caller may pass those it already has.
    datasets: dict[str, DatasetInfo | str] = field(default_factory=dict)
    _jobs: dict[str, JobRef | None] = field(default_factory=dict)

    @classmethod
    def for_session(
        cls, db_session: Session, settings: Settings, *, owner: str | None
    ) -> RefChecker:
        """Jobs are read for ``owner`` (None: an admin, who sees every job): a job of
        another owner is no job at all here, as ``GET /jobs/{id}`` says 404 for it,
        so a reference neither reaches it nor learns its state or its model."""

        def load(job_id: str) -> JobRef | None:
            if owner is None:
                row = db_session.execute(_JOB_REF, {"job_id": job_id}).mappings().first()
            else:
                params = {"job_id": job_id, "owner": owner}
                row = db_session.execute(_OWNED_JOB_REF, params).mappings().first()
            return dict(row) if row is not None else None

        return cls(settings.data_root, settings.weights_root, load, settings)

    def check(self, spec: RunSpec) -> CheckedRefs:
        """Raise SpecRejected naming every bad field; return the teacher job, if any.

        A teacher job that has not finished yet is accepted (the student waits for
        it); a checkpoint to evaluate must exist already."""
        errors = self._dataset_errors(spec) + self._limit_errors(spec)
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
        if spec.kind != "evaluate" and spec.student.pretrained is not None:
            message = self._weights(spec.student.pretrained)
            if message:
                errors.append({"field": "student.pretrained", "message": message})
        if errors:
            raise SpecRejected(errors)
        return refs

    def _limit_errors(self, spec: RunSpec) -> list[dict[str, str]]:
        """What ``spec`` asks for beyond the server's limits (PGD_LIMIT_*)."""
        if self.settings is None:
            return []
        limits = self.settings
        errors = []
        checks = [
            ("schedule.max_iters", spec.schedule.max_iters, limits.limit_max_iters),
            ("schedule.batch_size", spec.schedule.batch_size, limits.limit_batch_size),
            ("dataset.img_scale", max(spec.dataset.img_scale), limits.limit_image_side),
            (
                "dataset.multiscale_short",
                max(spec.dataset.multiscale_short or (0,)),
                limits.limit_image_side,
            ),
        ]
        for name, value, limit in checks:
            if value > limit:
                errors.append(
                    {"field": name, "message": f"{value} is over this server's limit of {limit}"}
                )
        return errors

    def _registered(self, name: str) -> bool:
        """``<weights_root>/<name>.pth`` is a file inside the weights root."""
        root = self.weights_root.resolve()
        path = (root / f"{name}.pth").resolve()
        return path.is_relative_to(root) and path.is_file()

    def _weights(self, name: str) -> str | None:
        """Why backbone weights ``name`` cannot be used, or None."""
        if self._registered(name):
            return None
        return f"no backbone weights named '{name}' are registered on this server"

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
            if self._registered(ref):
                return None, None, False
            return None, f"no job and no registered checkpoint is named '{ref}'", False
        job_id, state, kind, detector = job["id"], job["state"], job["kind"], job["detector"]
        pending = may_wait and state in lifecycle.TEACHER_PENDING
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


StateFilter = Literal[JOB_STATES]  # type: ignore[valid-type]
KindFilter = Literal[JOB_KINDS]  # type: ignore[valid-type]


@dataclass(frozen=True)
class JobFilters:
    """``GET /jobs`` filters; each one given must match exactly (``sweep`` and ``study``
    are ids)."""

    # Literal: an unknown state or kind is a 422 naming the filter, not an empty page.
    state: StateFilter | None = None
    kind: KindFilter | None = None
    detector: str | None = None
    dataset: str | None = None
    method: str | None = None
    sweep: str | None = None
    study: str | None = None


#: JobFilters field -> the Job column it compares.
_FILTER_COLUMNS = {
    "state": Job.state,
    "kind": Job.kind,
    "detector": Job.detector,
    "dataset": Job.dataset,
    "method": Job.method,
    "sweep": Job.sweep_id,
    "study": Job.study_id,
}


def _visible(token: Caller) -> ColumnElement[bool]:
    return true() if token.is_admin else Job.owner == token.owner


def get(*, db_session: Session, job_id: str, token: Caller) -> Job | None:
    """The job, or None when it does not exist or belongs to someone else (non-admin)."""
    return db_session.scalar(select(Job).where(Job.id == job_id, _visible(token)))


#: What a replayed key looks up (the job its first request stored).
_JOB_BY_KEY = select(Job).where(
    Job.owner == bindparam("owner"), Job.idempotency_key == bindparam("key")
)


def _replay(db_session: Session, owner: str, key: str | None, spec_hash: str) -> Job | None:
    """The job stored under ``(owner, key)``, or None; IdempotencyConflict when that
    job has another spec."""
    if not key:
        return None
    existing = db_session.scalar(_JOB_BY_KEY, {"owner": owner, "key": key})
    if existing is not None and existing.spec_hash != spec_hash:
        raise IdempotencyConflict("this Idempotency-Key was already used with another spec")
    return existing


def create(
    *,
    db_session: Session,
    settings: Settings,
    spec: RunSpec,
    owner: str,
    idempotency_key: str | None = None,
    sees_all: bool = False,
) -> tuple[Mapping[str, Any] | Job, bool]:
    """Store a job, then send it; returns (the job, created).

    The job is queued, or ``waiting`` while its teacher job has not finished. A
    replayed key returns the first job and sends nothing. The spec's dataset and
    references are checked first (SpecRejected, unless the key was used before);
    the row is committed before its message is sent, and a broker that is down
    leaves it to the re-sender. A new job comes back as its column values (no
    query reads it back); a replay as the stored Job."""
    spec_hash = spec.spec_hash()
    try:
        refs = RefChecker.for_session(
            db_session, settings, owner=None if sees_all else owner
        ).check(spec)
    except SpecRejected:
        # A replay returns the first job even if its references have changed since.
        existing = _replay(db_session, owner, idempotency_key, spec_hash)
        if existing is None:
            raise
        return existing, False
    try:
        check_quota(db_session, settings, owner, 1)
    except TooManyJobs:
        existing = _replay(db_session, owner, idempotency_key, spec_hash)
        if existing is None:
            raise
        return existing, False
    values = lifecycle.job_values(
        spec=spec,
        owner=owner,
        max_attempts=settings.max_attempts,
        spec_hash=spec_hash,
        teacher_job_id=refs.teacher_job_id,
        waiting=refs.teacher_pending,
        idempotency_key=idempotency_key,
    )
    (stored,) = lifecycle.insert_jobs(db_session, [values])
    db_session.commit()
    if not stored:
        existing = _replay(db_session, owner, idempotency_key, spec_hash)
        if existing is None:
            raise RuntimeError(f"job {values['id']} was neither stored nor a replay")
        return existing, False
    if values["state"] == "waiting":
        # The teacher may have finished after the check, before the INSERT.
        settled = lifecycle.settle_students(db_session, settings, values["teacher_job_id"])
        if settled.released or settled.failed:
            return _fresh(db_session, values["id"]), True
        return values, True
    if not lifecycle.send(db_session, settings, values):
        return _fresh(db_session, values["id"]), True  # stored unsent: as it is now
    return values, True


def _fresh(db_session: Session, job_id: str) -> Job:
    job = db_session.get(Job, job_id, populate_existing=True)
    assert job is not None  # committed above; jobs are never deleted by the API
    return job


def store_and_send(
    db_session: Session, settings: Settings, rows: list[dict[str, Any]]
) -> list[Job]:
    """Store new jobs (lifecycle.job_values) in the caller's transaction and commit it,
    then send the queued ones and settle the waiting ones whose teacher has finished
    meanwhile; returns the jobs as stored, in order."""
    lifecycle.insert_jobs(db_session, rows)
    db_session.commit()
    ids = [row["id"] for row in rows]
    by_id = {job.id: job for job in db_session.scalars(select(Job).where(Job.id.in_(ids)))}
    jobs = [by_id[job_id] for job_id in ids]
    lifecycle.send_all(db_session, settings, [job for job in jobs if job.state == "queued"])
    for teacher in {job.teacher_job_id for job in jobs if job.state == "waiting"}:
        lifecycle.settle_students(db_session, settings, teacher or "")
    for job in jobs:
        db_session.refresh(job)
    return jobs


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("s") or len(text) > 20:
            raise ValueError
        seq = int(text[1:])
        if not 0 <= seq < 2**63:  # a sequence number is a 64-bit column
            raise ValueError
        return seq
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
    for name, column in _FILTER_COLUMNS.items():
        value = getattr(filters, name)
        if value is not None:
            query = query.where(column == value)
    if cursor is not None:
        query = query.where(Job.seq < decode_cursor(cursor))
    rows = list(db_session.scalars(query.order_by(Job.seq.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(rows[limit - 1].seq)


def cancel(*, db_session: Session, settings: Settings, job: Job) -> bool:
    """Waiting or queued -> cancelled, running -> cancelling (lifecycle.cancel); False
    when the job has already finished."""
    return lifecycle.cancel(db_session, settings, job)
