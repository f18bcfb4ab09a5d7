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


def test_a_childs_environment_gives_back_the_same_settings(monkeypatch, tmp_path) -> None:
    """What pgd up and the tests hand a worker: unset settings stay unset (a literal
    "None" failed every worker at import), the rest round-trips."""
    from api.embedded import settings_env

    parent = Settings(_env_file=None, data_root=tmp_path / "d", limit_max_iters=5)
    env = settings_env(parent)
    assert "PGD_LIMIT_ACTIVE_JOBS" not in env
    for name in [k for k in list(__import__("os").environ) if k.startswith("PGD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("PGD_"):
            monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == parent
