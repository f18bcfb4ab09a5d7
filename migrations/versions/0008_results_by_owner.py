"""Results scoped to their owner: each result carries its job's owner, and a
distilled result's no-KD baseline is a job of the same owner.

- ``eval_results.owner``: a copy of ``jobs.owner`` (which never changes), filled
  here for the results stored before and at insert by the models, so that an
  owner's leaderboard page is an index range of ``eval_results`` instead of a
  join that reads each result's job to drop the other owners' rows (an owner
  with 2% of 100,000 results: 21-28 ms a page measured that way). Indexes for
  an owner's default sort (``ap``), its newest results, and its usual
  dataset+detector filter. The column stays nullable: on SQLite ``NOT NULL``
  would rebuild the table and drop migration 0004's triggers.
- ``ix_jobs_baseline_lookup`` gains ``owner`` after ``(detector, dataset)``, so
  the baseline lookup still stops at its first match when many owners train the
  same pair.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen at this revision (not imported from the models).
BEFORE = ("detector", "dataset", "kind", "state", "finished_at", "created_at", "seq")
AFTER = ("detector", "dataset", "owner", "kind", "state", "finished_at", "created_at", "seq")
OWNER_INDEXES = {
    "ix_eval_results_owner_ap_id": ("owner", "ap", "id"),
    "ix_eval_results_owner_created_at_id": ("owner", "created_at", "id"),
    "ix_eval_results_owner_dataset_detector_ap": ("owner", "dataset", "detector", "ap", "id"),
}


def upgrade() -> None:
    op.drop_index("ix_jobs_baseline_lookup", table_name="jobs")
    op.create_index("ix_jobs_baseline_lookup", "jobs", list(AFTER))
    op.add_column("eval_results", sa.Column("owner", sa.String(length=128), nullable=True))
    op.execute(
        "UPDATE eval_results SET owner = (SELECT jobs.owner FROM jobs "
        "WHERE jobs.id = eval_results.job_id)"
    )
    for name, columns in OWNER_INDEXES.items():
        op.create_index(name, "eval_results", list(columns))


def downgrade() -> None:
    for name in OWNER_INDEXES:
        op.drop_index(name, table_name="eval_results")
    op.drop_column("eval_results", "owner")
    op.drop_index("ix_jobs_baseline_lookup", table_name="jobs")
    op.create_index("ix_jobs_baseline_lookup", "jobs", list(BEFORE))
