"""What each evaluated model costs to run, beside what it scores.

``eval_results`` gets ``params``, ``flops``, ``latency_ms`` (median, batch 1),
``latency_p90_ms``, ``peak_memory_mb`` and ``cost`` (the whole measurement as
JSON: device, threads, input size, runs, the ONNX export and its parity check),
all null for results stored before; the four sortable ones get a ``(column, id)``
index like the metrics, so the leaderboard sorts on them as it does on AP.

Only columns are added (no table rebuild), so migration 0004's leaderboard
triggers are untouched.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SORTABLE = ("params", "flops", "latency_ms", "peak_memory_mb")


def upgrade() -> None:
    op.add_column("eval_results", sa.Column("params", sa.BigInteger(), nullable=True))
    op.add_column("eval_results", sa.Column("flops", sa.BigInteger(), nullable=True))
    op.add_column("eval_results", sa.Column("latency_ms", sa.Float(), nullable=True))
    op.add_column("eval_results", sa.Column("latency_p90_ms", sa.Float(), nullable=True))
    op.add_column("eval_results", sa.Column("peak_memory_mb", sa.Float(), nullable=True))
    op.add_column("eval_results", sa.Column("cost", sa.JSON(), nullable=True))
    for key in SORTABLE:
        op.create_index(f"ix_eval_results_{key}_id", "eval_results", [key, "id"])


def downgrade() -> None:
    for key in SORTABLE:
        op.drop_index(f"ix_eval_results_{key}_id", table_name="eval_results")
    # Not batch mode: on SQLite it would rebuild the table and drop 0004's triggers;
    # SQLite >= 3.35 drops a column in place.
    for column in ("cost", "peak_memory_mb", "latency_p90_ms", "latency_ms", "flops", "params"):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE eval_results DROP COLUMN {column}")
        else:
            op.drop_column("eval_results", column)
