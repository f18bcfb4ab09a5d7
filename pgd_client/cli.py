"""``pgd`` client commands: jobs, results and live progress from a terminal.

Configured by ``--url`` / ``--token``, else ``PGD_URL`` / ``PGD_TOKEN``, else the
file ``pgd login`` writes (mode 0600). ``--json`` on every read command prints
the API's data for scripts. Exit codes (also for scripts):

    0 done (a followed job succeeded)     4 the API is unreachable
    1 a followed job failed               5 the token was refused (401 / 403)
    2 bad request (usage, 4xx, 422)       6 not found (404)
    3 a followed job was cancelled        7 refused in the job's state (409)
    130 watching stopped with Ctrl-C (the job goes on)
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from pgd_client.client import Client
from pgd_client.config import load_config, save_config
from pgd_client.errors import PgdError, ProblemError, Unreachable
from pgd_client.models import TERMINAL_STATES, Job, ResultRow

OK, FAILED, BAD_REQUEST, CANCELLED, UNREACHABLE, UNAUTHORIZED, NOT_FOUND, CONFLICT = range(8)
INTERRUPTED = 130
#: Exit code of a followed job's final state.
STATE_EXIT = {"succeeded": OK, "failed": FAILED, "cancelled": CANCELLED}
METRIC_ORDER = ("ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def fail(message: str, code: int) -> NoReturn:
    """One clear line on stderr, then the exit code."""
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise SystemExit(code)


def exit_code(exc: PgdError) -> int:
    if isinstance(exc, Unreachable):
        return UNREACHABLE
    assert isinstance(exc, ProblemError)
    if exc.status in (401, 403):
        return UNAUTHORIZED
    return {404: NOT_FOUND, 409: CONFLICT}.get(exc.status, BAD_REQUEST)


def describe(exc: PgdError) -> str:
    if isinstance(exc, ProblemError) and exc.errors:
        fields = "; ".join(f"{e.get('field') or 'body'}: {e.get('message')}" for e in exc.errors)
        return f"{exc.detail} ({fields})"
    if isinstance(exc, ProblemError) and exc.status == 401:
        return f"{exc.detail} (check PGD_TOKEN or run `pgd login`)"
    if isinstance(exc, ProblemError):
        return exc.detail
    return str(exc)


def _dump(data: Any) -> None:
    """JSON for scripts: models as their API fields."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if hasattr(d, "model_dump") else d for d in data]
    click.echo(json.dumps(data, indent=2, default=str))


class Ctx:
    def __init__(self, url: str | None, token: str | None) -> None:
        self.url = url
        self.token = token

    def client(self) -> Client:
        config = load_config()
        url = self.url or config.get("url") or "http://127.0.0.1:8000"
        token = self.token or config.get("token")
        if not token:
            fail("no token: set PGD_TOKEN, pass --token, or run `pgd login`", UNAUTHORIZED)
        return Client(url, token)


def api_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command, turning the client's errors into one line and an exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PgdError as exc:
            fail(describe(exc), exit_code(exc))

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="PGD_URL", help="The API (default: PGD_URL, then `pgd login`'s).")
@click.option(
    "--token", envvar="PGD_TOKEN", help="An API token (default: PGD_TOKEN, then `pgd login`'s)."
)
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """pgd's client commands (the server's: up, demo, worker, token, maintain)."""
    ctx.obj = Ctx(url, token)


# -- login ------------------------------------------------------------------------------


@cli.command(
    epilog="\b\nExamples:\n  pgd login --url http://gpu-box:8000\n"
    "  PGD_TOKEN=... pgd jobs   # no file needed"
)
@click.option("--url", "login_url", required=True, help="The API's base URL.")
@click.option(
    "--token", "login_token", prompt="Token", hide_input=True, help="The token (prompted, hidden)."
)
@api_call
def login(login_url: str, login_token: str) -> None:
    """Check a token against the API and save both (mode 0600)."""
    with Client(login_url, login_token) as client:
        me = client.me()
    path = save_config(login_url, login_token)
    role = " (admin)" if me.get("is_admin") else ""
    out.print(f"Signed in to {login_url} as {me['owner']}{role}; saved to {path}")


# -- submit -----------------------------------------------------------------------------


def _set(spec: dict[str, Any], assignment: str) -> None:
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        fail(f"--set {assignment!r}: expected key=value, e.g. schedule.lr=0.01", BAD_REQUEST)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    node = spec
    keys = path.split(".")
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


