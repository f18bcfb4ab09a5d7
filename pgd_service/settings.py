"""The service's one settings object, read from ``PGD_*`` environment variables or ``.env``."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration; api/ and worker/ read it, pgd_core receives plain values."""

    model_config = SettingsConfigDict(
        env_prefix="PGD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./pgd.db"
    broker_url: str = "sqla+sqlite:///./pgd-broker.db"
    data_root: Path = Path("./var/data")
    work_root: Path = Path("./var/work")
    weights_root: Path = Path("./var/weights")
    max_attempts: PositiveInt = 3
    heartbeat_timeout_s: PositiveFloat = Field(
        300.0, description="a running job whose heartbeat is older than this is re-queued"
    )
    heartbeat_interval_s: PositiveFloat = Field(
        5.0, description="how often a running job writes its heartbeat, progress and metrics"
    )
    cancel_poll_s: PositiveFloat = Field(
        0.5, description="how often a running job reads its cancel flag"
    )
    metrics_interval: PositiveInt = Field(
        10, description="training iterations between two stored loss / lr points"
    )
    resend_after_s: PositiveFloat = Field(
        900.0,
        description="a queued job whose message is older than this is sent again "
        "(the broker may have lost it); duplicates are dropped by the worker",
    )
    cancel_grace_s: PositiveFloat = Field(
        600.0, description="a job still cancelling after this long has its task revoked"
    )
    maintenance_interval_s: PositiveFloat = Field(
        10.0, description="how often the re-sender and the reaper run"
    )
    run_maintenance: bool = Field(
        True, description="run the re-sender and the reaper inside the API process"
    )
    visibility_timeout_s: PositiveInt = Field(
        7 * 24 * 3600,
        description="broker redelivery timeout of an unacknowledged message: above the "
        "longest job, or a running job is delivered twice (Celery #5935, #3430)",
    )
    broker_timeout_s: PositiveFloat = Field(
        2.0,
        description="how long a request waits for the broker before leaving the "
        "job to the re-sender",
    )
    db_timeout_s: PositiveFloat = Field(
        10.0,
        description="how long a request waits for a pooled database connection "
        "(PostgreSQL) before answering 503",
    )
    results_cache_entries: int = Field(
        256,
        ge=0,
        description="leaderboard pages kept per API process, keyed by the leaderboard "
        "version (0: none)",
    )
    limit_max_iters: PositiveInt = Field(
        1_000_000, description="largest schedule.max_iters a request may ask for"
    )
    limit_batch_size: PositiveInt = Field(
        256, description="largest schedule.batch_size (images per iteration, all GPUs)"
    )
    limit_image_side: PositiveInt = Field(
        4096, description="largest side in dataset.img_scale and dataset.multiscale_short"
    )
    limit_active_jobs: PositiveInt | None = Field(
        None,
        description="most jobs one owner may have waiting, queued or running at once "
        "(429 above it; unset: no limit, and no query spent on counting)",
    )
    max_body_bytes: PositiveInt = Field(
        1 << 20,
        description="largest request body the API reads (413 above it, before reading)",
    )
    measure_cost: bool = Field(
        True,
        description="after a job's evaluation, measure its model's parameters, FLOPs, "
        "latency and peak memory and store them with the result",
    )
    cost_runs: PositiveInt = Field(
        30, description="timed forwards behind a latency (after 5 untimed warm-up ones)"
    )
    cost_budget_s: PositiveFloat = Field(
        20.0,
        description="seconds the timed forwards may take; past it fewer runs are timed "
        "(at least 5, and the count is stored with the latency)",
    )
    onnx_export: bool = Field(
        True,
        description="export each measured model to ONNX (artifact model.onnx) and check "
        "onnxruntime's outputs against PyTorch's; a failed export is a warning on the job",
    )
    dist_timeout_s: PositiveFloat = Field(
        1800.0,
        description="a multi-process job whose ranks wait this long for each other (one "
        "hung or gone) is stopped; its ranks' collectives raise and torchrun ends the group",
    )
    results_visibility: Literal["owner", "everyone"] = Field(
        "owner",
        description="who sees a result on /results (and its CSV, groups and Pareto views): "
        "'owner': its job's owner and admins, as for the job itself; 'everyone': every "
        "token, a leaderboard shared by the whole team",
    )
    token_cache_s: float = Field(
        0.0,
        ge=0,
        description="seconds a valid token is trusted without reading its row again "
        "(0: every request reads it, so a revocation takes effect at once in every API "
        "process; above 0 a query is saved per request, but a token revoked through "
        "another process keeps working there for up to this long)",
    )
    events_poll_s: PositiveFloat = Field(
        1.0, description="how often GET /jobs/{id}/events polls the database for changes"
    )
    events_keepalive_s: PositiveFloat = Field(
        15.0, description="an idle event stream sends a comment this often (drops dead clients)"
    )
    events_max_s: PositiveFloat = Field(
        3600.0, description="an event stream closes after this long; clients reconnect"
    )

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        # Resolved once, against the folder this process started in: a child process
        # (pgd up's worker runs in the repository root) gets the same files, not
        # another database and broker of the same relative name.
        for name in ("data_root", "work_root", "weights_root"):
            setattr(self, name, Path(os.path.abspath(getattr(self, name).expanduser())))
        self.database_url = absolute_sqlite_url(self.database_url)
        self.broker_url = absolute_sqlite_url(self.broker_url)
        return self

    @model_validator(mode="after")
    def _production_needs_a_server_database(self) -> Settings:
        # SQLite serialises writers on one file: fine on one machine, wrong for
        # several API and worker processes on several hosts.
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            raise ValueError("database_url must not be SQLite when environment is 'production'")
        return self


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for logs)."""
    return re.sub(r"^([A-Za-z0-9+.-]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def absolute_sqlite_url(url: str) -> str:
    """``sqlite:///./pgd.db`` (or kombu's ``sqla+sqlite:///...``) with its file made
    absolute against the current folder; any other URL unchanged (in-memory
    databases and server URLs have no file)."""
    for prefix in ("sqlite:///", "sqla+sqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            path, sep, query = rest.partition("?")
            if not path or path == ":memory:" or path.startswith("/"):
                return url
            return f"{prefix}{os.path.abspath(os.path.expanduser(path))}{sep}{query}"
    return url


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()
