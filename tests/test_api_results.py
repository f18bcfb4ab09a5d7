"""``GET /results``: the leaderboard, its teacher/baseline deltas and the CSV export,
on SQLite and PostgreSQL migrated by Alembic (rows inserted directly in the database)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app, sent_statements
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes.results import CSV_COLUMNS
from api.services import results as service
from pgd_service.db.models import EvalResult, Job

DATASET = "coco-lb"
NOISE_DATASET = "voc-lb"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _model(depth: int) -> dict[str, Any]:
    return {"depth": depth, "base_channels": 64, "neck_channels": 256, "head_channels": 256}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    yield from migrated_app(request.param, tmp_path_factory, data_root=data_root)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def headers(app: FastAPI) -> dict[str, str]:
    """An admin reader: it sees every owner's results (test_results_are_their_owners'
    checks what the others see)."""
    return bearer(app, f"reader-{uuid.uuid4().hex[:8]}", is_admin=True)


def _add(
    session: Any,
    *,
    kind: str,
    student: int,
    method: str = "none",
    dataset: str = DATASET,
    detector: str = "fcos",
    state: str = "succeeded",
    minutes: int = 0,
    teacher_job_id: str | None = None,
    teacher: int | None = None,
    owner: str = "someone-else",
    config_hash: str | None = None,
    baseline_hash: str | None = None,
    **metrics: float,
) -> str:
    spec: dict[str, Any] = {
        "kind": kind,
        "detector": detector,
        "dataset": {"name": dataset},
        "student": _model(student),
        "teacher": _model(teacher) if teacher else None,
        "method": method,
        "seed": 0,
    }
    when = T0 + timedelta(minutes=minutes)
    job = Job(
        kind=kind,
        detector=detector,
        dataset=dataset,
        method=method,
        spec=spec,
        spec_hash=uuid.uuid4().hex,
        state=state,
        owner=owner,
        max_attempts=3,
        teacher_job_id=teacher_job_id,
        config_hash=config_hash,
        baseline_hash=baseline_hash,
        seed=0,
        created_at=when,
        finished_at=when + timedelta(minutes=30),
    )
    session.add(job)
    session.flush()
    session.add(
        EvalResult(
            job_id=job.id,
            dataset=dataset,
            detector=detector,
            method=method,
            metrics={"bbox_mAP": metrics.get("ap")},
            created_at=when + timedelta(minutes=31),
            **metrics,
        )
    )
    session.flush()
    return job.id


@pytest.fixture(scope="module")
def jobs(app: FastAPI) -> dict[str, str]:
    """A teacher (R101), baselines (R50, one older, one failed, one R18) and two students."""
    with app.state.session_factory() as session:
        ids: dict[str, str] = {}
        ids["teacher"] = _add(session, kind="train", student=101, ap=44.0, mr=0.40, ji=0.80)
        ids["old_baseline"] = _add(session, kind="train", student=50, minutes=1, ap=37.0)
        ids["baseline"] = _add(
            session, kind="train", student=50, minutes=2, ap=38.2, ap50=58.0, mr=0.48, ji=0.74
        )
        # More recent but not eligible: another architecture, a failed run.
        ids["r18"] = _add(session, kind="train", student=18, minutes=3, ap=33.0)
        ids["failed"] = _add(session, kind="train", student=50, minutes=4, state="failed", ap=10.0)
        ids["pgd"] = _add(
            session,
            kind="distill",
            student=50,
            teacher=101,
            method="pgd",
            minutes=5,
            teacher_job_id=ids["teacher"],
            ap=42.5,
            ap50=61.0,
            mr=0.44,
            ji=0.77,
        )
        # A student with no matching baseline: teacher numbers only.
        ids["r34_mse"] = _add(
            session,
            kind="distill",
            student=34,
            teacher=101,
            method="feature_mse",
            minutes=6,
            teacher_job_id=ids["teacher"],
            ap=40.0,
        )
        # Noise: another dataset, another detector.
        ids["noise"] = _add(
            session, kind="train", student=50, dataset=NOISE_DATASET, minutes=7, ap=99.0
        )
        ids["noise_atss"] = _add(
            session, kind="train", student=50, detector="atss", minutes=8, ap=50.0
        )
        session.commit()
    return ids


def _get(client: httpx.Client, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = client.get("/results", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _ids(rows: list[dict[str, Any]], jobs: dict[str, str]) -> list[str]:
    names = {job_id: name for name, job_id in jobs.items()}
    return [names[row["job_id"]] for row in rows]


def test_default_sort_is_ap_descending(
    client: httpx.Client, headers: dict[str, str], jobs: dict[str, str]
) -> None:
    rows = _get(client, headers, dataset=DATASET, detector="fcos")
    assert _ids(rows, jobs) == [
        "teacher",
        "pgd",
        "r34_mse",
        "baseline",
        "old_baseline",
        "r18",
        "failed",
    ]


def test_sort_ascending_and_by_other_columns(
    client: httpx.Client, headers: dict[str, str], jobs: dict[str, str]
) -> None:
    rows = _get(client, headers, dataset=DATASET, detector="fcos", sort="ap")
    assert _ids(rows, jobs)[0] == "failed" and _ids(rows, jobs)[-1] == "teacher"
    # NULLs last in both directions (only three rows have a miss rate).
    rows = _get(client, headers, dataset=DATASET, sort="mr")
    assert _ids(rows, jobs)[:3] == ["teacher", "pgd", "baseline"]
    rows = _get(client, headers, dataset=DATASET, sort="-mr")
    assert _ids(rows, jobs)[:3] == ["baseline", "pgd", "teacher"]
    rows = _get(client, headers, dataset=DATASET, sort="-created_at")
    assert _ids(rows, jobs)[:2] == ["noise_atss", "r34_mse"]


def test_filters(client: httpx.Client, headers: dict[str, str], jobs: dict[str, str]) -> None:
    assert _ids(_get(client, headers, method="pgd"), jobs) == ["pgd"]
    assert _ids(_get(client, headers, kind="distill"), jobs) == ["pgd", "r34_mse"]
    assert _ids(_get(client, headers, dataset=NOISE_DATASET), jobs) == ["noise"]
    assert _ids(_get(client, headers, detector="atss"), jobs) == ["noise_atss"]
    assert _get(client, headers, dataset="nope") == []
    every = _ids(_get(client, headers), jobs)
    assert every[0] == "noise" and set(every) == set(jobs)


def test_distilled_row_carries_teacher_baseline_and_deltas(
    client: httpx.Client, headers: dict[str, str], jobs: dict[str, str]
) -> None:
    (row,) = _get(client, headers, method="pgd")
    assert row["teacher_job_id"] == jobs["teacher"]
    assert row["baseline_job_id"] == jobs["baseline"]  # the newest eligible one
    assert (row["teacher_ap"], row["baseline_ap"], row["baseline_ap50"]) == (44.0, 38.2, 58.0)
    assert row["delta_ap_vs_baseline"] == pytest.approx(4.3, abs=1e-9)
    assert row["delta_ap_vs_teacher"] == pytest.approx(-1.5, abs=1e-9)
    assert row["delta_mr_vs_baseline"] == pytest.approx(-0.04, abs=1e-9)
    assert row["delta_mr_vs_teacher"] == pytest.approx(0.04, abs=1e-9)
    assert row["delta_ji_vs_baseline"] == pytest.approx(0.03, abs=1e-9)
    assert row["delta_ji_vs_teacher"] == pytest.approx(-0.03, abs=1e-9)
    assert row["kind"] == "distill" and row["metrics"] == {"bbox_mAP": 42.5}


def test_distilled_row_without_baseline_and_plain_rows(
    client: httpx.Client, headers: dict[str, str], jobs: dict[str, str]
) -> None:
    (mse,) = _get(client, headers, method="feature_mse")
    assert mse["teacher_ap"] == 44.0 and mse["delta_ap_vs_teacher"] == pytest.approx(-4.0)
    assert mse["baseline_job_id"] is None and mse["delta_ap_vs_baseline"] is None
    assert mse["delta_mr_vs_teacher"] is None  # the student has no miss rate
    for row in _get(client, headers, kind="train"):
        assert row["teacher_job_id"] is None and row["baseline_job_id"] is None
        assert all(row[k] is None for k in row if k.startswith(("teacher_", "delta_")))


def test_pagination_by_offset(
    client: httpx.Client, headers: dict[str, str], jobs: dict[str, str]
) -> None:
    params = {"dataset": DATASET, "detector": "fcos", "limit": 3}
    first = client.get("/results", params=params, headers=headers).json()
    assert (first["limit"], first["offset"], first["next_offset"]) == (3, 0, 3)
    last = client.get("/results", params={**params, "offset": 6}, headers=headers).json()
    assert _ids(last["items"], jobs) == ["failed"] and last["next_offset"] is None
    bad = client.get("/results", params={"limit": 501}, headers=headers)
    assert bad.status_code == 422


def test_constant_number_of_queries(
    app: FastAPI,
    client: httpx.Client,
    headers: dict[str, str],
    jobs: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The page's own statements: with a token cache, the token is not read again.
    monkeypatch.setattr(app.state.settings, "token_cache_s", 60.0)
    _get(client, headers)  # the token is cached
    app.state.results_cache.clear()
    with sent_statements(app) as seen:
        rows = _get(client, headers)
    # The version, the page and, on SQLite only, the candidate baselines.
    postgresql = app.state.engine.dialect.name == "postgresql"
    assert len(seen) == (2 if postgresql else 3), seen
    assert "FROM LEADERBOARD_VERSION" in seen[0]
    with sent_statements(app) as seen:
        again = _get(client, headers)
    assert again == rows  # the same page, from the cache: only the version is read
    assert len(seen) == 1 and "FROM LEADERBOARD_VERSION" in seen[0], seen


CACHE_DATASET = "cache-lb"


def _page(client: httpx.Client, headers: dict[str, str], **extra: str) -> httpx.Response:
    params = {"dataset": CACHE_DATASET, "sort": "-ap"}
    return client.get("/results", params=params, headers={**headers, **extra})


def test_etag_and_if_none_match(
    app: FastAPI, client: httpx.Client, headers: dict[str, str]
) -> None:
    first = _page(client, headers)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"lb') and first.headers["cache-control"] == "private, no-cache"
    again = _page(client, headers, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    for header in (f"W/{etag}", f'"other", {etag}', "*"):
        assert _page(client, headers, **{"If-None-Match": header}).status_code == 304
    assert _page(client, headers, **{"If-None-Match": '"lb0-0"'}).status_code == 200
    # Another query, another tag.
    other = client.get("/results", params={"dataset": CACHE_DATASET, "sort": "ap"}, headers=headers)
    assert other.headers["etag"] != etag


def _version(app: FastAPI) -> int:
    with app.state.session_factory() as session:
        return session.scalar(sa.text("SELECT version FROM leaderboard_version"))


def test_a_new_result_is_seen_at_once(
    app: FastAPI, client: httpx.Client, headers: dict[str, str]
) -> None:
    before = _page(client, headers)
    version = _version(app)
    with app.state.session_factory() as session:
        job_id = _add(session, kind="train", student=50, dataset=CACHE_DATASET, ap=12.5)
        session.commit()
    assert _version(app) == version + 1
    after = _page(client, headers, **{"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert job_id in [row["job_id"] for row in after.json()["items"]]
    assert job_id not in [row["job_id"] for row in before.json()["items"]]

    # A changed result (an UPDATE the API never makes, done by hand) is seen too.
    with app.state.session_factory() as session:
        session.execute(sa.update(EvalResult).where(EvalResult.job_id == job_id).values(ap=77.0))
        session.commit()
    top = _page(client, headers).json()["items"][0]
    assert (top["job_id"], top["ap"]) == (job_id, 77.0)


def test_cache_can_be_disabled(tmp_path_factory: pytest.TempPathFactory) -> None:
    for uncached in migrated_app("sqlite", tmp_path_factory, results_cache_entries=0):
        auth = bearer(uncached, "nocache", is_admin=True)
        with TestClient(uncached) as http:
            http.get("/results", headers=auth)
            with sent_statements(uncached) as seen:
                response = http.get("/results", headers=auth)
        assert response.status_code == 200 and response.json()["items"] == []
        assert sum("FROM EVAL_RESULTS" in s for s in seen) == 1, seen


def _csv(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.text)))


def test_csv_export(client: httpx.Client, headers: dict[str, str], jobs: dict[str, str]) -> None:
    params = {"dataset": DATASET, "detector": "fcos", "sort": "-ap", "limit": 1}
    table = _csv(client.get("/results", params={**params, "format": "csv"}, headers=headers))
    header, rows = table[0], table[1:]
    assert tuple(header) == CSV_COLUMNS and "delta_ap_vs_baseline" in header
    # Every matching row (limit does not apply), in the requested order.
    assert [r[header.index("job_id")] for r in rows] == [
        row["job_id"] for row in _get(client, headers, **{**params, "limit": 50})
    ]
    pgd = next(r for r in rows if r[header.index("job_id")] == jobs["pgd"])
    assert float(pgd[header.index("delta_ap_vs_baseline")]) == pytest.approx(4.3, abs=1e-9)
    assert pgd[header.index("baseline_job_id")] == jobs["baseline"]
    teacher = next(r for r in rows if r[header.index("job_id")] == jobs["teacher"])
    assert teacher[header.index("teacher_ap")] == ""
    via_accept = client.get("/results", params=params, headers={**headers, "Accept": "text/csv"})
    assert _csv(via_accept) == table


def test_bad_sort_is_422_naming_sort(client: httpx.Client, headers: dict[str, str]) -> None:
    for sort in ("loss", "-", "--ap"):
        response = client.get("/results", params={"sort": sort}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in response.json()["errors"]] == ["sort"]
    response = client.get("/results", params={"sort": "loss", "format": "csv"}, headers=headers)
    assert response.status_code == 422


@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer pgd_nope"}])
def test_results_need_a_token(client: httpx.Client, auth: dict[str, str]) -> None:
    for params in ({}, {"format": "csv"}):
        response = client.get("/results", params=params, headers=auth)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


def test_export_walks_in_chunks_up_to_the_cap(
    app: FastAPI, jobs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_CHUNK", 2)
    filters = service.ResultFilters(dataset=DATASET, detector="fcos")
    with app.state.session_factory() as session:
        every = [r["job_id"] for r in service.iter_rows(db_session=session, filters=filters)]
        capped = [
            r["job_id"] for r in service.iter_rows(db_session=session, filters=filters, cap=5)
        ]
    assert len(every) == 7 and len(set(every)) == 7
    assert capped == every[:5]


def test_page_cache_keeps_one_version_and_its_newest_pages() -> None:
    cache = service.PageCache(entries=2)
    cache.put(3, ("a",), b"A3")
    cache.put(3, ("b",), b"B3")
    assert (cache.get(3, ("a",)), cache.get(3, ("b",))) == (b"A3", b"B3")
    assert cache.get(2, ("a",)) is None and cache.get(4, ("a",)) is None
    cache.get(3, ("a",))  # "a" is now the most recently used
    cache.put(3, ("c",), b"C3")
    assert cache.get(3, ("b",)) is None and cache.get(3, ("a",)) == b"A3"
    cache.put(2, ("d",), b"D2")  # a slower request of an older version: dropped
    assert cache.get(2, ("d",)) is None and cache.get(3, ("c",)) == b"C3"
    cache.put(4, ("a",), b"A4")  # a newer version forgets the older pages
    assert cache.get(3, ("c",)) is None and cache.get(4, ("a",)) == b"A4"
    cache.put(4, ("big",), b"x" * (service.PageCache.MAX_BODY + 1))
    assert cache.get(4, ("big",)) is None
    off = service.PageCache(entries=0)
    off.put(1, ("a",), b"A")
    assert off.get(1, ("a",)) is None


def test_etag_names_the_version_and_the_query() -> None:
    key = service.page_key(service.ResultFilters(dataset="coco"), "-ap", 50, 0)
    assert service.page_etag(7, key) == service.page_etag(7, key)
    assert service.page_etag(7, key) != service.page_etag(8, key)
    other = service.page_key(service.ResultFilters(dataset="coco"), "-ap", 50, 50)
    assert service.page_etag(7, key) != service.page_etag(7, other)


NAN_DATASET = "nan-lb"


@pytest.fixture
def odd_values(app: FastAPI, jobs: dict[str, str]) -> Iterator[None]:
    """Results holding NaN and infinities (not JSON numbers), a distilled row among them."""
    nan, inf = float("nan"), float("inf")
    with app.state.session_factory() as session:
        teacher = _add(session, kind="train", student=101, dataset=NAN_DATASET, ap=1.0, mr=0.3)
        baseline = _add(session, kind="train", student=50, dataset=NAN_DATASET, minutes=1, ap=2.0)
        student = _add(
            session,
            kind="distill",
            student=50,
            teacher=101,
            method="pgd",
            dataset=NAN_DATASET,
            minutes=2,
            teacher_job_id=teacher,
            ap=30.0,
            ap50=3.0,
            mr=0.25,
        )
        # Not a distilled row although it names a teacher job: no teacher columns.
        _add(
            session,
            kind="evaluate",
            student=50,
            dataset=NAN_DATASET,
            minutes=3,
            teacher_job_id=teacher,
            ap=5.0,
        )
        # The columns only: the metrics JSON cannot hold them.
        for job_id, values in (
            (teacher, {"ap": inf}),
            (baseline, {"ap": nan, "ji": -inf}),
            (student, {"ap50": nan}),
        ):
            session.execute(
                sa.update(EvalResult).where(EvalResult.job_id == job_id).values(**values)
            )
        session.commit()
    yield
    with app.state.session_factory() as session:
        session.execute(sa.delete(Job).where(Job.dataset == NAN_DATASET))
        session.commit()


def test_pages_write_values_json_cannot_hold_as_null(app: FastAPI, odd_values: None) -> None:
    """NaN and infinities are not JSON: a page writes them as null, and they sort as
    the database sorts them (PostgreSQL puts NaN above every number, then infinity;
    SQLite stores NaN as NULL)."""
    nan_rows = _nan_page(app)
    if app.state.engine.dialect.name == "postgresql":
        assert [(r["kind"], r["ap"]) for r in nan_rows] == [
            ("train", None),
            ("train", None),
            ("distill", 30.0),
            ("evaluate", 5.0),
        ]
    distilled = next(r for r in nan_rows if r["kind"] == "distill")
    evaluated = next(r for r in nan_rows if r["kind"] == "evaluate")
    assert evaluated["teacher_job_id"] is None and evaluated["teacher_mr"] is None
    assert (distilled["ap50"], distilled["teacher_ap"], distilled["teacher_mr"]) == (
        None,
        None,
        0.3,
    )
    assert distilled["delta_ap_vs_baseline"] is None and distilled["baseline_ap"] is None
    assert distilled["delta_mr_vs_teacher"] == pytest.approx(0.25 - 0.3)


def _nan_page(app: FastAPI) -> list[dict[str, Any]]:
    """The NaN dataset's page through the route, as a client reads it."""
    with TestClient(app) as client:
        response = client.get(
            "/results",
            params={"dataset": NAN_DATASET, "limit": 10},
            headers=bearer(app, "nan", is_admin=True),
        )
    assert response.status_code == 200, response.text
    return json.loads(response.content)["items"]


