"""Requests with a body are refused before it is read when it could only cost the
API: too large (413, from ``Content-Length`` or while it streams in), not JSON
(415), or sent without a bearer token to a route that needs one (401). FastAPI reads and parses
a body before it resolves the token dependency, so without this an anonymous
50 MB POST was read and parsed in full only to be refused.

A raw ASGI middleware: it sees the request before FastAPI reads anything and
passes the body through unchanged, chunk by chunk, while counting it.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem

#: Methods whose requests carry a body on this API.
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class BodyTooLarge(Exception):
    """The body grew past the limit while it was being read."""


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if not headers.get("authorization", b"").lower().startswith(b"bearer "):
            # Every route that takes a body needs a token: refuse before reading it.
            response = problem(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await problem(400, "Content-Length is not a number")(scope, receive, send)
                return
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            kind = headers.get("content-type", b"").split(b";")[0].strip().lower()
            # No Content-Type at all is read as JSON (FastAPI's default); a declared
            # other type is refused rather than misread.
            if size > 0 and kind and kind not in (b"application/json", b"application/problem+json"):
                shown = kind.decode("latin-1")
                message = f"request body must be application/json, not {shown}"
                await problem(415, message)(scope, receive, send)
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            f"request body over the limit of {self.max_bytes} bytes (PGD_MAX_BODY_BYTES)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def install(app: Any, max_bytes: int) -> None:
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
