"""``pgd token create`` through api.cli: only the token on stdout, usable at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from db_helpers import ROOT, alembic_config
from fastapi.testclient import TestClient

from api.cli import main
from api.main import create_app
from pgd_service.settings import Settings


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'pgd.db'}"
    command.upgrade(alembic_config(url), "head")
    monkeypatch.setenv("PGD_DATABASE_URL", url)
    return url


def _whoami(url: str, token: str) -> int:
    app = create_app(Settings(database_url=url))
    try:
        with TestClient(app) as client:
            return client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).status_code
    finally:
        app.state.engine.dispose()


def test_token_create_prints_only_a_working_token(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "--owner", "alice", "--admin"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1 and out.endswith("\n")
    token = lines[0]
    assert token.startswith("pgd_")
    assert _whoami(db_url, token) == 200
    assert _whoami(db_url, token + "x") == 401


def test_token_create_on_an_unmigrated_database_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PGD_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["token", "create", "--owner", "x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "migrated" in captured.err


def test_token_create_as_a_module_in_a_subprocess(db_url: str) -> None:
    env = {**os.environ, "PGD_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "token", "create", "--owner", "x"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert _whoami(db_url, lines[0]) == 200


def test_other_commands_go_to_the_library_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    assert "tiny-fcos-student" in capsys.readouterr().out.splitlines()
