"""The dashboard's test bench: a real API process on a migrated database, jobs
created through its REST API, a stand-in worker that moves them through the
job lifecycle the way ``worker.execution`` does (claim, heartbeats with metric
points, finish with a result), and a headless Chromium driven by Selenium.

Used by tests/test_ui.py, bench/bench_ui.py and docs/ui/shoot.py (screenshots).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker
from worker_helpers import free_port

from api.auth import store_token
from api.embedded import migrate
from pgd_client import Client
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service import lifecycle
from pgd_service.db.models import METRICS, Artifact, EvalResult, Job, MetricPoint
from pgd_service.db.session import make_engine, make_session_factory
from worker.execution import cost_columns

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_CANDIDATES = ("chromedriver",)


def browser_missing() -> str | None:
    """Why no browser test can run here (None when Chromium, its driver and
    Selenium are all installed)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not any(shutil.which(name) for name in CHROMIUM_CANDIDATES):
        return "no Chromium (apt-get install chromium chromium-driver; .ci/run installs it)"
    if not any(shutil.which(name) for name in DRIVER_CANDIDATES):
        return "no chromedriver (apt-get install chromium-driver; .ci/run installs it)"
    return None


@dataclass
class LiveApi:
    """A running ``uvicorn api.main:app`` and what it was started with."""

    url: str
    database_url: str
    data_root: Path
    work_root: Path
    process: subprocess.Popen[bytes]
    session_factory: sessionmaker[Session]

    def token(self, owner: str, *, is_admin: bool = False) -> str:
        return store_token(self.database_url, owner=owner, is_admin=is_admin)

    def client(self, token: str) -> Client:
        """The Python client (pgd_client) signed in with ``token``."""
        return Client(self.url, token, retries=1, backoff_s=0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def api_env(database_url: str, broker_url: str, root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGD_")}
    env.update(
        PGD_DATABASE_URL=database_url,
        PGD_BROKER_URL=broker_url,
        PGD_DATA_ROOT=str(root / "data"),
        PGD_WORK_ROOT=str(root / "work"),
        PGD_WEIGHTS_ROOT=str(root / "weights"),
        PGD_RUN_MAINTENANCE="false",
        PGD_EVENTS_POLL_S="0.2",
        **extra,
    )
    return env


@contextmanager
def live_api(
    root: Path, database_url: str | None = None, broker_url: str | None = None, **extra: str
) -> Iterator[LiveApi]:
    """Migrate the database (a SQLite file under ``root`` by default), register the
    synthetic ``shapes`` dataset, start the API on a free port and wait until it
    answers; stop it afterwards. The broker defaults to the embedded SQL one (no
    worker consumes it: jobs stay queued until this module's stand-in moves them)."""
    root.mkdir(parents=True, exist_ok=True)
    database_url = database_url or f"sqlite:///{root / 'pgd.db'}"
    broker_url = broker_url or f"sqla+sqlite:///{root / 'broker.db'}"
    migrate(database_url)
    make_coco_shapes(root / "data", "shapes", num_train=4, num_val=2)
    (root / "work").mkdir(exist_ok=True)
    port = free_port()
    log = open(root / "api.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port), "--no-access-log"],
        cwd=ROOT,
        env=api_env(database_url, broker_url, root, **extra),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    engine = make_engine(database_url)
    live = LiveApi(
        url, database_url, root / "data", root / "work", process, make_session_factory(engine)
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the API exited with {process.returncode}; see {root / 'api.log'}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer within 60 s; see {root / 'api.log'}")
            time.sleep(0.1)
        yield live
    finally:
        live.stop()
        log.close()
        engine.dispose()


# -- jobs through the API, moved by a stand-in worker --------------------------------


def submit(client: Client, preset: str, **changes: Any) -> str:
    """POST /jobs of a preset with top-level fields replaced; the new job's id."""
    spec = get_preset(preset).model_dump(mode="json")
    spec.update(changes)
    return client.submit(spec).id


def loss_curve(steps: int, *, start: float = 2.0, end: float = 0.4, seed: int = 0) -> list[float]:
    """A decaying, slightly noisy loss (deterministic)."""
    return [
        end + (start - end) * math.exp(-4 * i / max(1, steps - 1)) + 0.03 * math.sin(3 * i + seed)
        for i in range(steps)
    ]


def start(live: LiveApi, job_id: str) -> None:
    """queued -> running, as a worker's claim."""
    with live.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        if lifecycle.claim(session, job_id, job.attempt, "ui-test:1") is None:
            raise AssertionError(f"job {job_id} could not be claimed from {job.state}")


def report(
    live: LiveApi, job_id: str, points: dict[str, list[float]], progress: float, first_step: int = 1
) -> None:
    """A heartbeat with progress and metric points at consecutive steps."""
    with live.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.add_all(
            MetricPoint(job_id=job_id, step=first_step + i, name=name, value=value)
            for name, values in points.items()
            for i, value in enumerate(values)
        )
        if not lifecycle.beat(session, job_id, job.attempt, progress=progress):
            raise AssertionError(f"job {job_id} is no longer held")
        session.commit()


def finish(
    live: LiveApi,
    job_id: str,
    state: str = "succeeded",
    *,
    metrics: dict[str, float] | None = None,
    reason: str | None = None,
    message: str | None = None,
    plot: bytes | None = None,
    cost: dict[str, Any] | None = None,
) -> None:
    """running -> a terminal state, with the result (and the model's ``cost``, see
    :func:`measured`) and a plot artifact when given (as worker.execution stores
    them: one transaction)."""
    with live.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        if not lifecycle.finish(
            session, job_id, job.attempt, state=state, reason=reason, message=message
        ):
            raise AssertionError(f"job {job_id} could not finish from {job.state}")
        if metrics is not None:
            session.add(
                EvalResult(
                    job_id=job_id,
                    dataset=job.dataset,
                    detector=job.detector,
                    method=job.method,
                    metrics={k.upper(): v for k, v in metrics.items()},
                    **{m: metrics.get(m) for m in METRICS},
                    **cost_columns(cost),
                )
            )
        if plot is not None:
            path = live.work_root / job_id / "plots" / "pr_curve.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(plot)
            session.add(
                Artifact(
                    job_id=job_id,
                    name="plots/pr_curve.png",
                    kind="plot",
                    path=str(path),
                    size=len(plot),
                )
            )
        session.commit()


def measured(params: int, gflops: float, latency_ms: float) -> dict[str, Any]:
    """A model's measurement as pgd_core.cost.ModelCost.as_json() writes it."""
    return {
        "params": params,
        "flops": round(gflops * 1e9),
        "input_shape": [160, 160],
        "latency": {
            "median_ms": latency_ms,
            "p90_ms": round(latency_ms * 1.1, 3),
            "runs": 30,
            "warmup": 5,
            "device": "cpu (Test CPU)",
            "threads": 2,
        },
        "peak_memory_mb": 18.5,
        "onnx": {"status": "ok", "path": None, "max_abs_diff": 3e-6, "error": None, "opset": 17},
        "seconds": 2.0,
        "timings": {},
        "warnings": [],
    }


def coco(ap: float) -> dict[str, float]:
    """Plausible COCO metrics around an AP (percent)."""
    return {
        "ap": ap,
        "ap50": ap + 17.0,
        "ap75": ap + 1.5,
        "aps": ap - 17.5,
        "apm": ap + 3.0,
        "apl": ap + 12.0,
    }


def png(width: int = 320, height: int = 240) -> bytes:
    """A small PR-curve-like PNG (matplotlib, as the evaluator's plots)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(width / 80, height / 80), dpi=80)
    recall = [i / 50 for i in range(51)]
    for iou, drop in ((0.5, 0.3), (0.75, 0.6)):
        ax.plot(
            recall,
            [max(0.0, 1 - drop * r**2 - (r > 0.9) * (r - 0.9) * 8) for r in recall],
            label=f"IoU {iou}",
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class Sample:
    """What :func:`seed_sample` made: job ids by role."""

    teacher: str
    baseline: str
    students: dict[str, str]
    running: str
    queued: str
    failed: str
    sweep: str
    study: str
    steps: int


def seed_sample(live: LiveApi, token: str, *, steps: int = 40) -> Sample:
    """A small distillation project, the way a user's database looks after a day:
    a teacher, its no-KD baseline and three distilled students (finished, with
    results, curves and a PR plot), one student running with a live curve, one
    queued and one failed with its reason."""
    plot = png()
    lr = [0.01 * min(1.0, (i + 1) / 5) for i in range(steps)]
    with live.client(token) as http:
        teacher = submit(http, "tiny-fcos-teacher")
        baseline = submit(http, "tiny-fcos-student")
        teacher_cost, student_cost = (
            measured(2_470_000, 1.21, 31.4),
            measured(1_130_000, 0.52, 12.2),
        )
        for job_id, ap, seed, cost in (
            (teacher, 45.8, 0, teacher_cost),
            (baseline, 25.2, 1, student_cost),
        ):
            start(live, job_id)
            report(live, job_id, {"loss": loss_curve(steps, seed=seed), "lr": lr}, 1.0)
            finish(live, job_id, metrics=coco(ap), plot=plot, cost=cost)
        students = {}
        for method, ap in (("pgd", 35.9), ("inherit", 43.9), ("fgd_box", 38.1)):
            job_id = submit(http, "tiny-fcos-pgd", method=method, teacher_ref=teacher)
            start(live, job_id)
            curves = {
                "loss": loss_curve(steps, seed=3),
                "loss_kd": loss_curve(steps, start=0.8, end=0.1),
                "lr": lr,
            }
            report(live, job_id, curves, 1.0)
            metrics = coco(ap)
            if method == "fgd_box":
                metrics["aps"] = -1.0  # pycocotools' "no small object": shown as n/a
            finish(live, job_id, metrics=metrics, plot=plot, cost=student_cost)
            students[method] = job_id
        running = submit(http, "tiny-fcos-pgd", teacher_ref=teacher, seed=1)
        start(live, running)
        half = steps // 2
        report(
            live, running, {"loss": loss_curve(steps, seed=5)[:half], "lr": lr[:half]}, half / steps
        )
        queued = submit(http, "tiny-fcos-student", seed=2)
        failed = submit(http, "tiny-fcos-student", seed=3)
        start(live, failed)
        finish(
            live,
            failed,
            "failed",
            reason="out_of_memory",
            message="CUDA out of memory. Tried to allocate 2.00 GiB (batch_size 16 at 1333x800)",
        )
        # A sweep over alpha x seed, half of it done; a study of the teacher's students.
        base = get_preset("tiny-fcos-pgd").model_dump(mode="json") | {"teacher_ref": teacher}
        grid = {"distill.alpha": [0.002, 0.004], "seed": [0, 1]}
        sweep = http.submit_sweep(base, grid)
        for job_id, ap in zip(sweep["jobs"][:2], (34.2, 36.4), strict=True):
            start(live, job_id)
            finish(live, job_id, metrics=coco(ap))
        template = get_preset("tiny-fcos-pgd").model_dump(mode="json")
        study = http.submit_study(
            {
                "name": "fcos tiny",
                "teacher_ref": teacher,
                "student": template,
                "methods": ["none", "pgd"],
                "seeds": [0, 1],
            }
        )
        for job_id, ap in zip(study["jobs"], (25.0, 26.1, 35.2, 36.9), strict=False):
            start(live, job_id)
            finish(live, job_id, metrics=coco(ap))
    return Sample(
        teacher,
        baseline,
        students,
        running,
        queued,
        failed,
        sweep["id"],
        study["id"],
        steps,
    )


# -- the browser --------------------------------------------------------------------


def chrome(width: int = 1440, height: int = 900):  # noqa: ANN201 - selenium's WebDriver
    """A headless Chromium (Debian's package and its chromedriver) at this window size."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    binary = next(shutil.which(n) for n in CHROMIUM_CANDIDATES if shutil.which(n))
    options.binary_location = binary
    driver_path = next(shutil.which(n) for n in DRIVER_CANDIDATES if shutil.which(n))
    # An explicit driver: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_window_size(width, height)
    return driver


def sign_in(driver: Any, url: str, token: str) -> None:
    """Open the dashboard and sign in through its form; returns on the jobs page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/ui/#/signin")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    field = WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "token")))
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return location.hash").startswith("#/jobs")
    )


def wait_for(driver: Any, condition: Any, timeout: float = 10.0) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The pages re-render rows in place: an element found a moment ago may be
    # replaced before it is read, which is "not yet", not a failure.
    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition)
