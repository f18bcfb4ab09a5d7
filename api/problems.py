"""RFC 9457 problem details (``application/problem+json``) for every error the API returns."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
_LOCATIONS = {"body", "query", "path", "header", "cookie"}
# RunSpec's cross-field checks raise "field.path: explanation"; the field is the prefix.
_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([A-Za-z_][A-Za-z0-9_.]*): (.*)$", re.DOTALL)


def problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A problem+json response with the standard members and any extension members."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Pydantic errors as ``{field, message}`` with dotted paths such as ``distill.alpha``."""
    out = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in _LOCATIONS:
            loc = loc[1:]
        if error.get("type") == "json_invalid":
            loc = []  # its loc holds a character offset, not a field
        message = str(error.get("msg", ""))
        match = _FIELD_PREFIX.match(message)
        if match and error.get("type") == "value_error":
            loc = [*loc, match.group(1)]
            message = match.group(2)
        out.append({"field": ".".join(loc), "message": message})
    return out


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(list(exc.errors()))
    fields = ", ".join(sorted({e["field"] for e in errors if e["field"]}))
    detail = f"invalid request: {fields}" if fields else "invalid request"
    return problem(422, detail, errors=errors)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, detail, headers=dict(exc.headers) if exc.headers else None)


async def _database_down_handler(request: Request, exc: Exception) -> JSONResponse:
    # The token lookup runs before any route, so an unreachable database
    # surfaces here first; callers should retry, hence 503 and not 500.
    return problem(503, "database unavailable", headers={"Retry-After": "5"})


async def _unstorable_value_handler(request: Request, exc: Exception) -> JSONResponse:
    # A value the database cannot hold or compare, e.g. a NUL character, which
    # PostgreSQL text and jsonb reject: the request is at fault, not the server.
    return problem(422, "invalid request: a value contains characters the database cannot store")


async def _too_many_jobs_handler(request: Request, exc: Exception) -> JSONResponse:
    return problem(429, str(exc), headers={"Retry-After": "60"})


def install_problem_handlers(app: FastAPI) -> None:
    """Route validation and HTTP errors (404, 409, 401, 403, 503, ...) to problem+json."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    # The database is down, or every pooled connection stayed busy for db_timeout_s.
    for down in (OperationalError, PoolTimeout):
        app.add_exception_handler(down, _database_down_handler)
    app.add_exception_handler(DataError, _unstorable_value_handler)
    from api.services.jobs import TooManyJobs

    app.add_exception_handler(TooManyJobs, _too_many_jobs_handler)
