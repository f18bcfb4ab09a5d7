"""Queries of ``/tokens``: which tokens a caller may see, list and revoke."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller
from pgd_service.db.models import ApiToken
from pgd_service.db.types import utcnow


def token_state(row: ApiToken) -> str:
    """``active``, ``expired`` or ``revoked``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= utcnow():
        return "expired"
    return "active"


def _visible(caller: Caller) -> list[Any]:
    """Conditions on the rows a caller may see: their own non-admin tokens, or all."""
    if caller.is_admin:
        return []
    return [ApiToken.owner == caller.owner, ApiToken.is_admin.is_(False)]


def list_tokens(
    *, db_session: Session, caller: Caller, owner: str | None, revoked: bool
) -> list[ApiToken]:
    """The caller's tokens (an admin's: everyone's, or ``owner``'s), newest first."""
    query = select(ApiToken).where(*_visible(caller)).order_by(ApiToken.id.desc()).limit(1000)
    if caller.is_admin and owner is not None:
        query = query.where(ApiToken.owner == owner)
    if not revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return list(db_session.scalars(query))


def revoke(*, db_session: Session, caller: Caller, token_id: int) -> ApiToken | None:
    """Revoke the token (committed) if the caller may see it; None when not found."""
    row = db_session.get(ApiToken, token_id) if 0 < token_id < 2**63 else None
    if row is None or (not caller.is_admin and (row.owner != caller.owner or row.is_admin)):
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db_session.commit()
    return row