@cli.command(
    epilog="\b\nExamples:\n"
    "  pgd submit tiny-fcos-student --set seed=1 --set schedule.max_iters=200\n"
    "  pgd submit spec.json --follow\n"
    "  pgd submit coco-fcos-pgd --set teacher_ref=<teacher job id> --json"
)
@click.argument("preset_or_file")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field (dotted path; the value is JSON or text).",
)
@click.option("--follow", is_flag=True, help="Watch the job until it ends; exit with its outcome.")
@click.option("--json", "as_json", is_flag=True, help="Print the created job as JSON.")
@click.pass_obj
@api_call
def submit(
    obj: Ctx, preset_or_file: str, sets: tuple[str, ...], follow: bool, as_json: bool
) -> None:
    """Submit a job from a preset (or a JSON spec file) with overrides."""
    client = obj.client()
    spec = _spec_from(client, preset_or_file, sets)
    job = client.submit(spec)
    if as_json:
        _dump(job)
    else:
        out.print(f"submitted {job.id} ({job.kind} {job.detector} {job.method}, {job.state})")
    if follow:
        raise SystemExit(_watch(client, job.id, quiet=as_json))


def _spec_from(client: Client, preset_or_file: str, sets: tuple[str, ...]) -> dict[str, Any]:
    """A preset's spec (or a JSON spec file's) with the ``--set`` overrides applied."""
    path = Path(preset_or_file)
    if path.suffix == ".json" or path.is_file():
        try:
            spec = json.loads(path.read_text())
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}", BAD_REQUEST)
        except ValueError as exc:
            fail(f"{path} is not JSON: {exc}", BAD_REQUEST)
    else:
        try:
            spec = client.preset(preset_or_file)
        except KeyError as exc:
            fail(str(exc.args[0]), BAD_REQUEST)
    for assignment in sets:
        _set(spec, assignment)
    return spec


