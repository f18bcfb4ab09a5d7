"""Leaderboard version: one counter that every change to what the leaderboard shows
raises, in the transaction that makes the change (triggers).

The API caches leaderboard pages per version and serves them with an ETag; it
reads the version (one primary-key row) before each page. The triggers:

- ``eval_results``: any INSERT, UPDATE or DELETE (TRUNCATE too on PostgreSQL);
  deleting a job removes its result through the cascade, which fires them;
- ``jobs``: an UPDATE of a column the leaderboard reads (kind, detector, dataset,
  spec, state, teacher_job_id, created_at, finished_at) of a job that has a
  result. Jobs without a result never appear on it, as rows, teachers or baselines.

A counter row, not a sequence: ``nextval`` is not transactional, so a reader could
see the new version before the change it stands for is committed.

SQLite: a later migration that rebuilds ``eval_results`` or ``jobs`` in batch mode
drops their triggers and must create them again (``create_triggers``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen at this revision: the jobs columns the leaderboard reads.
JOB_COLUMNS = (
    "kind",
    "detector",
    "dataset",
    "spec",
    "state",
    "teacher_job_id",
    "created_at",
    "finished_at",
)
BUMP = "UPDATE leaderboard_version SET version = version + 1 WHERE id = 1"


def _changed(column: str) -> str:
    # json has no equality operator in PostgreSQL; its text does.
    if column == "spec":
        return "OLD.spec::text IS DISTINCT FROM NEW.spec::text"
    return f"OLD.{column} IS DISTINCT FROM NEW.{column}"


def create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION pgd_bump_leaderboard_version() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE FUNCTION pgd_bump_leaderboard_version_for_job() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF EXISTS (SELECT 1 FROM eval_results WHERE job_id = NEW.id) THEN "
            f"{BUMP}; END IF; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER eval_results_leaderboard_version "
            "AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eval_results "
            "FOR EACH STATEMENT EXECUTE FUNCTION pgd_bump_leaderboard_version()"
        )
        op.execute(
            "CREATE TRIGGER jobs_leaderboard_version AFTER UPDATE ON jobs FOR EACH ROW "
            f"WHEN ({' OR '.join(_changed(c) for c in JOB_COLUMNS)}) "
            "EXECUTE FUNCTION pgd_bump_leaderboard_version_for_job()"
        )
        return
    for event in ("INSERT", "UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER eval_results_leaderboard_version_{event.lower()} "
            f"AFTER {event} ON eval_results FOR EACH ROW BEGIN {BUMP}; END"
        )
    op.execute(
        f"CREATE TRIGGER jobs_leaderboard_version AFTER UPDATE OF {', '.join(JOB_COLUMNS)} "
        "ON jobs FOR EACH ROW "
        "WHEN EXISTS (SELECT 1 FROM eval_results WHERE job_id = NEW.id) "
        f"BEGIN {BUMP}; END"
    )


def drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER jobs_leaderboard_version ON jobs")
        op.execute("DROP TRIGGER eval_results_leaderboard_version ON eval_results")
        op.execute("DROP FUNCTION pgd_bump_leaderboard_version_for_job()")
        op.execute("DROP FUNCTION pgd_bump_leaderboard_version()")
        return
    op.execute("DROP TRIGGER jobs_leaderboard_version")
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER eval_results_leaderboard_version_{event}")


def upgrade() -> None:
    table = op.create_table(
        "leaderboard_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_leaderboard_version_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leaderboard_version")),
    )
    op.bulk_insert(table, [{"id": 1, "version": 1}])
    create_triggers()


def downgrade() -> None:
    drop_triggers()
    op.drop_table("leaderboard_version")
