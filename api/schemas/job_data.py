"""Response bodies of a job's data: metric series and artifacts (``/jobs/{id}/...``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MetricValue(BaseModel):
    step: int
    value: float


class MetricSeries(BaseModel):
    """Every metric of a job by name, each series ordered by step."""

    series: dict[str, list[MetricValue]]


class ArtifactRead(BaseModel):
    """A file a job produced; download it from ``/jobs/{id}/artifacts/{name}``."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    kind: str
    size: int
