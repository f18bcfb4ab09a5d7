"""The dashboard in a real headless Chromium against a real API process.

Every number the pages show is checked against another path: the database rows
the stand-in worker wrote, or the REST API's answer, never the page's own code.
Skips (with the reason) where no browser is installed; .ci/run installs one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from ui_helpers import (
    LiveApi,
    Sample,
    browser_missing,
    chrome,
    coco,
    finish,
    live_api,
    report,
    seed_sample,
    sign_in,
    start,
    submit,
    wait_for,
)

from api.auth import hash_token
from pgd_client import ProblemError
from pgd_service.db.models import ApiToken, EvalResult, Job, MetricPoint

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    with live_api(tmp_path_factory.mktemp("ui")) as api:
        yield api


@pytest.fixture(scope="module")
def admin(live: LiveApi) -> str:
    return live.token("ada", is_admin=True)


@pytest.fixture(scope="module")
def sample(live: LiveApi, admin: str) -> Sample:
    return seed_sample(live, admin)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def signed_in(browser, live: LiveApi, admin: str, sample: Sample):  # noqa: ANN001, ANN201
    sign_in(browser, live.url, admin)
    return browser


def by_css(driver, css: str):  # noqa: ANN001, ANN201
    return driver.find_elements("css selector", css)


def text_of(driver, css: str) -> str | None:  # noqa: ANN001
    """The text of the first match, read in the page (no stale element handles)."""
    return driver.execute_script(
        "const el = document.querySelector(arguments[0]); return el ? el.innerText : null", css
    )


def go(driver, live: LiveApi, route: str) -> None:  # noqa: ANN001
    driver.get(f"{live.url}/ui/#/{route}")


def confirm(driver) -> None:  # noqa: ANN001
    wait_for(driver, lambda d: by_css(d, "dialog[open] button[data-confirm]"))[0].click()


# -- sign-in and sign-out -----------------------------------------------------------------


def test_sign_in_refuses_a_bad_token_and_keeps_a_good_one_out_of_the_url(
    browser, live: LiveApi, admin: str, sample: Sample
):
    browser.get(f"{live.url}/ui/")
    wait_for(browser, lambda d: d.execute_script("return location.hash") == "#/signin")
    browser.find_element("id", "token").send_keys("pgd_0_not-a-token")
    browser.find_element("css selector", "form.signin button[type=submit]").click()
    error = wait_for(browser, lambda d: text_of(d, "#signin-error"))
    assert "not valid" in error and "invalid or revoked token" in error
    assert browser.execute_script("return sessionStorage.getItem('pgd.token')") is None

    sign_in(browser, live.url, admin)
    assert admin not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('pgd.token')") == admin
    assert browser.find_element("id", "who-name").text == "ada (admin)"
    # The page lists what GET /jobs lists for this token.
    wait_for(browser, lambda d: by_css(d, "#jobs-body tr"))


def test_a_revoked_token_signs_the_tab_out_with_the_reason(browser, live: LiveApi, sample: Sample):
    secret = live.token("bob")
    with live.session_factory() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == hash_token(secret))
            .values(revoked_at=datetime.now(UTC))
        )
        session.commit()
    browser.get(f"{live.url}/ui/#/signin")
    browser.execute_script(
        "sessionStorage.setItem('pgd.token', arguments[0]);"
        "sessionStorage.setItem('pgd.who', JSON.stringify({owner: 'bob', is_admin: false}));",
        secret,
    )
    # A fresh load of the jobs page with that token in the tab, as after a restart.
    browser.get(f"{live.url}/healthz")
    go(browser, live, "jobs")
    banner = wait_for(browser, lambda d: text_of(d, "#banner"))
    assert banner.startswith("Signed out: invalid or revoked token")
    assert browser.execute_script("return location.hash") == "#/signin"
    assert browser.execute_script("return sessionStorage.getItem('pgd.token')") is None


def test_a_token_sees_only_its_owners_jobs(browser, live: LiveApi, sample: Sample):
    carol = live.token("carol")
    with live.client(carol) as http:
        own = submit(http, "tiny-fcos-student", seed=41)
    sign_in(browser, live.url, carol)
    rows = wait_for(browser, lambda d: by_css(d, "#jobs-body tr"))
    assert [row.get_attribute("data-job") for row in rows] == [own]


# -- jobs table -----------------------------------------------------------------------------


def test_jobs_table_rows_are_the_apis_jobs_newest_first(signed_in, live: LiveApi, admin: str):
    rows = wait_for(signed_in, lambda d: by_css(d, "#jobs-body tr"))
    with live.session_factory() as session:
        newest = session.execute(select(Job.id, Job.state).order_by(Job.seq.desc()).limit(50)).all()
    assert [(r.get_attribute("data-job"), r.get_attribute("data-state")) for r in rows] == [
        (job_id, state) for job_id, state in newest
    ]


def test_jobs_table_follows_a_state_change_without_a_reload(signed_in, live: LiveApi, admin: str):
    with live.client(admin) as http:
        job_id = submit(http, "tiny-fcos-student", seed=77)
    row = f"#jobs-body tr[data-job='{job_id}']"
    wait_for(signed_in, lambda d: by_css(d, row), timeout=6)
    signed_in.execute_script("window.__same_page = true")
    start(live, job_id)
    wait_for(signed_in, lambda d: by_css(d, f"{row}[data-state='running']"), timeout=6)
    report(live, job_id, {"loss": [1.0]}, 0.25)
    cell = f"{row} .progress"
    wait_for(
        signed_in, lambda d: by_css(d, cell)[0].get_attribute("aria-valuenow") == "25", timeout=6
    )
    finish(live, job_id, "failed", reason="nan_loss", message="loss is NaN at iteration 3")
    failed = f"{row}[data-state='failed']"
    wait_for(signed_in, lambda d: any("nan_loss" in e.text for e in by_css(d, failed)), timeout=6)
    assert signed_in.execute_script("return window.__same_page") is True


def test_jobs_filter_by_state_matches_the_database(signed_in, live: LiveApi):
    go(signed_in, live, "jobs?state=succeeded")
    rows = wait_for(signed_in, lambda d: by_css(d, "#jobs-body tr"))
    with live.session_factory() as session:
        expected = session.scalars(
            select(Job.id).where(Job.state == "succeeded").order_by(Job.seq.desc()).limit(50)
        ).all()
    assert [r.get_attribute("data-job") for r in rows] == list(expected)
    select_state = signed_in.find_element("css selector", "select[data-filter=state]")
    assert select_state.get_attribute("value") == "succeeded"


# -- one job ----------------------------------------------------------------------------------


def _points(live: LiveApi, job_id: str, name: str) -> list[tuple[int, float]]:
    with live.session_factory() as session:
        return list(
            session.execute(
                select(MetricPoint.step, MetricPoint.value)
                .where(MetricPoint.job_id == job_id, MetricPoint.name == name)
                .order_by(MetricPoint.step)
            ).tuples()
        )


def _path_points(driver, name: str) -> list[tuple[float, float]]:  # noqa: ANN001
    d = by_css(driver, f"#curves path.series[data-name='{name}']")[0].get_attribute("d")
    return [tuple(map(float, part.split(","))) for part in d.replace("M", "L").split("L") if part]


def test_job_page_curve_draws_every_stored_point_in_step_order(
    signed_in, live: LiveApi, sample: Sample
):
    job_id = sample.students["pgd"]
    go(signed_in, live, f"jobs/{job_id}")
    wait_for(signed_in, lambda d: by_css(d, "#curves path.series[data-name='loss']"))
    stored = _points(live, job_id, "loss")
    assert len(stored) == sample.steps
    drawn = _path_points(signed_in, "loss")
    assert len(drawn) == len(stored)
    # x grows with the step and y falls as the stored value rises (SVG y points down):
    # the drawn shape is the stored series', point by point.
    assert [x for x, _ in drawn] == sorted(x for x, _ in drawn)
    for (_, y0), (_, y1), (_, v0), (_, v1) in zip(
        drawn, drawn[1:], stored, stored[1:], strict=False
    ):
        if v1 > v0:
            assert y1 < y0
        elif v1 < v0:
            assert y1 > y0
    assert by_css(signed_in, "#curves path.series[data-name='lr']")


@pytest.mark.parametrize(
    ("device", "processes", "batch"), [("cpu", 2, 4), ("cuda", 8, 16), ("cuda", 1, 4)]
)
def test_job_page_says_where_the_job_runs_and_how_its_batch_splits(
    signed_in, live: LiveApi, device: str, processes: int, batch: int
):
    with live.client(live.token("ada", is_admin=True)) as http:
        spec = http.preset("tiny-fcos-student")
        spec["device"], spec["processes"] = device, processes
        spec["schedule"]["batch_size"] = batch
        job_id = http.submit(spec).id
    with live.session_factory() as session:
        stored = session.scalar(select(Job.spec).where(Job.id == job_id))
    n, images = stored["processes"], stored["schedule"]["batch_size"]
    unit = {"cpu": ("CPU processes", "(gloo)", "process"), "cuda": ("GPUs", "(NCCL)", "GPU")}
    many, backend, each = unit[stored["device"]]
    if n == 1:
        one = "GPU" if stored["device"] == "cuda" else "CPU process"
        expected = f"1 {one}, {images} images per iteration"
    else:
        expected = f"{n} {many} {backend}, {images} images per iteration: {images // n} per {each}"
    go(signed_in, live, f"jobs/{job_id}")
    wait_for(signed_in, lambda d: by_css(d, "dl.kv"))
    labels = signed_in.find_elements("css selector", "dl.kv dt")
    values = signed_in.find_elements("css selector", "dl.kv dd")
    shown = {dt.text: dd.text for dt, dd in zip(labels, values, strict=True)}
    assert shown["runs on"] == expected


def test_job_page_shows_its_result_with_teacher_baseline_and_gap(
    signed_in, live: LiveApi, sample: Sample
):
    job_id = sample.students["inherit"]
    go(signed_in, live, f"jobs/{job_id}")
    table = wait_for(signed_in, lambda d: d.find_element("id", "eval-table"))
    rows = {
        row.find_element("tag name", "th").text: [
            td.text for td in row.find_elements("tag name", "td")
        ]
        for row in table.find_elements("css selector", "tbody tr")
    }
    with live.client(live.token("ada", is_admin=True)) as http:
        # Which job the server pairs as the baseline (its rule is tested in test_api_results);
        # the numbers shown are then read from the database, not from the page's source.
        row = http.result(job_id)
        assert row is not None
        baseline_id = row.baseline_job_id
    with live.session_factory() as session:
        own = session.scalar(select(EvalResult.ap).where(EvalResult.job_id == job_id))
        teacher = session.scalar(select(EvalResult.ap).where(EvalResult.job_id == sample.teacher))
        baseline_job = session.get(Job, baseline_id)
        assert (baseline_job.kind, baseline_job.method, baseline_job.state) == (
            "train",
            "none",
            "succeeded",
        )
        baseline = session.scalar(select(EvalResult.ap).where(EvalResult.job_id == baseline_id))
    assert rows["this job"][0] == f"{own:.1f}"
    assert rows["teacher"][0] == f"{teacher:.1f}"
    assert rows["no-KD baseline"][0] == f"{baseline:.1f}"
    assert rows["Δ vs baseline"][0] == f"{own - baseline:+.1f}"
    gap = signed_in.find_element("id", "gap").text
    assert gap.startswith(f"Recovered {100 * (own - baseline) / (teacher - baseline):.0f} %")


def test_an_undefined_coco_metric_reads_n_a_and_has_no_delta(
    signed_in, live: LiveApi, sample: Sample
):
    job_id = sample.students["fgd_box"]
    with live.session_factory() as session:
        assert session.scalar(select(EvalResult.aps).where(EvalResult.job_id == job_id)) == -1
    go(signed_in, live, f"jobs/{job_id}")
    wait_for(signed_in, lambda d: by_css(d, "#eval-table"))
    cells = {
        row.find_element("tag name", "th").text: row.find_element(
            "css selector", "td[data-metric=aps]"
        ).text
        for row in by_css(signed_in, "#eval-table tbody tr")
    }
    assert cells["this job"] == "n/a"
    assert cells["Δ vs baseline"] == "n/a"
    assert cells["teacher"] not in ("n/a", "–")


def test_a_running_jobs_curve_grows_live(signed_in, live: LiveApi, admin: str):
    with live.client(admin) as http:
        job_id = submit(http, "tiny-fcos-student", seed=90)
    start(live, job_id)
    report(live, job_id, {"loss": [2.0, 1.8, 1.7]}, 0.1)
    go(signed_in, live, f"jobs/{job_id}")
    wait_for(
        signed_in,
        lambda d: len(_path_points(d, "loss")) == 3 if by_css(d, "#curves path.series") else False,
    )
    signed_in.execute_script("window.__same_page = true")
    report(live, job_id, {"loss": [1.5, 1.4]}, 0.3, first_step=4)
    wait_for(signed_in, lambda d: len(_path_points(d, "loss")) == 5, timeout=8)
    wait_for(signed_in, lambda d: d.find_element("id", "progress-text").text == "30.0 %", timeout=8)
    assert signed_in.execute_script("return window.__same_page") is True
    finish(live, job_id, metrics={"ap": 12.5})


def test_cancel_from_the_job_page_cancels_the_job(signed_in, live: LiveApi, admin: str):
    with live.client(admin) as http:
        job_id = submit(http, "tiny-fcos-student", seed=91)
    go(signed_in, live, f"jobs/{job_id}")
    wait_for(signed_in, lambda d: d.find_element("id", "cancel")).click()
    confirm(signed_in)
    wait_for(signed_in, lambda d: by_css(d, ".page-head .state-cancelled"))
    with live.session_factory() as session:
        assert session.scalar(select(Job.state).where(Job.id == job_id)) == "cancelled"
    assert not by_css(signed_in, "#cancel")
    assert by_css(signed_in, "#retry")


def test_a_refused_retry_shows_the_apis_problem(signed_in, live: LiveApi, admin: str):
    with live.client(admin) as http:
        teacher = submit(http, "tiny-fcos-teacher", seed=93)
        student = submit(http, "tiny-fcos-pgd", teacher_ref=teacher, seed=93)
        assert http.cancel(student).state == "cancelled"
        assert http.cancel(teacher).state == "cancelled"
    go(signed_in, live, f"jobs/{student}")
    wait_for(signed_in, lambda d: d.find_element("id", "retry")).click()
    confirm(signed_in)
    problem = wait_for(signed_in, lambda d: text_of(d, "#action-result .problem"))
    with live.client(admin) as http:
        with pytest.raises(ProblemError) as refused:
            http.retry(student)
    assert refused.value.status == 409
    assert problem.startswith("Retry refused: 409 Conflict")
    assert refused.value.detail in problem
    with live.session_factory() as session:
        assert session.scalar(select(Job.state).where(Job.id == student)) == "cancelled"


# -- leaderboard --------------------------------------------------------------------------------


def _result_rows(driver, metric: str) -> list[tuple[str, str]]:  # noqa: ANN001
    return [
        (
            row.get_attribute("data-job"),
            row.find_element("css selector", f"td[data-metric={metric}]").text,
        )
        for row in by_css(driver, "#results-table tbody tr")
    ]


def test_leaderboard_sorts_by_a_clicked_column_as_the_database_orders_it(signed_in, live: LiveApi):
    go(signed_in, live, "results")
    wait_for(signed_in, lambda d: by_css(d, "#results-table tbody tr"))
    with live.session_factory() as session:
        stored = session.execute(select(EvalResult.id, EvalResult.job_id, EvalResult.ap50)).all()
    ranked = [r for r in stored if r.ap50 is not None]
    # Rows without the value come last, by id (the API's documented order).
    unranked = [r for r in stored if r.ap50 is None]
    descending = sorted(ranked, key=lambda r: (-r.ap50, -r.id)) + sorted(
        unranked, key=lambda r: -r.id
    )
    ascending = sorted(ranked, key=lambda r: (r.ap50, r.id)) + sorted(unranked, key=lambda r: r.id)

    def shown(rows):  # noqa: ANN001, ANN202
        return [(r.job_id, "–" if r.ap50 is None else f"{r.ap50:.1f}") for r in rows[:50]]

    signed_in.find_element("css selector", "button[data-sort=ap50]").click()
    wait_for(
        signed_in, lambda d: "sort=-ap50" in d.current_url and by_css(d, "#results-table tbody tr")
    )
    wait_for(
        signed_in,
        lambda d: (
            _result_rows(d, "ap50")[:1] == [(descending[0].job_id, f"{descending[0].ap50:.1f}")]
        ),
    )
    assert _result_rows(signed_in, "ap50") == shown(descending)

    signed_in.find_element("css selector", "button[data-sort=ap50]").click()
    wait_for(signed_in, lambda d: "sort=ap50" in d.current_url.replace("-ap50", ""))
    wait_for(
        signed_in,
        lambda d: (
            _result_rows(d, "ap50")[:1] == [(ascending[0].job_id, f"{ascending[0].ap50:.1f}")]
        ),
    )
    assert _result_rows(signed_in, "ap50") == shown(ascending)
    header = signed_in.find_element("css selector", "th.sortable.active")
    assert header.get_attribute("aria-sort") == "ascending"


def _rows_of(driver) -> list[str]:  # noqa: ANN001
    return driver.execute_script(
        "return [...document.querySelectorAll('#results-table tbody tr')].map(r => r.dataset.job)"
    )


def test_leaderboard_shows_its_owners_results_and_says_so(
    browser, live: LiveApi, admin: str, sample: Sample
):
    """A token sees its owner's results only, and the page says whose they are; an
    admin sees every owner's (the database's rows, read by another path)."""
    bo = live.token("bo")
    with live.client(bo) as http:
        # Another detector: no fcos row of the sample pairs with it as a baseline.
        own = submit(http, "tiny-atss-student", seed=91)
    start(live, own)
    finish(live, own, metrics=coco(30.5))
    with live.session_factory() as session:
        by_owner = session.execute(
            select(Job.owner, EvalResult.job_id).join(Job, Job.id == EvalResult.job_id)
        ).all()
    assert {o for o, _ in by_owner} >= {"ada", "bo"} and len(by_owner) <= 50
    try:
        sign_in(browser, live.url, bo)
        go(browser, live, "results")
        wait_for(browser, lambda d: text_of(d, "#results-scope") == "bo's results only")
        wait_for(browser, lambda d: _rows_of(d) == [own])
        sign_in(browser, live.url, admin)
        go(browser, live, "results")
        wait_for(browser, lambda d: text_of(d, "#results-scope") == "every owner's results")
        wait_for(browser, lambda d: len(_rows_of(d)) == len(by_owner))
        assert sorted(_rows_of(browser)) == sorted(j for _, j in by_owner)
    finally:
        sign_in(browser, live.url, admin)


def test_leaderboard_gap_chart_shares_are_the_recovered_gap(
    signed_in, live: LiveApi, sample: Sample
):
    go(signed_in, live, "results?method=inherit")
    wait_for(signed_in, lambda d: by_css(d, "#gap-chart g.gap-row"))
    shares = [
        float(g.get_attribute("data-share")) for g in by_css(signed_in, "#gap-chart g.gap-row")
    ]
    with live.client(live.token("ada", is_admin=True)) as api:
        rows = api.results(method="inherit").items
    # Which jobs are paired comes from the API; their APs from the database.
    with live.session_factory() as session:
        ap = dict(session.execute(select(EvalResult.job_id, EvalResult.ap)).tuples().all())
    expected = [
        (ap[r.job_id] - ap[r.baseline_job_id]) / (ap[r.teacher_job_id] - ap[r.baseline_job_id])
        for r in rows
        if r.teacher_job_id is not None and r.baseline_job_id is not None
    ]
    assert shares == pytest.approx(expected, abs=1e-4)
    assert len(shares) == 1


def test_grouped_leaderboard_shows_mean_and_sd_over_seeds(signed_in, live: LiveApi, sample: Sample):
    go(signed_in, live, f"results?study={sample.study}&group=config")
    wait_for(signed_in, lambda d: by_css(d, "#results-table.grouped tbody tr"))
    with live.session_factory() as session:
        aps = session.scalars(
            select(EvalResult.ap)
            .join(Job, Job.id == EvalResult.job_id)
            .where(Job.study_id == sample.study, Job.method == "pgd")
        ).all()
    mean = sum(aps) / len(aps)
    sd = (sum((a - mean) ** 2 for a in aps) / (len(aps) - 1)) ** 0.5
    cells = [
        row.find_element("css selector", "td[data-metric=ap]").text
        for row in by_css(signed_in, "#results-table tbody tr")
        if row.find_elements("xpath", "./td[5][text()='pgd']")
    ]
    assert cells == [f"{mean:.1f} ± {sd:.1f}"]


def test_csv_download_is_the_apis_csv_of_the_shown_filters(signed_in, live: LiveApi):
    go(signed_in, live, "results?method=pgd")
    wait_for(signed_in, lambda d: by_css(d, "#results-table tbody tr"))
    # Catch the file the page hands to the browser.
    signed_in.execute_script(
        "window.__blobs = []; const make = URL.createObjectURL.bind(URL);"
        "URL.createObjectURL = (blob) => { window.__blobs.push(blob); return make(blob); };"
    )
    signed_in.find_element("id", "csv").click()
    downloaded = signed_in.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "(async () => { while (!window.__blobs.length) await new Promise((r) => setTimeout(r, 50));"
        "done(await window.__blobs[0].text()); })();"
    )
    with live.client(live.token("ada", is_admin=True)) as http:
        expected = http.results_csv(method="pgd", sort="-ap")
    assert downloaded == expected
    header, *rows = downloaded.splitlines()
    with live.session_factory() as session:
        pgd_results = session.scalar(
            select(func.count()).select_from(EvalResult).where(EvalResult.method == "pgd")
        )
    assert "job_id" in header and len(rows) == pgd_results > 0


# -- submit ---------------------------------------------------------------------------------------


def test_submit_form_shows_the_apis_422_beside_the_field(signed_in, live: LiveApi):
    go(signed_in, live, "submit?preset=tiny-fcos-student")
    field = wait_for(signed_in, lambda d: d.find_element("id", "f-schedule.lr"))
    field.clear()
    field.send_keys("-0.5")
    with live.session_factory() as session:
        before = session.scalar(select(func.count()).select_from(Job))
    signed_in.find_element("id", "submit").click()
    error = wait_for(signed_in, lambda d: text_of(d, "[data-error-for='schedule.lr']"))
    # The message is the API's own for that field.
    with live.client(live.token("ada", is_admin=True)) as http:
        from pgd_core.presets import get_preset

        body = get_preset("tiny-fcos-student").model_dump(mode="json")
        body["schedule"]["lr"] = -0.5
        with pytest.raises(ProblemError) as refused:
            http.submit(body)
    assert refused.value.status == 422
    messages = [e["message"] for e in refused.value.errors if e["field"] == "schedule.lr"]
    assert messages and error == messages[0]
    assert field.get_attribute("aria-invalid") == "true"
    with live.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == before

    field.clear()
    field.send_keys("0.02")
    signed_in.find_element("id", "submit").click()
    wait_for(signed_in, lambda d: d.execute_script("return location.hash").startswith("#/jobs/"))
    job_id = signed_in.execute_script("return location.hash").removeprefix("#/jobs/")
    with live.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.spec["schedule"]["lr"] == 0.02 and job.owner == "ada"


# -- compare, sweeps and studies ---------------------------------------------------------------


def test_compare_overlays_each_jobs_curve_and_diffs_their_specs(
    signed_in, live: LiveApi, sample: Sample
):
    ids = [sample.students["pgd"], sample.students["inherit"]]
    go(signed_in, live, f"compare?ids={','.join(ids)}")
    wait_for(signed_in, lambda d: by_css(d, "#compare-curves path.series"))
    loss = by_css(signed_in, "#compare-curves figure.chart")[0]
    drawn = {
        p.get_attribute("data-name"): int(p.get_attribute("data-points"))
        for p in loss.find_elements("css selector", "path.series")
    }
    assert sorted(drawn.values()) == sorted(len(_points(live, i, "loss")) for i in ids)
    differing = [
        row.find_element("tag name", "td").text for row in by_css(signed_in, "#spec-diff tbody tr")
    ]
    assert differing == ["method"]


def test_sweep_grid_shows_each_cells_state_and_result(signed_in, live: LiveApi, sample: Sample):
    go(signed_in, live, f"sweeps/{sample.sweep}")
    cells = wait_for(signed_in, lambda d: by_css(d, "#sweep-grid .cell"))
    with live.session_factory() as session:
        jobs = session.execute(select(Job.id, Job.state).where(Job.sweep_id == sample.sweep)).all()
        results = dict(session.execute(select(EvalResult.job_id, EvalResult.ap)).tuples().all())
    assert len(cells) == len(jobs) == 4
    for job_id, state in jobs:
        cell = signed_in.find_element("css selector", f"#sweep-grid .cell[data-job='{job_id}']")
        assert state in cell.text
        if job_id in results:
            assert f"AP {results[job_id]:.1f}" in cell.text
    # "Its results": the leaderboard filtered to the sweep, nothing else.
    signed_in.find_element("link text", "Its results").click()
    wait_for(signed_in, lambda d: by_css(d, "#sweep-chip") and by_css(d, "#results-table tbody tr"))
    shown = {row.get_attribute("data-job") for row in by_css(signed_in, "#results-table tbody tr")}
    assert shown == {job_id for job_id, _ in jobs if job_id in results}
    assert len(shown) == 2


def test_empty_and_unreachable_states(browser, tmp_path: Path):
    with live_api(tmp_path / "empty") as empty:
        sign_in(browser, empty.url, empty.token("dora"))
        wait_for(browser, lambda d: text_of(d, ".empty h2") == "No jobs yet")
        go(browser, empty, "results")
        wait_for(browser, lambda d: text_of(d, ".empty h2") == "No results yet")
        # The API goes away under a loaded dashboard: a page whose data cannot be
        # fetched, and a page whose module was never loaded, both say so.
        empty.stop()
        go(browser, empty, "sweeps")
        assert "API unreachable" in wait_for(browser, lambda d: text_of(d, "#load-failed"))
        go(browser, empty, "jobs")
        problem = wait_for(browser, lambda d: text_of(d, ".problem"))
        assert "API unreachable" in problem


def test_first_screen_is_marked_for_the_benchmark(signed_in, live: LiveApi):
    go(signed_in, live, "results")
    signed_in.refresh()
    wait_for(
        signed_in,
        lambda d: d.execute_script(
            "return performance.getEntriesByName('pgd:first-screen').length"
        ),
    )
    start_ms = signed_in.execute_script(
        "return performance.getEntriesByName('pgd:first-screen')[0].startTime"
    )
    assert 0 < start_ms < 30_000


# -- what each model costs ------------------------------------------------------------------------


def test_leaderboard_costs_and_the_pareto_front_are_the_apis(
    signed_in, live: LiveApi, sample: Sample
):
    go(signed_in, live, "results?detector=fcos&dataset=shapes")
    wait_for(signed_in, lambda d: by_css(d, "#pareto figure[data-cost=flops] circle.point"))
    with live.session_factory() as session:
        stored = {
            r.job_id: r
            for r in session.execute(
                select(EvalResult.job_id, EvalResult.ap, EvalResult.flops, EvalResult.latency_ms)
            )
        }
    # The cells: the database's numbers, formatted.
    for row in by_css(signed_in, "#results-table tbody tr"):
        r = stored[row.get_attribute("data-job")]
        flops = row.find_element("css selector", "td[data-cost=flops]").text
        latency = row.find_element("css selector", "td[data-cost=latency_ms]").text
        assert flops == ("–" if r.flops is None else f"{r.flops / 1e9:.2f}")
        assert latency == ("–" if r.latency_ms is None else f"{r.latency_ms:.1f}")
    teacher, pgd = stored[sample.teacher], stored[sample.students["pgd"]]
    versus = text_of(signed_in, f"tr[data-job='{sample.students['pgd']}'] td[data-cost=vs-teacher]")
    assert versus == (
        f"{pgd.flops / teacher.flops:.2f}x FLOPs · {teacher.latency_ms / pgd.latency_ms:.1f}x "
        f"faster · {pgd.ap - teacher.ap:+.1f} AP"
    )
    # The charts: one dot per measured result, the front's dots those the API names,
    # and the front computed here from the stored numbers.
    measured = [r for r in stored.values() if r.latency_ms is not None and r.ap is not None]
    for cost in ("latency_ms", "flops"):
        figure = f"#pareto figure[data-cost={cost}]"
        dots = {c.get_attribute("data-job") for c in by_css(signed_in, f"{figure} circle.point")}
        front = {
            c.get_attribute("data-job") for c in by_css(signed_in, f"{figure} circle.point.front")
        }
        assert dots == {r.job_id for r in measured}
        value = (lambda r: r.latency_ms) if cost == "latency_ms" else (lambda r: r.flops)
        undominated = {
            r.job_id
            for r in measured
            if not any(
                value(o) <= value(r) and o.ap >= r.ap and (value(o) < value(r) or o.ap > r.ap)
                for o in measured
            )
        }
        assert front == undominated
        path = by_css(signed_in, f"{figure} path.front")[0]
        assert path.get_attribute("data-points") == str(len(front))
