"""Studies, seed groups and jobs that wait for their teacher.

- ``studies``: a teacher and every (method, seed) student that waits for it.
- ``jobs.config_hash``: the spec's hash without its seed (runs that differ only
  by seed share it; ``GET /results?group_by=config`` groups by it), ``jobs.seed``,
  ``jobs.baseline_hash`` (a distill job's no-KD control: the config hash of the
  same student trained alone) and ``jobs.study_id``.
- the job state ``waiting``: a student whose teacher job has not finished yet.

Existing rows get their hashes computed from their stored spec.

SQLite rebuilds ``jobs`` in batch mode, which drops its leaderboard trigger
(migration 0004); it is created again here as that revision defined it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:00:00
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
OLD_STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
NEW_STATES = ("waiting", *OLD_STATES)
# Frozen copy of migration 0004's SQLite trigger on jobs.
_SQLITE_JOBS_TRIGGER = (
    "CREATE TRIGGER jobs_leaderboard_version AFTER UPDATE OF kind, detector, dataset, spec, "
    "state, teacher_job_id, created_at, finished_at ON jobs FOR EACH ROW "
    "WHEN EXISTS (SELECT 1 FROM eval_results WHERE job_id = NEW.id) "
    "BEGIN UPDATE leaderboard_version SET version = version + 1 WHERE id = 1; END"
)


def _in(values: tuple[str, ...]) -> str:
    return f"state IN ({', '.join(repr(v) for v in values)})"


def _sha256(data: dict) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _hashes(spec: dict) -> tuple[str, int, str | None]:
    """(config hash, seed, baseline hash) of a stored spec, as pgd_core.spec computes
    them at this revision (frozen here: a migration must not change with the code)."""
    data = dict(spec)
    seed = int(data.pop("seed", 0))
    baseline = None
    if data.get("kind") == "distill":
        base = dict(data, kind="train", method="none", teacher=None, teacher_ref=None)
        base["distill"] = None
        baseline = _sha256(base)
    return _sha256(data), seed, baseline


def _rebuild_jobs(states: tuple[str, ...], add: bool) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS jobs_leaderboard_version")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_state"), type_="check")
        batch.create_check_constraint("state", _in(states))
        if add:
            batch.add_column(sa.Column("config_hash", sa.String(64), nullable=True))
            batch.add_column(sa.Column("seed", sa.Integer(), nullable=True))
            batch.add_column(sa.Column("baseline_hash", sa.String(64), nullable=True))
            batch.add_column(
                sa.Column(
                    "study_id",
                    sa.String(36),
                    sa.ForeignKey(
                        "studies.id",
                        name=op.f("fk_jobs_study_id_studies"),
                        ondelete="SET NULL",
                    ),
                    nullable=True,
                )
            )
            batch.create_index("ix_jobs_config_hash_seed", ["config_hash", "seed"])
            batch.create_index("ix_jobs_study_id", ["study_id"])
        else:
            batch.drop_index("ix_jobs_study_id")
            batch.drop_index("ix_jobs_config_hash_seed")
            batch.drop_column("study_id")
            batch.drop_column("baseline_hash")
            batch.drop_column("seed")
            batch.drop_column("config_hash")
    if sqlite:
        op.execute(_SQLITE_JOBS_TRIGGER)


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("teacher_job_id", sa.String(36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_index(op.f("ix_studies_owner"), "studies", ["owner"])
    _rebuild_jobs(NEW_STATES, add=True)
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("config_hash", sa.String),
        sa.column("seed", sa.Integer),
        sa.column("baseline_hash", sa.String),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(jobs.c.id, jobs.c.spec)).all()
    for job_id, spec in rows:
        config, seed, baseline = _hashes(spec or {})
        bind.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(config_hash=config, seed=seed, baseline_hash=baseline)
        )


def downgrade() -> None:
    op.execute(
        "UPDATE jobs SET state = 'failed', reason = 'teacher_failed' WHERE state = 'waiting'"
    )
    _rebuild_jobs(OLD_STATES, add=False)
    op.drop_index(op.f("ix_studies_owner"), table_name="studies")
    op.drop_table("studies")
