"""``pgd``: the service's commands (``pgd token ...``) in front of pgd_core's command line.

``token`` is handled here because it needs the service's database; every other
command goes to :func:`pgd_core.cli.main`, imported lazily so that ``pgd token``
never pays for (or depends on) the library's heavier modules.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from sqlalchemy.exc import SQLAlchemyError

from api.settings import Settings


def _token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgd token", description="manage API tokens")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", help="create a token and print it (shown only once)")
    p.add_argument("--owner", help="who the token's jobs belong to (default: your user name)")
    p.add_argument("--admin", action="store_true", help="may see, cancel and retry every job")
    return parser


def _token_create(owner: str, is_admin: bool) -> int:
    from api.auth import create_token
    from api.db.session import make_engine, make_session_factory

    try:
        settings = Settings()
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        with make_session_factory(engine)() as session:
            token = create_token(db_session=session, owner=owner, is_admin=is_admin)
            session.commit()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(
            f"error: cannot store the token in {where}: {reason}\n"
            "(is the database reachable and migrated? run `alembic upgrade head`)",
            file=sys.stderr,
        )
        return 2
    finally:
        engine.dispose()
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "token":
        return _token(argv[1:])
    from pgd_core import cli

    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