def _grid(items: tuple[str, ...]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        path, sep, raw = item.partition("=")
        if not sep or not path or not raw:
            fail(f"--grid {item!r}: expected path=v1,v2 (e.g. seed=0,1,2)", BAD_REQUEST)
        values = []
        for part in raw.split(","):
            try:
                values.append(json.loads(part))
            except ValueError:
                values.append(part)
        grid[path] = values
    if not grid:
        fail("give at least one --grid path=v1,v2", BAD_REQUEST)
    return grid


@cli.command(
    epilog="\b\nExamples:\n"
    "  pgd sweep tiny-fcos-pgd --set teacher_ref=<job> --grid distill.alpha=0.002,0.004 "
    "--grid seed=0,1 --follow\n"
    "  pgd sweep spec.json --grid seed=0,1,2 --json"
)
@click.argument("preset_or_file")
@click.option(
    "--grid", "grids", multiple=True, metavar="PATH=V1,V2", help="A field and its values."
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a base field.")
@click.option("--follow", is_flag=True, help="Show progress until every job ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the created sweep as JSON.")
@click.pass_obj
@api_call
def sweep(
    obj: Ctx,
    preset_or_file: str,
    grids: tuple[str, ...],
    sets: tuple[str, ...],
    follow: bool,
    as_json: bool,
) -> None:
    """Submit one job per point of a grid over a spec (every point validated first).
    With --follow, exits 0 if every job succeeded, 1 if any failed, 3 if any was cancelled."""
    client = obj.client()
    grid = _grid(grids)
    created = client.submit_sweep(_spec_from(client, preset_or_file, sets), grid)
    if as_json:
        _dump(created)
    else:
        out.print(f"sweep {created['id']}: {len(created['jobs'])} jobs queued")
    if not follow:
        return
    console = err if as_json else out
    _, code = _follow_many("sweep", created["id"], lambda: client.sweep(created["id"]), console)
    raise SystemExit(code)


def _follow_many(
    label: str, ident: str, poll: Callable[[], dict[str, Any]], console: Console
) -> tuple[dict[str, Any], int]:
    """Poll a sweep or a study (``states``, ``progress``) with a progress bar until
    every job has ended; its last state and the exit code of its outcome: 1 if any
    job failed, 3 if any was cancelled, else 0. Ctrl-C stops following, not the jobs."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console,
        ) as progress:
            task = progress.add_task(label, total=1000, counts="")
            while True:
                state = poll()
                counts = {k: v for k, v in state["states"].items() if v}
                progress.update(
                    task,
                    completed=round(1000 * state["progress"]),
                    counts=", ".join(f"{n} {s}" for s, n in counts.items()),
                )
                if all(s in TERMINAL_STATES for s in counts):
                    break
                time.sleep(2)
    except KeyboardInterrupt:
        console.print(f"stopped following; {label} {ident} goes on")
        raise SystemExit(INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    console.print(f"{label} {ident}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    code = FAILED if "failed" in counts else CANCELLED if "cancelled" in counts else OK
    return state, code


# -- reading ----------------------------------------------------------------------------


def _jobs_table(jobs: list[Job]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for column in ("job", "state", "kind", "detector", "dataset", "method", "progress", "created"):
        table.add_column(column, justify="right" if column == "progress" else "left")
    for j in jobs:
        state = j.state + (f" ({j.reason})" if j.reason else "")
        table.add_row(
            j.id,
            state,
            j.kind,
            j.detector,
            j.dataset,
            j.method,
            f"{100 * j.progress:.0f} %",
            j.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table


@cli.command(
    epilog="\b\nExamples:\n  pgd jobs --state running\n  pgd jobs --method pgd --limit 100 --json"
)
@click.option("--state")
@click.option("--kind")
@click.option("--detector")
@click.option("--dataset")
@click.option("--method")
@click.option("--sweep", help="A sweep's id.")
@click.option("--study", help="A study's id.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def jobs(obj: Ctx, limit: int, as_json: bool, **filters: str | None) -> None:
    """List jobs, newest first."""
    page = obj.client().jobs(**filters, limit=limit)
    if as_json:
        _dump(page)
        return
    if not page.items:
        out.print("no jobs" + (" match these filters" if any(filters.values()) else " yet"))
        return
    out.print(_jobs_table(page.items))
    if page.next_cursor:
        out.print(f"[dim]more: --limit {min(200, limit * 2)}[/]")


def _metrics_line(row: Any) -> str:
    values = [(m, getattr(row, m)) for m in METRIC_ORDER if getattr(row, m, None) is not None]
    return "  ".join(f"{m.upper()} {'n/a' if v == -1 else f'{v:.1f}'}" for m, v in values)


@cli.command(
    epilog="\b\nExamples:\n  pgd show 3f2c...\n  pgd show 3f2c... --json | jq .spec.schedule"
)
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def show(obj: Ctx, job_id: str, as_json: bool) -> None:
    """One job: its state, timestamps and result."""
    client = obj.client()
    job = client.job(job_id)
    result = client.result(job_id)
    if as_json:
        _dump(
            {
                "job": job.model_dump(mode="json"),
                "result": result.model_dump(mode="json") if result else None,
            }
        )
        return
    out.print(f"[bold]{job.id}[/]  {job.state}" + (f" ({job.reason})" if job.reason else ""))
    out.print(
        f"{job.kind} {job.detector} {job.method} on {job.dataset}, "
        f"owner {job.owner}, attempt {job.attempt}"
    )
    out.print(
        f"progress {100 * job.progress:.0f} %; created {job.created_at:%Y-%m-%d %H:%M:%S}"
        + (f", finished {job.finished_at:%Y-%m-%d %H:%M:%S}" if job.finished_at else "")
    )
    if job.message:
        out.print(f"message: {job.message}")
    if result is not None:
        out.print(f"result: {_metrics_line(result)}")
        if result.teacher_ap is not None and result.baseline_ap is not None:
            out.print(
                f"teacher AP {result.teacher_ap:.1f}, no-KD baseline AP {result.baseline_ap:.1f}, "
                f"delta {result.delta_ap_vs_baseline:+.1f}"
            )


# -- watch ------------------------------------------------------------------------------


def _watch(client: Client, job_id: str, *, quiet: bool = False) -> int:
    """Follow a job's events with a progress bar; the exit code of how it ended."""
    job = client.job(job_id)
    losses: dict[str, float] = {}
    iteration = 0
    console = err if quiet else out
    columns = (
        TextColumn("[bold]{task.fields[state]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("it {task.fields[iteration]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
    )
    interrupted = False
    previous = signal.getsignal(signal.SIGINT)

    def stop(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            # Progress in thousandths (rich counts in whole steps).
            task = progress.add_task(
                "job",
                total=1000,
                completed=round(1000 * job.progress),
                state=job.state,
                iteration=0,
                losses="",
            )
            if not job.finished:
                seeded = False
                for event in client.events(job_id):
                    if not seeded:
                        # The stream is open: points stored before it are at /metrics.
                        seeded = True
                        for name, points in client.metrics(job_id).items():
                            if points:
                                iteration = max(iteration, points[-1].step)
                                if "loss" in name:
                                    losses[name] = points[-1].value
                    if event.event == "metric":
                        iteration = max(iteration, int(event.data["step"]))
                        if "loss" in event.data["name"]:
                            losses[event.data["name"]] = float(event.data["value"])
                    else:
                        progress.update(
                            task,
                            completed=round(1000 * float(event.data.get("progress", 0.0))),
                            state=event.data["state"],
                        )
                    shown = "  ".join(f"{k} {v:.3f}" for k, v in sorted(losses.items())[:3])
                    progress.update(task, iteration=iteration, losses=shown)
            job = client.job(job_id)
            progress.update(task, completed=round(1000 * job.progress), state=job.state)
    except KeyboardInterrupt:
        if interrupted:
            console.print(f"stopped watching; job {job_id} goes on (pgd cancel {job_id} stops it)")
            return INTERRUPTED
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    line = f"job {job.id} {job.state}" + (f" ({job.reason}: {job.message})" if job.reason else "")
    console.print(line)
    result = client.result(job_id) if job.state == "succeeded" else None
    if result is not None:
        console.print(f"result: {_metrics_line(result)}")
    return STATE_EXIT.get(job.state, OK)


@cli.command(epilog="\b\nExamples:\n  pgd watch 3f2c...   # Ctrl-C stops watching, not the job")
@click.argument("job_id")
@click.pass_obj
@api_call
def watch(obj: Ctx, job_id: str) -> None:
    """Follow a job live: progress, iteration, ETA and its latest losses; then its result.
    Exits 0 if it succeeded, 1 failed, 3 cancelled."""
    raise SystemExit(_watch(obj.client(), job_id))


# -- actions ----------------------------------------------------------------------------


@cli.command(epilog="\b\nExamples:\n  pgd cancel 3f2c...")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def cancel(obj: Ctx, job_id: str, as_json: bool) -> None:
    """Cancel a waiting or queued job, or ask a running one to stop (exit 7 if it has ended)."""
    job = obj.client().cancel(job_id)
    _dump(job) if as_json else out.print(f"job {job.id} {job.state}")


@cli.command(epilog="\b\nExamples:\n  pgd retry 3f2c... && pgd watch 3f2c...")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def retry(obj: Ctx, job_id: str, as_json: bool) -> None:
    """Run a failed or cancelled job again from its last checkpoint (exit 7 otherwise)."""
    job = obj.client().retry(job_id)
    _dump(job) if as_json else out.print(f"job {job.id} {job.state} (attempt {job.attempt})")


def _follow_log(client: Client, job_id: str, tail: int) -> Iterator[str]:
    """New log lines as they come, until the job has finished."""
    shown: list[str] = []
    while True:
        try:
            lines = client.logs(job_id, tail=10_000).splitlines()
        except ProblemError as exc:
            if exc.status != 404:
                raise
            lines = []
        new = lines[len(shown) :] if lines[: len(shown)] == shown else lines[-tail:]
        yield from new
        shown = lines
        if client.job(job_id).finished:
            return
        time.sleep(2)


@cli.command(epilog="\b\nExamples:\n  pgd logs 3f2c... --tail 50\n  pgd logs 3f2c... -f")
@click.argument("job_id")
@click.option("--tail", default=200, show_default=True, type=click.IntRange(1, 10_000))
@click.option("-f", "--follow", is_flag=True, help="Print new lines until the job ends.")
@click.pass_obj
@api_call
def logs(obj: Ctx, job_id: str, tail: int, follow: bool) -> None:
    """The end of a job's log."""
    client = obj.client()
    if follow:
        for line in _follow_log(client, job_id, tail):
            click.echo(line)
        return
    click.echo(client.logs(job_id, tail=tail), nl=False)


@cli.command(epilog="\b\nExamples:\n  pgd artifacts 3f2c... --json")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def artifacts(obj: Ctx, job_id: str, as_json: bool) -> None:
    """The files a job produced (checkpoint, plots, log, config)."""
    items = obj.client().artifacts(job_id)
    if as_json:
        _dump(items)
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("name", "kind", "size"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for a in items:
        table.add_row(a.name, a.kind, f"{a.size:,}")
    out.print(table if items else "no artifacts yet")


@cli.command(
    epilog="\b\nExamples:\n  pgd download 3f2c... checkpoint -o student.pth\n"
    "  pgd download 3f2c... plots/pr_curve.png"
)
@click.argument("job_id")
@click.argument("name")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=Path("."), show_default=True
)
@click.pass_obj
@api_call
def download(obj: Ctx, job_id: str, name: str, output: Path) -> None:
    """Download one artifact (written whole or not at all)."""
    path = obj.client().download(job_id, name, output)
    out.print(f"saved {path}")


# -- results ----------------------------------------------------------------------------


@cli.command(
    epilog="\b\nExamples:\n  pgd results --dataset coco --detector fcos\n"
    "  pgd results --group --study <id>\n"
    "  pgd results --csv > results.csv"
)
@click.option("--dataset")
@click.option("--detector")
@click.option("--method")
@click.option("--kind")
@click.option("--study")
@click.option("--sweep")
@click.option("--sort", default="-ap", show_default=True)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--group", is_flag=True, help="One row per configuration, seeds summarised.")
@click.option("--csv", "as_csv", is_flag=True, help="Every matching row as CSV.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def results(
    obj: Ctx, sort: str, limit: int, group: bool, as_csv: bool, as_json: bool, **filters: str | None
) -> None:
    """The leaderboard: each result with its teacher and no-KD baseline."""
    client = obj.client()
    group_by = "config" if group else None
    if as_csv:
        click.echo(client.results_csv(sort=sort, group_by=group_by, **filters), nl=False)
        return
    page = client.results(sort=sort, limit=limit, group_by=group_by, **filters)  # type: ignore[arg-type]
    if as_json:
        _dump(page)
        return
    if not page.items:
        out.print("no results" + (" match these filters" if any(filters.values()) else " yet"))
        return
    table = Table(show_edge=False, header_style="bold")
    if group:
        for column in (
            "config",
            "detector",
            "dataset",
            "method",
            "n",
            "AP mean ± sd",
            "Δ AP",
            "gap recovered",
        ):
            table.add_column(column)
        for g in page.items:
            assert isinstance(g, dict)
            mean, sd = g.get("ap_mean"), g.get("ap_sd")
            cell = "–" if mean is None else f"{mean:.1f}" + ("" if sd is None else f" ± {sd:.1f}")
            dm = g.get("delta_ap_mean")
            gap = g.get("gap_recovered_ap")
            table.add_row(
                g["config_hash"][:8],
                g["detector"],
                g["dataset"],
                g["method"],
                str(g["n"]),
                cell,
                "–" if dm is None else f"{dm:+.1f}",
                "–" if gap is None else f"{100 * gap:.0f} %",
            )
    else:
        for column in (
            "job",
            "detector",
            "dataset",
            "method",
            "AP",
            "AP50",
            "teacher AP",
            "baseline AP",
            "Δ vs baseline",
            "params",
            "GFLOPs",
            "latency",
            "vs teacher",
        ):
            table.add_column(column, justify="left" if column in _TEXT_COLUMNS else "right")
        for r in page.items:
            assert not isinstance(r, dict)

            def f(v: float | None) -> str:
                return "–" if v is None else ("n/a" if v == -1 else f"{v:.1f}")

            delta = r.delta_ap_vs_baseline
            table.add_row(
                r.job_id[:8],
                r.detector,
                r.dataset,
                r.method,
                f(r.ap),
                f(r.ap50),
                f(r.teacher_ap),
                f(r.baseline_ap),
                "–" if delta is None else f"{delta:+.1f}",
                "–" if r.params is None else f"{r.params / 1e6:.2f} M",
                "–" if r.flops is None else f"{r.flops / 1e9:.2f}",
                "–" if r.latency_ms is None else f"{r.latency_ms:.1f} ms",
                _versus_teacher(r),
            )
    out.print(table)
    if not group and any(r.latency_ms is not None for r in page.items):  # type: ignore[union-attr]
        places = sorted({r.device for r in page.items if r.device})  # type: ignore[union-attr]
        err.print("latency: median of batch-1 forwards on " + "; ".join(places))


_COST_UNITS = {
    "latency_ms": ("latency (ms)", 1.0, 1),
    "flops": ("GFLOPs", 1e9, 2),
    "params": ("params (M)", 1e6, 2),
    "peak_memory_mb": ("peak memory (MiB)", 1.0, 0),
}


@cli.command(
    epilog="\b\nExamples:\n  pgd pareto --detector fcos --dataset coco\n"
    "  pgd pareto --detector gfl --dataset crowdhuman --cost flops --metric mr\n"
    "  pgd pareto --detector fcos --dataset coco --all --json"
)
@click.option("--detector", required=True)
@click.option("--dataset", required=True)
@click.option(
    "--cost", type=click.Choice(list(_COST_UNITS)), default="latency_ms", show_default=True
)
@click.option(
    "--metric", default="ap", show_default=True, help="ap, ap50, ... or mr (lower is better)."
)
@click.option(
    "--device", help="Only results measured there (latencies of two machines do not compare)."
)
@click.option("--all", "show_all", is_flag=True, help="Every measured result, not only the front.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def pareto(
    obj: Ctx,
    detector: str,
    dataset: str,
    cost: str,
    metric: str,
    device: str | None,
    show_all: bool,
    as_json: bool,
) -> None:
    """The accuracy/cost Pareto front: the results no other result beats on both
    accuracy and cost, cheapest first."""
    body = obj.client().pareto(detector, dataset, cost=cost, metric=metric, device=device)
    if as_json:
        _dump(body)
        return
    if not body["points"]:
        out.print(f"no measured result of {detector} on {dataset}")
        return
    label, scale, digits = _COST_UNITS[cost]
    points = body["points"] if show_all else [p for p in body["points"] if p["on_front"]]
    points = sorted(points, key=lambda p: (p["cost"], p["result_id"]))
    table = Table(show_edge=False, header_style="bold")
    for column in ("job", "kind", "method", label, metric.upper(), "front", "device"):
        table.add_column(column, justify="right" if column in (label, metric.upper()) else "left")
    for p in points:
        table.add_row(
            p["job_id"][:8],
            p["kind"],
            p["method"],
            f"{p['cost'] / scale:.{digits}f}",
            f"{p['metric']:.{3 if metric in ('mr', 'ji') else 1}f}",
            "●" if p["on_front"] else "",
            p["device"] or "–",
        )
    out.print(table)
    better = "lower" if body["lower_is_better"] else "higher"
    err.print(
        f"{len(body['front'])} of {len(body['points'])} results on the front "
        f"({better} {metric.upper()} is better)"
    )
    if cost == "latency_ms" and device is None and len(body["devices"]) > 1:
        err.print(f"latencies from {len(body['devices'])} devices: pick one with --device")


# -- studies ----------------------------------------------------------------------------


_TEXT_COLUMNS = ("job", "detector", "dataset", "method", "vs teacher")


def _versus_teacher(r: ResultRow) -> str:
    """``0.42x FLOPs, 2.1x faster, -1.3 AP``: what a distilled row keeps of its teacher
    for how much less."""
    parts = []
    if r.flops_ratio_vs_teacher is not None:
        parts.append(f"{r.flops_ratio_vs_teacher:.2f}x FLOPs")
    if r.speedup_vs_teacher is not None:
        parts.append(f"{r.speedup_vs_teacher:.1f}x faster")
    if r.delta_ap_vs_teacher is not None:
        parts.append(f"{r.delta_ap_vs_teacher:+.1f} AP")
    return ", ".join(parts) or "–"


def _csv_list(kind: type, text: str, option: str) -> list[Any]:
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"{option} {text!r}: expected a comma-separated list", BAD_REQUEST)
    if not values:
        fail(f"{option}: give at least one value", BAD_REQUEST)
    return values


def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _study_table(rows: list[dict[str, Any]], metric: str = "ap") -> Table:
    """A study's grouped rows: mean +- sd over seeds, the 95 % interval, the paired
    delta against the same-seed no-KD student and the teacher-student gap recovered."""
    table = Table(show_edge=False, header_style="bold")
    for column in ("role", "method", "n", f"{metric.upper()} mean", "sd", "95% CI"):
        table.add_column(column, justify="left" if column in ("role", "method") else "right")
    for column in ("Δ vs none", "gap recovered"):
        table.add_column(column, justify="right")
    for r in rows:
        low, high = r.get(f"{metric}_ci95_low"), r.get(f"{metric}_ci95_high")
        table.add_row(
            r["role"],
            r["method"],
            str(r.get(f"{metric}_n", 0)),
            _fmt(r.get(f"{metric}_mean")),
            _fmt(r.get(f"{metric}_sd")),
            "–" if low is None or high is None else f"{low:.1f}..{high:.1f}",
            _fmt(r.get(f"delta_{metric}_mean"), signed=True),
            _fmt(r.get(f"gap_recovered_{metric}"), 2),
        )
    return table


@cli.group(
    epilog="\b\nExamples:\n"
    "  pgd study submit --teacher tiny-fcos-teacher --student tiny-fcos-pgd "
    "--methods none,pgd --seeds 0,1,2 --follow\n"
    "  pgd study show 7a1e...\n"
    "  pgd study run --detector fcos --seeds 0,1   # on the server: its own embedded stack"
)
def study() -> None:
    """A teacher and every (method, seed) student, as one request."""


@study.command(
    "submit",
    epilog="\b\nExamples:\n"
    "  pgd study submit --teacher tiny-fcos-teacher --student tiny-fcos-pgd "
    "--methods none,inherit,pgd --seeds 0,1,2 --follow\n"
    "  pgd study submit --teacher-ref 3f2c... --student coco-fcos-pgd "
    "--methods none,pgd --seeds 0,1\n"
    "  pgd study submit study.json --json   # a POST /studies body",
)
@click.argument("body_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--teacher", metavar="PRESET|FILE", help="The teacher's spec, trained first.")
@click.option("--teacher-ref", metavar="JOB", help="A finished teacher job to reuse instead.")
@click.option("--student", metavar="PRESET|FILE", help="The students' spec (a distill preset).")
@click.option("--methods", default="none,pgd", show_default=True, help="Comma-separated.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated.")
@click.option("--name", help="A name shown in lists.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a student field.")
@click.option(
    "--teacher-set",
    "teacher_sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a teacher field.",
)
@click.option("--follow", is_flag=True, help="Show progress until every job ends, then the table.")
@click.option("--json", "as_json", is_flag=True, help="Print the created study as JSON.")
@click.pass_obj
@api_call
def study_submit(
    obj: Ctx,
    body_file: Path | None,
    teacher: str | None,
    teacher_ref: str | None,
    student: str | None,
    methods: str,
    seeds: str,
    name: str | None,
    sets: tuple[str, ...],
    teacher_sets: tuple[str, ...],
    follow: bool,
    as_json: bool,
) -> None:
    """Submit a study: the teacher (or a finished one), then one student per method
    and seed. With --follow, exits 0 if every job succeeded, 1 if any failed, 3 if
    any was cancelled."""
    client = obj.client()
    if body_file is not None:
        if teacher or teacher_ref or student:
            fail("give a study file or --teacher/--student, not both", BAD_REQUEST)
        try:
            body = json.loads(body_file.read_text())
        except OSError as exc:
            fail(f"cannot read {body_file}: {exc.strerror}", BAD_REQUEST)
        except ValueError as exc:
            fail(f"{body_file} is not JSON: {exc}", BAD_REQUEST)
    else:
        if student is None:
            fail("give --student (a preset or spec file), or a study file", BAD_REQUEST)
        if (teacher is None) == (teacher_ref is None):
            fail("give exactly one of --teacher and --teacher-ref", BAD_REQUEST)
        body = {
            "name": name,
            "student": _spec_from(client, student, sets),
            "methods": _csv_list(str, methods, "--methods"),
            "seeds": _csv_list(int, seeds, "--seeds"),
        }
        if teacher is not None:
            body["teacher"] = _spec_from(client, teacher, teacher_sets)
        else:
            body["teacher_ref"] = teacher_ref
    created = client.submit_study(body)
    if as_json:
        _dump(created)
    else:
        out.print(f"study {created['id']}: {len(created['jobs'])} jobs queued")
    if not follow:
        return
    console = err if as_json else out
    state, code = _follow_many("study", created["id"], lambda: client.study(created["id"]), console)
    if not as_json:
        console.print(_study_table(state["table"]))
    raise SystemExit(code)


@study.command(
    "show", epilog="\b\nExamples:\n  pgd study show 7a1e...\n  pgd study show 7a1e... --json"
)
@click.argument("study_id")
@click.option(
    "--metric", default="ap", show_default=True, help="ap, ap50, ... or mr for CrowdHuman."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def study_show(obj: Ctx, study_id: str, metric: str, as_json: bool) -> None:
    """A study's jobs and its table (mean +- sd over seeds, paired delta, gap recovered)."""
    data = obj.client().study(study_id)
    if as_json:
        _dump(data)
        return
    counts = ", ".join(f"{n} {s}" for s, n in data["states"].items() if n)
    out.print(f"[bold]study {data['id']}[/] {data.get('name') or ''}  {counts}")
    jobs_table = Table(show_edge=False, header_style="bold")
    for column in ("job", "role", "method", "seed", "state", "progress"):
        jobs_table.add_column(column, justify="right" if column == "progress" else "left")
    for j in data["jobs"]:
        state = j["state"] + (f" ({j['reason']})" if j.get("reason") else "")
        seed = "" if j.get("seed") is None else str(j["seed"])
        jobs_table.add_row(
            j["id"], j["role"], j["method"], seed, state, f"{100 * j['progress']:.0f} %"
        )
    out.print(jobs_table)
    out.print(_study_table(data["table"], metric))


@study.command("list", epilog="\b\nExamples:\n  pgd study list\n  pgd study list --json")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def study_list(obj: Ctx, limit: int, as_json: bool) -> None:
    """Your studies, newest first, with their progress."""
    page = obj.client().studies(limit=limit)
    if as_json:
        _dump(page)
        return
    if not page["items"]:
        out.print("no studies yet")
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("study", "name", "methods", "seeds", "jobs", "progress", "created"):
        table.add_column(column, justify="right" if column == "progress" else "left")
    for s in page["items"]:
        counts = ", ".join(f"{n} {st}" for st, n in s["states"].items() if n)
        table.add_row(
            s["id"],
            s.get("name") or "",
            ",".join(s["methods"]),
            ",".join(str(x) for x in s["seeds"]),
            counts,
            f"{100 * s['progress']:.0f} %",
            str(s["created_at"])[:16].replace("T", " "),
        )
    out.print(table)


@study.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    epilog="\b\nExamples:\n  pgd study run --detector fcos --methods none,inherit,pgd "
    "--seeds 0,1,2",
)
@click.pass_context
def study_run(ctx: click.Context) -> None:
    """On the server machine: make a synthetic data set, start an embedded stack and
    run a whole study on it (`pgd study run --help` lists its options)."""
    try:
        from api.study import main as run_study  # the server package, not the client's
    except ImportError:
        fail("`pgd study run` needs the server package (pip install pgd)", BAD_REQUEST)
    raise SystemExit(run_study(list(ctx.args)))


# -- tokens -----------------------------------------------------------------------------


def _when(value: Any) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M")


@cli.group(
    epilog="\b\nExamples:\n"
    "  pgd tokens list\n"
    "  pgd tokens create --name laptop --expires-in-days 30\n"
    "  pgd tokens revoke 12"
)
def tokens() -> None:
    """Your API tokens: list, create, revoke (the first one comes from `pgd token
    create` on the server)."""


@tokens.command("list", epilog="\b\nExamples:\n  pgd tokens list\n  pgd tokens list --all --json")
@click.option("--all", "with_revoked", is_flag=True, help="Also revoked tokens.")
@click.option("--owner", help="Admins: one owner's tokens only.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def tokens_list(obj: Ctx, with_revoked: bool, owner: str | None, as_json: bool) -> None:
    """Your tokens (an admin's: everyone's), newest first; never their secrets."""
    rows = obj.client().tokens(owner=owner, revoked=with_revoked)
    if as_json:
        _dump(rows)
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "owner", "name", "admin", "created", "last used", "expires", "state"):
        table.add_column(column)
    for t in rows:
        state = "this one" if t.current else t.state
        table.add_row(
            str(t.id),
            t.owner,
            t.name or "",
            "yes" if t.is_admin else "",
            _when(t.created_at),
            _when(t.last_used_at),
            _when(t.expires_at) if t.expires_at else "never",
            state,
        )
    out.print(table)


@tokens.command(
    "create",
    epilog="\b\nExamples:\n"
    "  pgd tokens create --name ci --expires-in-days 90\n"
    "  export PGD_TOKEN=$(pgd tokens create --name notebook)",
)
@click.option("--name", help="What it is for (shown by `pgd tokens list`).")
@click.option(
    "--expires-in-days", type=click.FloatRange(min=0, min_open=True), help="Default: never."
)
@click.option("--owner", help="Admins: create it for another owner.")
@click.option("--admin", "is_admin", is_flag=True, help="Admins: an admin token.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def tokens_create(
    obj: Ctx,
    name: str | None,
    expires_in_days: float | None,
    owner: str | None,
    is_admin: bool,
    as_json: bool,
) -> None:
    """Create a token and print it (it is shown only this once; only the token goes
    to stdout, so `$(pgd tokens create)` works)."""
    created = obj.client().create_token(
        name=name, expires_in_days=expires_in_days, owner=owner, is_admin=is_admin
    )
    if as_json:
        _dump(created)
        return
    click.echo(created.token)
    expiry = f"expires {_when(created.expires_at)}" if created.expires_at else "never expires"
    err.print(f"token {created.id} for {created.owner}, {expiry}; shown only once")


@tokens.command("revoke", epilog="\b\nExamples:\n  pgd tokens revoke 12")
@click.argument("token_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@api_call
def tokens_revoke(obj: Ctx, token_id: int, as_json: bool) -> None:
    """Revoke a token: every API process refuses it from the next request on."""
    revoked = obj.client().revoke_token(token_id)
    if as_json:
        _dump(revoked)
        return
    out.print(f"token {revoked.id} ({revoked.owner}) revoked at {_when(revoked.revoked_at)}")


@cli.command(
    epilog="\b\nExamples:\n  pgd completion bash >> ~/.bashrc\n  pgd completion zsh > ~/.zfunc/_pgd"
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for the client commands."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "pgd", "_PGD_COMPLETE").source())


COMMANDS = frozenset(cli.commands)


def main(argv: list[str] | None = None) -> int:
    """Run a client command; the exit code."""
    try:
        cli.main(args=argv, prog_name="pgd", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.exceptions.Abort:
        return INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return BAD_REQUEST
    return OK


if __name__ == "__main__":
    sys.exit(main())
