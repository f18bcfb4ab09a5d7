"""Bearer API tokens: random secrets shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import ApiToken
from api.deps import get_db

TOKEN_PREFIX = "pgd_"
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
    return row
