"""Bodies of the catalogues: ``/presets`` and ``/datasets``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class PresetRead(BaseModel):
    name: str
    spec: dict[str, Any]


class DatasetRead(BaseModel):
    name: str
    format: str
    classes: list[str]
    splits: list[str]
    usable: bool = True
    #: Why it cannot be used (when ``usable`` is false).
    problem: str | None = None
