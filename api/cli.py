"""``pgd``: the service's commands in front of pgd_core's command line.

``token``, ``up`` (API + worker on one machine), ``worker`` and ``maintain`` are
handled here because they need the service's database or broker; every other
command goes to :func:`pgd_core.cli.main`, imported lazily so that ``pgd token``
never pays for (or depends on) the library's heavier modules.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from sqlalchemy.exc import SQLAlchemyError

from pgd_service.settings import Settings


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgd token",
        description="manage API tokens directly in the database (on the server; no token "
        "needed). With a token, `pgd tokens` does the same through the API.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", help="create a token and print it (shown only once)")
    p.add_argument("--owner", help="who the token's jobs belong to (default: your user name)")
    p.add_argument("--admin", action="store_true", help="may see, cancel and retry every job")
    p.add_argument("--name", help="what the token is for (shown by `pgd token list`)")
    p.add_argument(
        "--expires-in-days", type=float, default=None, help="refused after this (default: never)"
    )
    p = sub.add_parser("list", help="every token (never its secret)")
    p.add_argument("--all", action="store_true", help="also revoked tokens")
    p = sub.add_parser("revoke", help="revoke a token by its id")
    p.add_argument("token_id", type=int)
    return parser


def _settings_or_none() -> Settings | None:
    try:
        return Settings()
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return None


def _db_error(database_url: str, exc: SQLAlchemyError) -> int:
    from sqlalchemy.engine import make_url

    where = make_url(database_url).render_as_string(hide_password=True)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    print(
        f"error: cannot use the tokens in {where}: {reason}\n"
        "(is the database reachable and migrated? run `alembic upgrade head`)",
        file=sys.stderr,
    )
    return 2


def _token_list(with_revoked: bool) -> int:
    from sqlalchemy import select

    from api.services.tokens import token_state
    from pgd_service.db.models import ApiToken
    from pgd_service.db.session import make_engine, make_session_factory

    settings = _settings_or_none()
    if settings is None:
        return 2
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            query = select(ApiToken).order_by(ApiToken.id)
            if not with_revoked:
                query = query.where(ApiToken.revoked_at.is_(None))
            rows = session.scalars(query).all()
    except SQLAlchemyError as exc:
        return _db_error(settings.database_url, exc)
    finally:
        engine.dispose()

    def when(value: object) -> str:
        return "-" if value is None else f"{value:%Y-%m-%d %H:%M}"

    print(f"{'id':>5}  {'owner':<20} {'name':<16} admin  {'last used':<16} {'expires':<16} state")
    for t in rows:
        state = token_state(t)
        expires = when(t.expires_at) if t.expires_at else "never"
        print(
            f"{t.id:>5}  {t.owner:<20} {t.name or '':<16} {'yes' if t.is_admin else '':<5}  "
            f"{when(t.last_used_at):<16} {expires:<16} {state}"
        )
    return 0


def _token_revoke(token_id: int) -> int:
    from pgd_service.db.models import ApiToken
    from pgd_service.db.session import make_engine, make_session_factory
    from pgd_service.db.types import utcnow

    settings = _settings_or_none()
    if settings is None:
        return 2
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            row = session.get(ApiToken, token_id) if 0 < token_id < 2**63 else None
            if row is None:
                print(f"error: no token {token_id} (see `pgd token list`)", file=sys.stderr)
                return 6
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.commit()
            print(f"token {row.id} ({row.owner}) revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S}")
    except SQLAlchemyError as exc:
        return _db_error(settings.database_url, exc)
    finally:
        engine.dispose()
    return 0


def _token_create(owner: str, is_admin: bool, name: str | None, days: float | None) -> int:
    from datetime import timedelta

    from api.auth import store_token
    from pgd_service.db.types import utcnow

    settings = _settings_or_none()
    if settings is None:
        return 2
    expires_at = None if days is None else utcnow() + timedelta(days=days)
    try:
        token = store_token(
            settings.database_url, owner=owner, is_admin=is_admin, name=name, expires_at=expires_at
        )
    except SQLAlchemyError as exc:
        return _db_error(settings.database_url, exc)
    # Only the token on stdout, so that `TOKEN=$(pgd token create)` works.
    print(token)
    return 0


def _token(argv: list[str]) -> int:
    args = _token_parser().parse_args(argv)
    if args.action == "list":
        return _token_list(args.all)
    if args.action == "revoke":
        return _token_revoke(args.token_id)
    owner = args.owner if args.owner is not None else getpass.getuser()
    if not owner.strip() or len(owner) > 128:
        print("error: --owner must be 1 to 128 characters", file=sys.stderr)
        return 2
    if args.name is not None and (not args.name.strip() or len(args.name) > 128):
        print("error: --name must be 1 to 128 characters", file=sys.stderr)
        return 2
    days = args.expires_in_days
    if days is not None and not 0 < days <= 366:
        print("error: --expires-in-days must be above 0 and at most 366", file=sys.stderr)
        return 2
    return _token_create(owner, args.admin, args.name, days)


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pgd worker",
        description="run a Celery worker with the service's settings. Without --queues it "
        "serves every job size its machine can host: gpu .. gpu-xN for N GPUs (detected, "
        "or --gpus), cpu .. cpu-xM for jobs of up to M gloo processes (--cpu-processes).",
    )
    parser.add_argument(
        "--queues",
        default=None,
        help="comma-separated, instead of the detected set: "
        "gpu, cpu, gpu-x2 .. gpu-x8, cpu-x2 .. cpu-x8",
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="GPUs this worker offers (default: detected)"
    )
    parser.add_argument(
        "--cpu-processes",
        type=int,
        default=None,
        help="most processes of one CPU job (default: the CPU count, at most 8; 0: no CPU jobs)",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="jobs at once")
    parser.add_argument("--hostname", default=None, help="Celery node name")
    args = parser.parse_args(argv)
    import os
    import socket

    from api.embedded import worker_command
    from pgd_service.queue import MAX_PROCESSES, detect_gpus, parse_queues, worker_queues

    for flag, value in (("--gpus", args.gpus), ("--cpu-processes", args.cpu_processes)):
        if value is not None and not 0 <= value <= 64:
            print(f"error: {flag} must be between 0 and 64, got {value}", file=sys.stderr)
            return 2
    try:
        if args.queues is not None:
            queues = parse_queues(args.queues)
        else:
            gpus = detect_gpus() if args.gpus is None else args.gpus
            cpus = (
                min(os.cpu_count() or 1, MAX_PROCESSES)
                if args.cpu_processes is None
                else args.cpu_processes
            )
            queues = worker_queues(gpus, cpus)
            if gpus == 0 and args.gpus is None:
                print(
                    "pgd worker: no GPU found, so no gpu queue: jobs of device 'cuda' wait for "
                    "a GPU worker (--gpus 1 runs them on this machine's CPU instead)",
                    file=sys.stderr,
                )
    except ValueError as exc:
        print(f"error: --queues: {exc}", file=sys.stderr)
        return 2
    if not queues:
        print(
            "error: this worker would serve no queue (no GPU and --cpu-processes 0)",
            file=sys.stderr,
        )
        return 2
    print(f"pgd worker: queues {','.join(queues)}", file=sys.stderr, flush=True)
    name = args.hostname or f"pgd-{os.getpid()}@{socket.gethostname()}"
    command = worker_command(",".join(queues), args.concurrency, name)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


def _maintain(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pgd maintain",
        description="run the re-sender and the reaper (also run inside every API process)",
    )
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    import time

    from pgd_service.db.session import make_engine, make_session_factory
    from pgd_service.maintenance import maintain

    settings = Settings()
    factory = make_session_factory(make_engine(settings.database_url))
    while True:
        report = maintain(factory, settings)
        print(
            f"resent {len(report.resent)}, requeued {len(report.requeued)}, "
            f"worker_lost {len(report.lost)}, cancelled {len(report.cancelled)}, "
            f"revoked {len(report.revoked)}, students released {len(report.released)}, "
            f"students failed with their teacher {len(report.teacher_failed)}",
            flush=True,
        )
        if args.once:
            return 0
        time.sleep(settings.maintenance_interval_s)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from pgd_client import cli as client_cli

    if os.environ.get("_PGD_COMPLETE"):  # shell completion asks the client commands
        return client_cli.main(argv)
    if (
        argv[:1] == ["study"]
        and len(argv) > 1
        and argv[1].startswith("-")
        and argv[1]
        not in (
            "-h",
            "--help",
        )
    ):
        argv.insert(1, "run")  # `pgd study --detector ...`: the runner, as before `study submit`
    if argv and (
        argv[0] in client_cli.COMMANDS
        or argv[0] in ("-h", "--help")
        or argv[0].split("=")[0] in ("--url", "--token")
    ):
        return client_cli.main(argv)
    if argv and argv[0] == "token":
        return _token(argv[1:])
    if argv and argv[0] == "up":
        from api.embedded import up

        return up(argv[1:])
    if argv and argv[0] == "demo":
        from api.demo import main as demo

        return demo(argv[1:])
    if argv and argv[0] == "worker":
        return _worker(argv[1:])
    if argv and argv[0] == "maintain":
        return _maintain(argv[1:])
    from pgd_core import cli

    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
