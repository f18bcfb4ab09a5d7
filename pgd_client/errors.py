"""What the client raises: one type for the API's answers, one for no answer."""

from __future__ import annotations

from typing import Any


class PgdError(Exception):
    """Anything the client raises."""


class ProblemError(PgdError):
    """The API answered with an RFC 9457 problem (any 4xx or 5xx).

    ``status``, ``title``, ``detail`` and ``type`` are the problem's members;
    ``errors`` its field errors (``[{"field": "schedule.lr", "message": ...}]``,
    on a 422); ``extra`` any other member (``checks`` of a 503, ``combination``
    of a rejected sweep)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.title = str(body.get("title") or "")
        self.detail = str(body.get("detail") or self.title or f"HTTP {status}")
        self.type = str(body.get("type") or "about:blank")
        self.errors: list[dict[str, str]] = list(body.get("errors") or [])
        known = {"status", "title", "detail", "type", "errors"}
        self.extra = {k: v for k, v in body.items() if k not in known}
        super().__init__(f"{status} {self.title}: {self.detail}" if self.title else self.detail)

    def field_errors(self) -> dict[str, str]:
        """``{field: message}`` of a 422 (messages of one field joined by "; ")."""
        out: dict[str, str] = {}
        for error in self.errors:
            field = error.get("field", "")
            message = error.get("message", "")
            out[field] = f"{out[field]}; {message}" if field in out else message
        return out


class Unreachable(PgdError):
    """No answer from the API (connection refused, DNS, timeout) after the retries."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"the API at {url} is unreachable: {cause}")
