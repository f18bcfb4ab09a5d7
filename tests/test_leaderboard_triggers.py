"""The leaderboard's cache is only as good as its version triggers: every ``jobs``
column a page reads is either one whose UPDATE raises the version (migration
0004's triggers) or one that is never updated. The columns are read off the
compiled page queries themselves, so a query that starts reading a new column
fails here until the column is listed (and a migration triggers on it)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import Table
from sqlalchemy.sql import visitors
from sqlalchemy.sql.selectable import Alias

from api.services import results
from pgd_service.db.models import Job

ROOT = Path(__file__).resolve().parents[1]


def _migration(name: str) -> Any:
    path = next((ROOT / "migrations" / "versions").glob(f"{name}_*.py"))
    spec = importlib.util.spec_from_file_location(f"migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jobs_columns(statement: Any) -> set[str]:
    """Names of the ``jobs`` columns a statement reads (through any alias)."""
    jobs = Job.__table__
    names = set()
    for element in visitors.iterate(statement):
        table = getattr(element, "table", None)
        if table is None or not hasattr(element, "name"):
            continue
        base = table.element if isinstance(table, Alias) else table
        if isinstance(base, Table) and base is jobs:
            names.add(element.name)
    return names


def _every_page_statement() -> list[Any]:
    every_filter = results.ResultFilters(
        dataset="d", detector="fcos", method="pgd", kind="distill", study="s", owner="o"
    )
    statements = []
    for dialect in ("postgresql", "sqlite"):
        for filters in (results.ResultFilters(), every_filter):
            for key in results.SORT_KEYS:
                statements.append(results.page_statement(dialect, filters, f"-{key}"))
    return statements


def test_the_scan_sees_the_columns_it_should() -> None:
    """The lateral baseline lookup reads spec, state and finished_at of its candidates
    (through an alias): if the scan missed them, the next test would prove nothing."""
    statement = results.page_statement("postgresql", results.ResultFilters(), "-ap")
    assert {"spec", "state", "finished_at", "seq", "teacher_job_id", "owner"} <= _jobs_columns(
        statement
    )


def test_every_column_a_page_reads_raises_the_version_or_never_changes() -> None:
    read: set[str] = set()
    for statement in _every_page_statement():
        read |= _jobs_columns(statement)
    unguarded = read - set(results.TRIGGER_JOB_COLUMNS) - set(results.IMMUTABLE_JOB_COLUMNS)
    assert unguarded == set(), f"add to TRIGGER_JOB_COLUMNS and a trigger migration: {unguarded}"


def test_the_migrations_trigger_on_the_columns_the_code_names() -> None:
    assert tuple(_migration("0004").JOB_COLUMNS) == results.TRIGGER_JOB_COLUMNS


def _written_columns() -> set[str]:
    """The string keys of every dict literal in pgd_service/lifecycle.py's functions
    but ``job_values`` (a new job's columns): the columns its UPDATEs set."""
    tree = ast.parse((ROOT / "pgd_service" / "lifecycle.py").read_text())
    keys = set()
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef) or function.name == "job_values":
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Dict):
                keys |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    return keys


def test_the_immutable_columns_are_never_written_after_creation() -> None:
    """The lifecycle is the only writer of ``jobs`` (tests/test_lifecycle.py): none
    of its UPDATEs sets a column the page treats as immutable."""
    written = _written_columns()
    assert {"state", "attempt", "enqueued_at", "finished_at"} <= written  # the scan works
    assert written & set(results.IMMUTABLE_JOB_COLUMNS) == set()
