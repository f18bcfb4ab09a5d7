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
    parser = argparse.ArgumentParser(prog="pgd token", description="manage API tokens")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", help="create a token and print it (shown only once)")
    p.add_argument("--owner", help="who the token's jobs belong to (default: your user name)")
    p.add_argument("--admin", action="store_true", help="may see, cancel and retry every job")
    return parser


def _token_create(owner: str, is_admin: bool) -> int:
    from sqlalchemy.engine import make_url

    from api.auth import store_token

    try:
        settings = Settings()
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    try:
        token = store_token(settings.database_url, owner=owner, is_admin=is_admin)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(
            f"error: cannot store the token in {where}: {reason}\n"
            "(is the database reachable and migrated? run `alembic upgrade head`)",
            file=sys.stderr,
        )
        return 2
    # Only the token on stdout, so that `TOKEN=$(pgd token create)` works.
    print(token)
    return 0


def _token(argv: list[str]) -> int:
    args = _token_parser().parse_args(argv)
    owner = args.owner if args.owner is not None else getpass.getuser()
    if not owner.strip() or len(owner) > 128:
        print("error: --owner must be 1 to 128 characters", file=sys.stderr)
        return 2
    return _token_create(owner, args.admin)


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pgd worker", description="run a Celery worker with the service's settings"
    )
    parser.add_argument("--queues", default="gpu,cpu", help="comma-separated: gpu, cpu")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs at once")
    parser.add_argument("--hostname", default=None, help="Celery node name")
    args = parser.parse_args(argv)
    unknown = set(args.queues.split(",")) - {"gpu", "cpu"}
    if unknown:
        print(f"error: --queues: unknown queue(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    import os
    import socket

    from api.embedded import worker_command

    name = args.hostname or f"pgd-{os.getpid()}@{socket.gethostname()}"
    command = worker_command(args.queues, args.concurrency, name)
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
    if argv and argv[0] == "study":
        from api.study import main as study

        return study(argv[1:])
    if argv and argv[0] == "worker":
        return _worker(argv[1:])
    if argv and argv[0] == "maintain":
        return _maintain(argv[1:])
    from pgd_core import cli

    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
