"""The service's one settings object, read from ``PGD_*`` environment variables or ``.env``."""

from __future__ import annotations

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
    def _production_needs_a_server_database(self) -> Settings:
        # SQLite serialises writers on one file: fine on one machine, wrong for
        # several API and worker processes on several hosts.
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            raise ValueError("database_url must not be SQLite when environment is 'production'")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()
