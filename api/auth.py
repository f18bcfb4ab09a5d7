"""Bearer API tokens: random secrets shown once, stored only as SHA-256 hashes.

``last_used_at`` is written at most once per ``LAST_USED_RESOLUTION`` per token:
a write (and a commit) on every request would double the cost of a read, and
"used in the last minute" is as precise as anyone needs it. The write is one
guarded UPDATE, so concurrent requests of one token do not all rewrite it.

Valid tokens are cached in the process for ``TOKEN_CACHE_TTL_S`` seconds (keyed
by the database URL and the token's hash), which saves a query on nearly every
request. The price: a token revoked in the database keeps working in a process
that has used it for up to ``TOKEN_CACHE_TTL_S`` seconds (10 s by default).
Unknown and revoked tokens are never cached, so a new token works at once.
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
#: Seconds a valid token is trusted without reading its row again (read at each
#: request, so tests may patch it); 0 disables the cache.
TOKEN_CACHE_TTL_S = 10.0
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
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db_session.add(ApiToken(token_hash=hash_token(token), owner=owner, is_admin=is_admin))
    db_session.flush()
    return token


def store_token(database_url: str, *, owner: str, is_admin: bool = False) -> str:
    """Create and commit a token in the database at ``database_url`` (CLI, ``pgd up``).

    Raises:
        SQLAlchemyError: the database is unreachable or not migrated.
    """
    from pgd_service.db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            token = create_token(db_session=session, owner=owner, is_admin=is_admin)
            session.commit()
    finally:
        engine.dispose()
    return token


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _remember(key: CacheKey, caller: Caller) -> None:
    """Cache ``caller`` for TOKEN_CACHE_TTL_S (from now: a use does not extend it)."""
    ttl = TOKEN_CACHE_TTL_S
    if ttl <= 0:
        return
    with _cache_lock:
        entry = _cache.get(key)
        expires = entry.expires if entry is not None else time.monotonic() + ttl
        if entry is None and len(_cache) >= _TOKEN_CACHE_MAX:
            _cache.clear()  # rare (that many tokens in 10 s): start again
        _cache[key] = _Cached(expires=expires, caller=caller)


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
    """The caller of a valid token; 401 when it is missing, unknown or revoked.

    Runs on the event loop: a cached token used in the last minute costs no query
    and no thread; otherwise the lookup (and the ``last_used_at`` write) runs on a
    session of the app's engine in a worker thread."""
    if credentials is None:
        raise _unauthorized("a bearer token is required")
    token_hash = hash_token(credentials.credentials)
    key = (settings.database_url, token_hash)
    caller = _from_cache(key)
    if caller is not None and not _stale(caller, utcnow()):
        return caller
    found = await anyio.to_thread.run_sync(_check, session_factory, token_hash, caller)
    if found is None:
        raise _unauthorized("invalid or revoked token")
    _remember(key, found)
    return found


def _stale(caller: Caller, now: datetime) -> bool:
    return caller.last_used_at is None or now - caller.last_used_at >= LAST_USED_RESOLUTION


def _check(
    session_factory: sessionmaker[Session], token_hash: str, cached: Caller | None
) -> Caller | None:
    """Read the token (unless ``cached``) and record its use when the last one is a
    minute old; None when it is unknown or revoked."""
    with session_factory() as db_session:
        caller = cached
        if caller is None:
            found = (
                db_session.execute(_TOKEN_BY_HASH, {"token_hash": token_hash}).mappings().first()
            )
            if found is None or found["revoked_at"] is not None:
                return None
            caller = Caller(found["id"], found["owner"], found["is_admin"], found["last_used_at"])
        now = utcnow()
        if _stale(caller, now):
            # One guarded UPDATE: concurrent requests of one token do not all rewrite it.
            db_session.execute(
                _TOUCH,
                {"token_id": caller.token_id, "stale": now - LAST_USED_RESOLUTION, "now": now},
            )
            db_session.commit()
            caller = replace(caller, last_used_at=now)
        return caller
