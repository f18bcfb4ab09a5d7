"""Sweeps: expand a grid into specs, store the sweep and its jobs in one transaction."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import JOB_STATES, ApiToken, Job, Sweep
from api.services.jobs import new_job
from pgd_core.spec import RunSpec


class InvalidCombination(ValueError):
    """One combination of the grid is not a valid spec; ``errors`` name its fields."""

    def __init__(self, combination: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        super().__init__(f"grid: the combination {combination} is not a valid spec")
        self.combination = combination
        self.errors = errors


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
            raise InvalidCombination(combination, list(exc.errors())) from None
        out.append((combination, spec))
    return out


def create(
    *,
    db_session: Session,
    base: RunSpec,
    grid: dict[str, list[Any]],
    owner: str,
    max_attempts: int,
) -> tuple[Sweep, list[Job]]:
    """Validate every combination first, then store the sweep and its queued jobs atomically."""
    specs = expand(base, grid)
    sweep = Sweep(owner=owner, grid=grid)
    db_session.add(sweep)
    db_session.flush()
    jobs = [
        new_job(spec=spec, owner=owner, max_attempts=max_attempts, sweep_id=sweep.id)
        for _, spec in specs
    ]
    db_session.add_all(jobs)
    db_session.commit()
    return sweep, jobs


def get(*, db_session: Session, sweep_id: str, token: ApiToken) -> Sweep | None:
    """The sweep, or None when missing or owned by someone else (non-admin)."""
    query = select(Sweep).where(Sweep.id == sweep_id)
    if not token.is_admin:
        query = query.where(Sweep.owner == token.owner)
    return db_session.scalar(query)


def summary(*, db_session: Session, sweep: Sweep) -> tuple[dict[str, int], int, float]:
    """(jobs per state with every state present, total, mean progress) in one query."""
    rows = db_session.execute(
        select(Job.state, func.count(), func.coalesce(func.sum(Job.progress), 0.0))
        .where(Job.sweep_id == sweep.id)
        .group_by(Job.state)
    ).all()
    states = dict.fromkeys(JOB_STATES, 0)
    total = 0
    progress_sum = 0.0
    for state, count, progress in rows:
        states[state] = int(count)
        total += int(count)
        progress_sum += float(progress)
    return states, total, (progress_sum / total if total else 0.0)
