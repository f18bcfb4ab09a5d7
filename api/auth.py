"""Bearer API tokens: random secrets shown once, stored only as SHA-256 hashes.

``last_used_at`` is written at most once per ``LAST_USED_RESOLUTION`` per token:
a write (and a commit) on every request would double the cost of a read, and
"used in the last minute" is as precise as anyone needs it. The write is one
guarded UPDATE, so concurrent requests of one token do not all rewrite it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from api.db.models import ApiToken
from api.db.types import utcnow
from api.deps import get_db

TOKEN_PREFIX = "pgd_"
LAST_USED_RESOLUTION = timedelta(minutes=1)
_bearer = HTTPBearer(auto_error=False, description="an API token created with the CLI")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, db_session: Session, owner: str, is_admin: bool = False) -> str:
    """Store a new token for ``owner`` and return its only plain-text copy (caller commits)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db_session.add(ApiToken(token_hash=hash_token(token), owner=owner, is_admin=is_admin))
    db_session.flush()
    return token


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def current_token(
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    db_session: Session = Depends(get_db),
) -> ApiToken:
    """The caller's token; 401 when it is missing, unknown or revoked."""
    if credentials is None:
        raise _unauthorized("a bearer token is required")
    row = db_session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(credentials.credentials))
    )
    if row is None or row.revoked_at is not None:
        raise _unauthorized("invalid or revoked token")
    _touch(db_session, row)
    return row


def _touch(db_session: Session, row: ApiToken) -> None:
    """Record the use of ``row`` unless it was recorded less than a minute ago."""
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_RESOLUTION:
        return
    stale = now - LAST_USED_RESOLUTION
    db_session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == row.id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= stale),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    # Committed now, on its own: the route's transaction may roll back.
    db_session.commit()
    set_committed_value(row, "last_used_at", now)