def test_results_are_their_owners_and_a_baseline_is_never_anothers(
    app: FastAPI, client: httpx.Client
) -> None:
    """A token sees the results of its owner's jobs (as it sees the jobs): in the
    page, the CSV, the seed groups and the Pareto front. A distilled row's no-KD
    baseline (and its group's same-seed control) is its owner's own, even when
    another owner trained a newer one of the same student, and whoever reads it: an
    admin sees every row, so does everyone with PGD_RESULTS_VISIBILITY=everyone, and
    Alice's row is compared with Alice's run in all three views."""
    dataset = f"owners-{uuid.uuid4().hex[:6]}"
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    student_alone, distilled = f"base-{dataset}", f"pgd-{dataset}"
    with app.state.session_factory() as session:
        cost = {"latency_ms": 10.0, "params": 1000, "flops": 2e9}
        common = {"dataset": dataset, **cost}
        ids = {
            "a_teacher": _add(session, kind="train", student=101, owner=alice, ap=44.0, **common),
            # The same configuration and seed trained by both: Bob's run is newer.
            "a_base": _add(
                session, kind="train", student=50, minutes=1, owner=alice, ap=38.0,
                config_hash=student_alone, **common,
            ),
            "b_base": _add(
                session, kind="train", student=50, minutes=5, owner=bob, ap=30.0,
                config_hash=student_alone, **common,
            ),
        }  # fmt: skip
        ids["a_pgd"] = _add(
            session, kind="distill", student=50, teacher=101, method="pgd", dataset=dataset,
            minutes=6, teacher_job_id=ids["a_teacher"], owner=alice, ap=41.0,
            config_hash=distilled, baseline_hash=student_alone, **cost,
        )  # fmt: skip
        session.commit()
    with app.state.session_factory() as session:
        owners = dict(
            session.execute(sa.select(Job.id, Job.owner).where(Job.dataset == dataset)).all()
        )

    def alices_row(http: httpx.Client | TestClient, headers: dict[str, str]) -> dict[str, Any]:
        (row,) = [r for r in _get(http, headers, dataset=dataset) if r["job_id"] == ids["a_pgd"]]
        return row

    def alices_group(http: httpx.Client | TestClient, headers: dict[str, str]) -> dict[str, Any]:
        groups = http.get(
            "/results", params={"dataset": dataset, "group_by": "config"}, headers=headers
        ).json()["items"]
        (group,) = [g for g in groups if g["config_hash"] == distilled]
        return group

    def compared_with_alices_own(row: dict[str, Any], group: dict[str, Any]) -> None:
        assert row["baseline_job_id"] == ids["a_base"]  # Bob's newer baseline is not hers
        assert row["baseline_ap"] == 38.0
        assert row["delta_ap_vs_baseline"] == pytest.approx(41.0 - 38.0)
        assert group["baseline_ap_mean"] == 38.0 and group["delta_ap_n"] == 1
        assert group["delta_ap_mean"] == pytest.approx(41.0 - 38.0)
        assert group["gap_recovered_ap"] == pytest.approx((41.0 - 38.0) / (44.0 - 38.0))

    as_alice = bearer(app, alice)
    rows = _get(client, as_alice, dataset=dataset)
    assert {r["job_id"] for r in rows} == {j for j, o in owners.items() if o == alice}
    compared_with_alices_own(alices_row(client, as_alice), alices_group(client, as_alice))
    exported = client.get(
        "/results", params={"dataset": dataset, "format": "csv"}, headers=as_alice
    )
    assert {r["job_id"] for r in csv.DictReader(io.StringIO(exported.text))} == {
        r["job_id"] for r in rows
    }
    groups = client.get(
        "/results", params={"dataset": dataset, "group_by": "config"}, headers=as_alice
    ).json()["items"]
    assert sum(g["n"] for g in groups) == 3 and ids["b_base"] not in repr(groups)
    front = client.get(
        "/results/pareto", params={"detector": "fcos", "dataset": dataset}, headers=as_alice
    ).json()
    assert {p["job_id"] for p in front["points"]} == {ids["a_teacher"], ids["a_base"], ids["a_pgd"]}
    as_bob = bearer(app, bob)
    assert {r["job_id"] for r in _get(client, as_bob, dataset=dataset)} == {ids["b_base"]}
    bobs_groups = client.get(
        "/results", params={"dataset": dataset, "group_by": "config"}, headers=as_bob
    ).json()["items"]
    assert [g["job_ids"] for g in bobs_groups] == [[ids["b_base"]]]
    admin = bearer(app, "root", is_admin=True)
    assert {r["job_id"] for r in _get(client, admin, dataset=dataset)} == set(owners)
    compared_with_alices_own(alices_row(client, admin), alices_group(client, admin))
    shared = app.state.settings.model_copy(update={"results_visibility": "everyone"})
    team = create_app(shared)
    try:
        with TestClient(team) as http:
            as_bob_in_team = bearer(team, bob)
            assert {r["job_id"] for r in _get(http, as_bob_in_team, dataset=dataset)} == set(owners)
            compared_with_alices_own(
                alices_row(http, as_bob_in_team), alices_group(http, as_bob_in_team)
            )
            # /me says which of the two a token gets (the dashboard shows it).
            assert http.get("/me", headers=as_bob_in_team).json()["results"] == "all"
        assert client.get("/me", headers=as_bob).json()["results"] == "own"
    finally:
        team.state.engine.dispose()
