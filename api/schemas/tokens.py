"""Bodies of ``/tokens``: a caller's API tokens (never their secrets, but once)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The longest expiry a token may be given (a year).
MAX_EXPIRES_DAYS = 366


class TokenCreate(BaseModel):
    """A new token for the caller; an admin may create one for another owner, or an
    admin token."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=128, examples=["laptop"])
    expires_in_days: float | None = Field(
        None,
        gt=0,
        le=MAX_EXPIRES_DAYS,
        allow_inf_nan=False,
        description="refused after this many days; no value: never expires",
    )
    owner: str | None = Field(
        None, min_length=1, max_length=128, description="admins only; default: the caller"
    )
    is_admin: bool = Field(False, description="admins only")

    @field_validator("name", "owner")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError("must be printable and not blank")
        return value


class TokenRead(BaseModel):
    """A token as listed: who it is for and when it was used, never its secret."""

    id: int
    owner: str
    name: str | None
    is_admin: bool
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    #: True for the token this request was made with.
    current: bool = False
    state: Literal["active", "expired", "revoked"] = "active"


class TokenCreated(TokenRead):
    """A created token: ``token`` is its only plain-text copy."""

    token: str
