"""Leaderboard indexes: (metric, id) per sort key, -ap under the usual filters, and
the no-KD baseline lookup on jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen at this revision (not imported from the models).
SORT_KEYS = ("ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji", "created_at")
BASELINE_LOOKUP = ("detector", "dataset", "kind", "state", "finished_at", "created_at", "seq")


def upgrade() -> None:
    # The leaderboard index gains id, so ties on ap need no sort.
    op.drop_index("ix_eval_results_leaderboard", table_name="eval_results")
    op.create_index(
        "ix_eval_results_leaderboard",
        "eval_results",
        ["dataset", "detector", "method", "ap", "id"],
    )
    op.create_index(
        "ix_eval_results_dataset_detector_ap", "eval_results", ["dataset", "detector", "ap", "id"]
    )
    for key in SORT_KEYS:
        op.create_index(f"ix_eval_results_{key}_id", "eval_results", [key, "id"])
    op.create_index("ix_jobs_baseline_lookup", "jobs", list(BASELINE_LOOKUP))


def downgrade() -> None:
    op.drop_index("ix_jobs_baseline_lookup", table_name="jobs")
    for key in reversed(SORT_KEYS):
        op.drop_index(f"ix_eval_results_{key}_id", table_name="eval_results")
    op.drop_index("ix_eval_results_dataset_detector_ap", table_name="eval_results")
    op.drop_index("ix_eval_results_leaderboard", table_name="eval_results")
    op.create_index(
        "ix_eval_results_leaderboard", "eval_results", ["dataset", "detector", "method", "ap"]
    )
