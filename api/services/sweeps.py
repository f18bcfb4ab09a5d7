"""Sweeps: expand a grid into specs, store the sweep and its jobs in one transaction."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller
from api.services.job_data import group_summary
from api.services.jobs import RefChecker, SpecRejected, check_quota, store_and_send
from pgd_core.spec import RunSpec
from pgd_service import lifecycle
from pgd_service.db.models import Job, Sweep
from pgd_service.settings import Settings


class InvalidCombination(ValueError):
    """One combination of the grid is not a valid spec; ``errors`` name its fields."""

    def __init__(self, combination: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        super().__init__(f"grid: the combination {combination} is not a valid spec")
        self.combination = combination
        self.errors = errors


class CombinationRejected(SpecRejected):
    """One combination names a dataset, split, teacher or checkpoint this server lacks."""

    def __init__(self, combination: dict[str, Any], rejected: SpecRejected) -> None:
        super().__init__(rejected.errors)
        self.combination = combination
        self.args = (f"grid: the combination {combination} is rejected: {rejected}",)


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            # e.g. ``distill.alpha`` on a base without distillation settings: start from defaults.
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def expand(base: RunSpec, grid: dict[str, list[Any]]) -> list[tuple[dict[str, Any], RunSpec]]:
    """Every combination with its validated spec, in grid order; raises InvalidCombination."""
    base_data = base.model_dump(mode="json")
    paths = list(grid)
    out = []
    for values in itertools.product(*(grid[path] for path in paths)):
        combination = dict(zip(paths, values, strict=True))
        data = copy.deepcopy(base_data)
        for path, value in combination.items():
            _set_path(data, path, value)
        try:
            spec = RunSpec.model_validate(data)
        except ValidationError as exc:
            raise InvalidCombination(combination, [dict(e) for e in exc.errors()]) from None
        out.append((combination, spec))
    return out


def create(
    *,
    db_session: Session,
    settings: Settings,
    base: RunSpec,
    grid: dict[str, list[Any]],
    owner: str,
    sees_all: bool = False,
) -> tuple[Sweep, list[Job]]:
    """Validate every combination first, then store the sweep and its queued jobs
    atomically, then send them. Raises InvalidCombination or CombinationRejected."""
    specs = expand(base, grid)
    checker = RefChecker.for_session(db_session, settings, owner=None if sees_all else owner)
    teachers = []
    for combination, spec in specs:
        try:
            teachers.append(checker.check(spec))
        except SpecRejected as exc:
            raise CombinationRejected(combination, exc) from None
    check_quota(db_session, settings, owner, len(specs))
    sweep = Sweep(owner=owner, grid=grid)
    db_session.add(sweep)
    db_session.flush()
    rows = [
        lifecycle.job_values(
            spec=spec,
            owner=owner,
            max_attempts=settings.max_attempts,
            sweep_id=sweep.id,
            teacher_job_id=refs.teacher_job_id,
            waiting=refs.teacher_pending,
        )
        for (_, spec), refs in zip(specs, teachers, strict=True)
    ]
    return sweep, store_and_send(db_session, settings, rows)


def get(*, db_session: Session, sweep_id: str, token: Caller) -> Sweep | None:
    """The sweep, or None when missing or owned by someone else (non-admin)."""
    query = select(Sweep).where(Sweep.id == sweep_id)
    if not token.is_admin:
        query = query.where(Sweep.owner == token.owner)
    return db_session.scalar(query)


def list_page(*, db_session: Session, token: Caller, limit: int, offset: int) -> list[Sweep]:
    """The caller's sweeps (every sweep for an admin), newest first; one more than
    ``limit`` when there is a next page."""
    query = select(Sweep)
    if not token.is_admin:
        query = query.where(Sweep.owner == token.owner)
    order = (Sweep.created_at.desc(), Sweep.id.desc())
    return list(db_session.scalars(query.order_by(*order).offset(offset).limit(limit + 1)))


def summary(*, db_session: Session, sweep: Sweep) -> tuple[dict[str, int], int, float]:
    """(jobs per state with every state present, total, mean progress) in one query."""
    return group_summary(db_session, Job.sweep_id == sweep.id)
