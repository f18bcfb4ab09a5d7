"""``pgd up``: the whole service on one machine with nothing installed.

SQLite for the database and kombu's SQLAlchemy transport (a SQLite file) for
the broker, so no server is needed; the API runs in this process and one real
Celery worker process runs beside it: the same code path as production, where
only the two URLs change.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pgd_service.queue import local_queues
from pgd_service.settings import Settings, redacted

REPO_ROOT = Path(__file__).resolve().parents[1]


def migrate(database_url: str) -> None:
    """``alembic upgrade head`` on ``database_url`` (the only way the schema is made)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process the same settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        if value is None:  # unset (its default): "None" would not parse back
            env.pop(f"PGD_{name.upper()}", None)
            continue
        env[f"PGD_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def home_env(home: Path) -> dict[str, str]:
    """This process's environment without its ``PGD_*`` settings, plus an embedded
    stack kept under ``home`` (SQLite database and broker, data, work, weights)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGD_")}
    env.update(
        PGD_DATABASE_URL=f"sqlite:///{home / 'pgd.db'}",
        PGD_BROKER_URL=f"sqla+sqlite:///{home / 'broker.db'}",
        PGD_DATA_ROOT=str(home / "data"),
        PGD_WORK_ROOT=str(home / "work"),
        PGD_WEIGHTS_ROOT=str(home / "weights"),
    )
    return env


def worker_command(queues: str, concurrency: int, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app:celery_app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        "prefork",
        "--hostname",
        name,
        "--loglevel",
        "INFO",
    ]


def start_worker(
    settings: Settings, log_path: Path, *, queues: str | None = None, concurrency: int = 1
) -> subprocess.Popen[bytes]:
    """One Celery worker process (its own process group) logging to ``log_path``; by
    default it serves every job this machine can host (pgd_service.queue.local_queues)."""
    if queues is None:
        queues = ",".join(local_queues())
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per worker: Celery nodes with one name would share remote control.
    name = f"pgd-{os.getpid()}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            worker_command(queues, concurrency, name),
            env=settings_env(settings),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Warm shutdown (a running job is re-queued by the reaper and resumes), then kill."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgd up",
        description="start the API and one Celery worker (SQLite and a server-less broker "
        "unless PGD_DATABASE_URL / PGD_BROKER_URL say otherwise)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--concurrency", type=int, default=1, help="worker processes (jobs at once)")
    p.add_argument("--token-file", type=Path, help="also write the admin token to this file")
    return p


def up(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    for folder in (settings.data_root, settings.work_root, settings.weights_root):
        folder.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    from api.auth import store_token

    token = store_token(settings.database_url, owner="admin", is_admin=True)
    if args.token_file:
        args.token_file.write_text(token + "\n")
        args.token_file.chmod(0o600)
    log_path = settings.work_root / "worker.log"
    worker = start_worker(settings, log_path, concurrency=args.concurrency)

    import uvicorn

    from api.main import create_app

    url = f"http://{args.host}:{args.port}"
    print(f"pgd API:      {url}  (docs: {url}/docs)", flush=True)
    print(f"dashboard:    {url}/ui/  (sign in with the admin token)", flush=True)
    print(f"admin token:  {token}", flush=True)
    print(f"database:     {redacted(settings.database_url)}", flush=True)
    print(f"broker:       {redacted(settings.broker_url)}", flush=True)
    print(f"worker:       pid {worker.pid}, log {log_path}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level="warning")
    )
    try:
        server.run()
    finally:
        stop_worker(worker)
    return 0


def wait_ready(url: str, timeout: float = 60.0) -> None:
    """Block until ``url``/healthz answers (used by scripts around ``pgd up``)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy within {timeout:.0f} s")
        time.sleep(0.3)
