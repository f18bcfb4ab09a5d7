"""Bearer API tokens: random secrets shown once, stored only as SHA-256 hashes.

A token may carry a name and an expiry; it is refused once expired or revoked.
Tokens are created with ``pgd token create`` (on the server, no token needed) or
``POST /tokens``, listed with ``GET /tokens`` and revoked with ``DELETE /tokens/{id}``.

``last_used_at`` is written at most once per ``LAST_USED_RESOLUTION`` per token:
a write (and a commit) on every request would double the cost of a read, and
"used in the last minute" is as precise as anyone needs it. The write is one
guarded UPDATE, so concurrent requests of one token do not all rewrite it.

By default every request reads its token's row (one indexed query), so a
revocation takes effect on the next request in every API process. With
``PGD_TOKEN_CACHE_S`` > 0 a valid token is trusted for that many seconds without
reading its row again (keyed by the database URL and the token's hash): a query
saved per request, at the price that a token revoked through another process
keeps working there for up to that long. The revoking process forgets the token
at once; unknown, revoked and expired tokens are never cached.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeAlias, cast

import anyio
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.deps import get_app_settings, get_session_factory
from pgd_service.db.models import ApiToken
from pgd_service.db.types import utcnow
from pgd_service.settings import Settings

TOKEN_PREFIX = "pgd_"
LAST_USED_RESOLUTION = timedelta(minutes=1)
_TOKEN_CACHE_MAX = 10_000
_bearer = HTTPBearer(auto_error=False, description="an API token created with the CLI")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: a valid token's id, owner and rights (what routes need of it).

    Immutable, so a cached one is handed to every request as it is."""

    token_id: int
    owner: str
    is_admin: bool
    last_used_at: datetime | None
    expires_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class _Cached:
    expires: float  # time.monotonic()
    caller: Caller


#: (database URL, token hash)
CacheKey: TypeAlias = tuple[str, str]
_cache: dict[CacheKey, _Cached] = {}
_cache_lock = threading.Lock()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, db_session: Session, owner: str, is_admin: bool = False) -> str:
    """Store a new token for ``owner`` and return its only plain-text copy (caller commits)."""
    return issue_token(db_session=db_session, owner=owner, is_admin=is_admin)[0]


def issue_token(
    *,
    db_session: Session,
    owner: str,
    is_admin: bool = False,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, ApiToken]:
    """Store a new token for ``owner``; its only plain-text copy and its row (caller
    commits)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        token_hash=hash_token(token),
        owner=owner,
        is_admin=is_admin,
        name=name,
        expires_at=expires_at,
    )
    db_session.add(row)
    db_session.flush()
    return token, row


def store_token(
    database_url: str,
    *,
    owner: str,
    is_admin: bool = False,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Create and commit a token in the database at ``database_url`` (CLI, ``pgd up``).

    Raises:
        SQLAlchemyError: the database is unreachable or not migrated.
    """
    from pgd_service.db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            token, _ = issue_token(
                db_session=session, owner=owner, is_admin=is_admin, name=name, expires_at=expires_at
            )
            session.commit()
    finally:
        engine.dispose()
    return token


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _remember(key: CacheKey, caller: Caller, ttl: float) -> None:
    """Cache ``caller`` for ``ttl`` seconds (from now: a use does not extend it)."""
    if ttl <= 0:
        return
    with _cache_lock:
        entry = _cache.get(key)
        expires = entry.expires if entry is not None else time.monotonic() + ttl
        if entry is None and len(_cache) >= _TOKEN_CACHE_MAX:
            _cache.clear()  # rare (that many tokens in 10 s): start again
        _cache[key] = _Cached(expires=expires, caller=caller)


def forget(token_id: int) -> None:
    """Drop a token from this process's cache (it was just revoked here)."""
    with _cache_lock:
        for key in [k for k, v in _cache.items() if v.caller.token_id == token_id]:
            del _cache[key]


def _from_cache(key: CacheKey) -> Caller | None:
    entry = _cache.get(key)
    if entry is None:
        return None
    if entry.expires <= time.monotonic():
        with _cache_lock:
            if _cache.get(key) is entry:
                del _cache[key]
        return None
    return entry.caller


_TOKENS = cast(Table, ApiToken.__table__)
_TOKEN_BY_HASH = select(_TOKENS).where(_TOKENS.c.token_hash == bindparam("token_hash"))
_TOUCH = (
    update(_TOKENS)
    .where(
        _TOKENS.c.id == bindparam("token_id"),
        or_(_TOKENS.c.last_used_at.is_(None), _TOKENS.c.last_used_at <= bindparam("stale")),
    )
    .values(last_used_at=bindparam("now"))
)


async def current_token(
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    settings: Settings = Depends(get_app_settings),
    session_factory: sessionmaker[Session] = Depends(get_session_factory),
) -> Caller:
    """The caller of a valid token; 401 when it is missing, unknown, revoked or expired.

    Runs on the event loop. With ``token_cache_s`` above 0, a token checked within
    that many seconds costs no query and no thread; otherwise (the default, 0) the
    lookup (and the ``last_used_at`` write) runs on a session of the app's engine
    in a worker thread, so a revocation is seen by the next request."""
    if credentials is None:
        raise _unauthorized("a bearer token is required")
    token_hash = hash_token(credentials.credentials)
    key = (settings.database_url, token_hash)
    caller = _from_cache(key)
    now = utcnow()
    if caller is not None and caller.expired(now):
        raise _unauthorized("token expired")
    if caller is not None and not _stale(caller, now):
        return caller
    found = await anyio.to_thread.run_sync(_check, session_factory, token_hash, caller)
    if isinstance(found, str):
        raise _unauthorized(found)
    _remember(key, found, settings.token_cache_s)
    return found


def _stale(caller: Caller, now: datetime) -> bool:
    return caller.last_used_at is None or now - caller.last_used_at >= LAST_USED_RESOLUTION


def _check(
    session_factory: sessionmaker[Session], token_hash: str, cached: Caller | None
) -> Caller | str:
    """Read the token (unless ``cached``) and record its use when the last one is a
    minute old; why it is refused when it is unknown, revoked or expired."""
    with session_factory() as db_session:
        caller = cached
        now = utcnow()
        if caller is None:
            found = (
                db_session.execute(_TOKEN_BY_HASH, {"token_hash": token_hash}).mappings().first()
            )
            if found is None or found["revoked_at"] is not None:
                return "invalid or revoked token"
            caller = Caller(
                found["id"],
                found["owner"],
                found["is_admin"],
                found["last_used_at"],
                found["expires_at"],
            )
            if caller.expired(now):
                return "token expired"
        if _stale(caller, now):
            # One guarded UPDATE: concurrent requests of one token do not all rewrite it.
            db_session.execute(
                _TOUCH,
                {"token_id": caller.token_id, "stale": now - LAST_USED_RESOLUTION, "now": now},
            )
            db_session.commit()
            caller = replace(caller, last_used_at=now)
        return caller


def visible_owner(token: Caller, settings: Settings) -> str | None:
    """Whose results ``token`` sees on /results: its own owner's, or None for every
    owner's (an admin, or any token with ``PGD_RESULTS_VISIBILITY=everyone``)."""
    if token.is_admin or settings.results_visibility == "everyone":
        return None
    return token.owner
