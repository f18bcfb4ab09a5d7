"""API tokens get a name and an optional expiry.

- ``api_tokens.name``: what the token is for ("laptop", "ci"), shown by
  ``GET /tokens`` and ``pgd tokens list``; existing tokens have none.
- ``api_tokens.expires_at``: after it the token is refused (401, "token expired");
  null means it never expires (every existing token).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("name", sa.String(128), nullable=True))
    op.add_column("api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ("expires_at", "name"):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE api_tokens DROP COLUMN {column}")
        else:
            op.drop_column("api_tokens", column)
