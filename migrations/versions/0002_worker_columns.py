"""Worker bookkeeping on jobs: losses, last enqueue, task id, claiming worker, cancel time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lost_count", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("enqueued_at", TS, nullable=True))
        batch.add_column(sa.Column("task_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(255), nullable=True))
        batch.add_column(sa.Column("cancel_requested_at", TS, nullable=True))
        batch.create_check_constraint("lost_count", "lost_count >= 0")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_lost_count"), type_="check")
        batch.drop_column("cancel_requested_at")
        batch.drop_column("worker")
        batch.drop_column("task_id")
        batch.drop_column("enqueued_at")
        batch.drop_column("lost_count")
