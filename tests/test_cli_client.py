"""The ``pgd`` client commands as a user runs them: a real API process, the
commands in subprocesses (``watch`` and ``login`` in a pseudo-terminal through
pexpect), every error path one clear line with its exit code, and what they print
checked against the database."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from db_helpers import pg_schema_url
from sqlalchemy import select
from ui_helpers import LiveApi, finish, free_port, live_api, measured, report, start

from pgd_client import Client
from pgd_core.presets import get_preset
from pgd_service.db.models import EvalResult, Job

PGD = str(Path(sys.executable).with_name("pgd"))


# PostgreSQL + Redis doubles the module's minutes: in the slow pass (make test-all).
@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    """The API on the embedded default (SQLite, the SQL broker), then on PostgreSQL
    with Redis as the broker."""
    root = tmp_path_factory.mktemp(f"cli-{request.param}")
    if request.param == "sqlite":
        with live_api(root) as api:
            yield api
    else:
        for url in pg_schema_url():
            with live_api(root, url, "redis://127.0.0.1:6379/13") as api:
                yield api


@pytest.fixture(scope="module")
def token(live: LiveApi) -> str:
    return live.token("dev")


@pytest.fixture
def env(live: LiveApi, token: str, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PGD_")}
    return clean | {
        "PGD_URL": live.url,
        "PGD_TOKEN": token,
        "PGD_CONFIG": str(tmp_path / "client.json"),
        "COLUMNS": "160",
    }


def pgd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGD, *args], env=env, capture_output=True, text=True, timeout=60)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def queued(live: LiveApi, token: str, seed: int) -> str:
    with Client(live.url, token) as c:
        return c.submit(get_preset("tiny-fcos-student").model_dump(mode="json") | {"seed": seed}).id


# -- errors --------------------------------------------------------------------------------


def test_error_paths_print_one_line_and_their_exit_code(
    env: dict[str, str], live: LiveApi, token: str
):
    bad = pgd(env | {"PGD_TOKEN": "pgd_0_nope"}, "jobs")
    assert bad.returncode == 5
    assert (
        one_error_line(bad)
        == "error: invalid or revoked token (check PGD_TOKEN or run `pgd login`)"
    )

    unknown = pgd(env, "submit", "no-such-preset")
    assert unknown.returncode == 2
    assert one_error_line(unknown).startswith(
        "error: no preset 'no-such-preset'; known: coco-atss-pgd"
    )

    invalid = pgd(env, "submit", "tiny-fcos-student", "--set", "schedule.lr=-1")
    assert invalid.returncode == 2
    assert "schedule.lr: Input should be greater than 0" in one_error_line(invalid)

    down = pgd(env | {"PGD_URL": f"http://127.0.0.1:{free_port()}"}, "jobs")
    assert down.returncode == 4
    assert "is unreachable" in one_error_line(down)

    no_token = pgd({k: v for k, v in env.items() if k != "PGD_TOKEN"}, "jobs")
    assert no_token.returncode == 5
    assert (
        one_error_line(no_token)
        == "error: no token: set PGD_TOKEN, pass --token, or run `pgd login`"
    )

    missing = pgd(env, "show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 6
    job_id = queued(live, token, 300)
    assert pgd(env, "cancel", job_id).returncode == 0
    again = pgd(env, "cancel", job_id)
    assert again.returncode == 7
    assert one_error_line(again) == f"error: job {job_id} is already cancelled"

    malformed = pgd(env, "submit", "tiny-fcos-student", "--set", "noequals")
    assert malformed.returncode == 2 and "expected key=value" in one_error_line(malformed)


# -- reads for scripts ----------------------------------------------------------------------


def test_json_and_csv_outputs_are_the_apis_data(env: dict[str, str], live: LiveApi, token: str):
    job_id = queued(live, token, 301)
    start(live, job_id)
    finish(live, job_id, metrics={"ap": 31.125, "ap50": 48.5})
    listed = json.loads(pgd(env, "jobs", "--json", "--limit", "5").stdout)
    with live.session_factory() as session:
        newest = session.scalars(
            select(Job.id).where(Job.owner == "dev").order_by(Job.seq.desc()).limit(5)
        ).all()
    assert [j["id"] for j in listed["items"]] == list(newest)
    shown = json.loads(pgd(env, "show", job_id, "--json").stdout)
    with live.session_factory() as session:
        stored = session.scalar(select(EvalResult.ap).where(EvalResult.job_id == job_id))
    assert shown["job"]["state"] == "succeeded" and shown["result"]["ap"] == stored == 31.125
    text = pgd(env, "show", job_id).stdout
    assert "result: AP 31.1  AP50 48.5" in text
    csv = subprocess.run([PGD, "results", "--csv"], env=env, capture_output=True, timeout=60)
    with Client(live.url, env["PGD_TOKEN"]) as c:
        assert csv.stdout == c.results_csv().encode()  # byte for byte (CRLF rows)
    table = pgd(env, "results").stdout
    assert job_id[:8] in table and "31.1" in table


# -- watch in a terminal ----------------------------------------------------------------------


def spawn(env: dict[str, str], *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        PGD, list(args), env=env, encoding="utf-8", timeout=30, dimensions=(40, 160)
    )


def test_watch_shows_progress_and_losses_then_the_result(
    env: dict[str, str], live: LiveApi, token: str
):
    job_id = queued(live, token, 302)
    term = spawn(env, "watch", job_id)
    term.expect("queued")
    start(live, job_id)
    report(live, job_id, {"loss": [1.5, 1.2, 0.9], "lr": [0.01] * 3}, 0.5)
    term.expect(r"50%")
    term.expect(r"it 3")
    term.expect(r"loss 0\.900")
    finish(live, job_id, metrics={"ap": 33.25, "ap50": 51.0})
    term.expect(f"job {job_id} succeeded")
    term.expect(r"result: AP 33\.2  AP50 51\.0")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0


def test_watch_exit_codes_follow_how_the_job_ended(env: dict[str, str], live: LiveApi, token: str):
    failed = queued(live, token, 303)
    start(live, failed)
    finish(live, failed, "failed", reason="diverged", message="loss is NaN at iteration 7")
    result = pgd(env, "watch", failed)
    assert result.returncode == 1
    assert f"job {failed} failed (diverged: loss is NaN at iteration 7)" in result.stdout
    cancelled = queued(live, token, 304)
    assert pgd(env, "cancel", cancelled).returncode == 0
    assert pgd(env, "watch", cancelled).returncode == 3


def test_ctrl_c_stops_watching_not_the_job(env: dict[str, str], live: LiveApi, token: str):
    job_id = queued(live, token, 305)
    start(live, job_id)
    term = spawn(env, "watch", job_id)
    term.expect("running")
    term.sendintr()
    term.expect(f"stopped watching; job {job_id} goes on")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 130
    with live.session_factory() as session:
        assert session.scalar(select(Job.state).where(Job.id == job_id)) == "running"


def test_login_saves_a_private_config_the_commands_then_use(
    env: dict[str, str], live: LiveApi, token: str
):
    bare = {k: v for k, v in env.items() if k not in ("PGD_URL", "PGD_TOKEN")}
    term = spawn(bare, "login", "--url", live.url)
    term.expect("Token: ")
    term.sendline(token)
    term.expect(f"Signed in to {live.url} as dev")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0
    path = Path(env["PGD_CONFIG"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": live.url, "token": token}
    listed = pgd(bare, "jobs", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["items"]
    refused = spawn(bare, "login", "--url", live.url)
    refused.expect("Token: ")
    refused.sendline("pgd_0_wrong")
    refused.expect(r"error:(\x1b\[0m)? invalid or revoked token")
    refused.expect(pexpect.EOF)
    refused.close()
    assert refused.exitstatus == 5
    assert json.loads(path.read_text())["token"] == token  # unchanged


def test_every_command_has_help_with_examples(env: dict[str, str]):
    from pgd_client.cli import COMMANDS

    for command in sorted(COMMANDS):
        result = pgd(env, command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "Examples:" in result.stdout, command
    script = pgd(env, "completion", "bash")
    assert script.returncode == 0 and "_PGD_COMPLETE" in script.stdout


def test_sweep_queues_the_grid_and_follows_it_to_its_outcome(
    env: dict[str, str], live: LiveApi, token: str
):
    import threading

    result = pgd(env, "sweep", "tiny-fcos-student", "--grid", "seed=400,401", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    with live.session_factory() as session:
        seeds = session.scalars(select(Job.seed).where(Job.sweep_id == created["id"])).all()
    assert sorted(seeds) == [400, 401] and len(created["jobs"]) == 2

    bad = pgd(env, "sweep", "tiny-fcos-student", "--grid", "schedule.nope=1,2")
    assert bad.returncode == 2
    assert "schedule.nope" in one_error_line(bad)

    # --follow ends with the sweep: one job fails, so the exit code says so.
    followed = subprocess.Popen(
        [PGD, "sweep", "tiny-fcos-student", "--grid", "seed=402,403", "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert followed.stdout is not None
    first = followed.stdout.readline()
    sweep_id = first.split()[1].rstrip(":")
    with live.session_factory() as session:
        jobs = session.scalars(
            select(Job.id).where(Job.sweep_id == sweep_id).order_by(Job.seq)
        ).all()

    def work() -> None:
        for job_id, outcome in zip(jobs, ("succeeded", "failed"), strict=True):
            start(live, job_id)
            finish(live, job_id, outcome, metrics={"ap": 20.0} if outcome == "succeeded" else None)

    threading.Thread(target=work).start()
    rest, _ = followed.communicate(timeout=60)
    assert followed.returncode == 1
    assert f"sweep {sweep_id}: 1 succeeded, 1 failed" in rest


# -- studies ------------------------------------------------------------------------------


def table_row(text: str, *first: str) -> list[str]:
    """The cells of the row of a rich table (box characters dropped) that starts with
    ``first``."""
    for line in text.splitlines():
        cells = [c for c in line.replace("│", " ").split() if c]
        if cells[: len(first)] == list(first):
            return cells
    raise AssertionError(f"no row starting {first} in:\n{text}")


def test_study_submit_follows_to_the_table_of_its_numbers(
    env: dict[str, str], live: LiveApi, token: str
):
    import threading

    with Client(live.url, token) as c:
        teacher = c.submit(get_preset("tiny-fcos-teacher").model_dump(mode="json")).id
    start(live, teacher)
    finish(live, teacher, metrics={"ap": 30.0})
    followed = subprocess.Popen(
        [
            PGD,
            "study",
            "submit",
            "--teacher-ref",
            teacher,
            "--student",
            "tiny-fcos-pgd",
            "--methods",
            "none,pgd",
            "--seeds",
            "0,1",
            "--name",
            "cli study",
            "--follow",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert followed.stdout is not None
    first = followed.stdout.readline()
    assert first.endswith(": 4 jobs queued\n"), first
    study_id = first.split()[1].rstrip(":")
    with live.session_factory() as session:
        students = session.execute(
            select(Job.id, Job.method, Job.seed).where(Job.study_id == study_id)
        ).all()
    ap = {("none", 0): 20.0, ("none", 1): 22.0, ("pgd", 0): 23.0, ("pgd", 1): 26.0}
    assert sorted((m, s) for _, m, s in students) == sorted(ap)

    def work() -> None:
        for job_id, method, seed in students:
            start(live, job_id)
            finish(live, job_id, metrics={"ap": ap[(method, seed)]})

    threading.Thread(target=work).start()
    rest, errors = followed.communicate(timeout=60)
    assert followed.returncode == 0, errors
    assert f"study {study_id}: 4 succeeded" in rest
    # The table, computed here from the four numbers: pgd 24.5 +- 2.1 (sd of 23, 26),
    # paired deltas 3 and 4 (mean +3.5), gap recovered (24.5 - 21) / (30 - 21).
    pgd_row = table_row(rest, "student", "pgd")
    assert pgd_row[2:5] == ["2", "24.5", "2.1"], pgd_row
    assert pgd_row[-2:] == ["+3.5", f"{(24.5 - 21) / (30 - 21):.2f}"], pgd_row
    none_row = table_row(rest, "student", "none")
    assert none_row[2:5] == ["2", "21.0", "1.4"], none_row

    shown = pgd(env, "study", "show", study_id, "--json")
    assert shown.returncode == 0
    data = json.loads(shown.stdout)
    assert data["done"] and sorted(j["id"] for j in data["jobs"] if j["role"] == "student") == (
        sorted(j for j, _, _ in students)
    )
    table = pgd(env, "study", "show", study_id).stdout
    assert "24.5" in table and "cli study" in table
    listed = json.loads(pgd(env, "study", "list", "--json").stdout)
    assert listed["items"][0]["id"] == study_id

    # errors: one line each
    both = pgd(env, "study", "submit", "--student", "tiny-fcos-pgd")
    assert both.returncode == 2
    assert one_error_line(both) == "error: give exactly one of --teacher and --teacher-ref"
    bad = pgd(
        env,
        "study",
        "submit",
        "--teacher-ref",
        teacher,
        "--student",
        "tiny-fcos-pgd",
        "--methods",
        "none,telepathy",
    )
    assert bad.returncode == 2 and "methods" in one_error_line(bad)
    seeds = pgd(
        env,
        "study",
        "submit",
        "--teacher-ref",
        teacher,
        "--student",
        "tiny-fcos-pgd",
        "--seeds",
        "0,x",
    )
    assert seeds.returncode == 2
    assert one_error_line(seeds) == "error: --seeds '0,x': expected a comma-separated list"
    assert pgd(env, "study", "show", "no-such-study").returncode == 6


def test_study_run_is_still_the_embedded_runner(env: dict[str, str]):
    for argv in (["study", "run", "--help"], ["study", "--help"]):
        result = pgd(env, *argv)
        assert result.returncode == 0, result.stderr
    assert "--teacher-iters" in pgd(env, "study", "run", "--help").stdout
    assert "submit" in pgd(env, "study", "--help").stdout
    # The runner's old form (options straight after `study`) still reaches it.
    refused = pgd(env, "study", "--methods", "none,telepathy")
    assert refused.returncode == 2 and "unknown telepathy" in refused.stderr


# -- tokens -------------------------------------------------------------------------------


def test_tokens_create_list_revoke(env: dict[str, str], live: LiveApi, token: str):
    from api.auth import hash_token
    from pgd_service.db.models import ApiToken

    made = pgd(env, "tokens", "create", "--name", "notebook", "--expires-in-days", "7")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert made.stdout == secret + "\n" and secret.startswith("pgd_")  # only the token on stdout
    with live.session_factory() as session:
        row = session.scalars(
            select(ApiToken).where(ApiToken.token_hash == hash_token(secret))
        ).one()
    assert (row.owner, row.name) == ("dev", "notebook")
    assert f"token {row.id} for dev, expires" in made.stderr
    as_new = env | {"PGD_TOKEN": secret}
    assert pgd(as_new, "jobs", "--json").returncode == 0

    listed = json.loads(pgd(env, "tokens", "list", "--json").stdout)
    ids = {t["id"]: t for t in listed}
    assert ids[row.id]["name"] == "notebook" and not ids[row.id]["current"]
    assert [t["current"] for t in listed].count(True) == 1
    assert all("token" not in t for t in listed)
    table = pgd(env, "tokens", "list").stdout
    assert "notebook" in table and "this one" in table

    revoked = pgd(env, "tokens", "revoke", str(row.id))
    assert revoked.returncode == 0 and f"token {row.id} (dev) revoked at" in revoked.stdout
    refused = pgd(as_new, "jobs")
    assert refused.returncode == 5
    assert one_error_line(refused).startswith("error: invalid or revoked token")
    assert row.id not in {t["id"] for t in json.loads(pgd(env, "tokens", "list", "--json").stdout)}

    other = pgd(env, "tokens", "create", "--owner", "somebody")
    assert other.returncode == 5
    assert one_error_line(other) == "error: only an admin may create a token for another owner"
    missing = pgd(env, "tokens", "revoke", "999999")
    assert missing.returncode == 6 and one_error_line(missing) == "error: token 999999 not found"
    zero = pgd(env, "tokens", "create", "--expires-in-days", "0")
    assert zero.returncode == 2 and "--expires-in-days" in zero.stderr


# -- costs ----------------------------------------------------------------------------------------


def test_results_show_costs_and_pareto_prints_the_front(
    env: dict[str, str], live: LiveApi, token: str
):
    base = get_preset("tiny-fcos-teacher").model_dump(mode="json")
    with Client(live.url, token) as c:
        teacher = c.submit(base).id
    start(live, teacher)
    finish(live, teacher, metrics={"ap": 40.0}, cost=measured(2_000_000, 1.5, 30.0))
    students = {}
    for method, ap, cost in (
        ("pgd", 36.0, measured(1_000_000, 0.6, 12.0)),
        ("none", 33.0, measured(1_000_000, 0.6, 12.5)),
    ):
        with Client(live.url, token) as c:
            spec = get_preset("tiny-fcos-pgd").model_dump(mode="json")
            students[method] = c.submit(spec | {"method": method, "teacher_ref": teacher}).id
        start(live, students[method])
        finish(live, students[method], metrics={"ap": ap}, cost=cost)
    with live.session_factory() as session:
        rows = {
            r.job_id: r
            for r in session.execute(
                select(
                    EvalResult.job_id, EvalResult.ap, EvalResult.flops, EvalResult.latency_ms
                ).where(EvalResult.job_id.in_([teacher, *students.values()]))
            )
        }
    wide = env | {"COLUMNS": "240"}  # one table row per line
    shown = pgd(wide, "results", "--method", "pgd", "--sort", "flops", "--limit", "500")
    assert shown.returncode == 0, shown.stderr
    row = table_row(shown.stdout, students["pgd"][:8])
    s, t = rows[students["pgd"]], rows[teacher]
    assert f"{s.flops / 1e9:.2f}" in row and "1.00" in row and "M" in row
    versus = " ".join(row[row.index("ms") + 1 :])
    assert versus == (
        f"{s.flops / t.flops:.2f}x FLOPs, {t.latency_ms / s.latency_ms:.1f}x faster, "
        f"{s.ap - t.ap:+.1f} AP"
    )
    assert "latency: median of batch-1 forwards on cpu (Test CPU)" in shown.stderr

    front = json.loads(
        pgd(env, "pareto", "--detector", "fcos", "--dataset", "shapes", "--json").stdout
    )
    mine = {p["job_id"]: p for p in front["points"] if p["job_id"] in rows}
    assert set(mine) == set(rows)
    # pgd: cheapest and, among the cheapest two, the best; the teacher: the best AP.
    assert mine[students["pgd"]]["on_front"] and mine[teacher]["on_front"]
    assert not mine[students["none"]]["on_front"]
    text = pgd(wide, "pareto", "--detector", "fcos", "--dataset", "shapes")
    assert text.returncode == 0 and students["pgd"][:8] in text.stdout
    assert students["none"][:8] not in text.stdout  # only the front without --all
    assert "on the front (higher AP is better)" in text.stderr
    bad = pgd(env, "pareto", "--detector", "fcos", "--dataset", "shapes", "--metric", "speed")
    assert bad.returncode == 2 and "metric" in one_error_line(bad)
