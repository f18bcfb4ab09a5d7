"""The service settings: environment overrides and the production guard."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pgd_service.settings import Settings


def test_defaults_are_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGD_DATABASE_URL", raising=False)
    settings = Settings(_env_file=None)
    assert settings.environment == "development"
    assert settings.database_url.startswith("sqlite")
    assert settings.max_attempts == 3


def test_environment_variables_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGD_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("PGD_DATA_ROOT", "/srv/data")
    settings = Settings(_env_file=None)
    assert settings.max_attempts == 5
    assert str(settings.data_root) == "/srv/data"


def test_production_refuses_sqlite() -> None:
    with pytest.raises(ValidationError, match="SQLite"):
        Settings(_env_file=None, environment="production", database_url="sqlite:///./pgd.db")
    ok = Settings(
        _env_file=None, environment="production", database_url="postgresql+psycopg://db/pgd"
    )
    assert ok.environment == "production"
