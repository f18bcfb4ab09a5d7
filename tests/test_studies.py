"""Students that wait for their teacher, and ``/studies``, on SQLite and PostgreSQL.

The broker refuses connections here, so queued jobs stay unsent (``enqueued_at``
empty) for the re-sender; that is enough to see every state change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service import maintenance
from pgd_service.db.models import Job, Study
from pgd_service.lifecycle import settle_students

Headers = dict[str, str]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=1, num_val=1, max_objects=1)
    yield from migrated_app(
        request.param, tmp_path_factory, data_root=data_root, broker_url="redis://127.0.0.1:1/0"
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def alice(app: FastAPI) -> Headers:
    return bearer(app, f"alice-{uuid.uuid4().hex[:6]}")


def _spec(name: str, **changes: object) -> dict:
    data = get_preset(name).model_dump(mode="json")
    data.update(changes)
    return data


def _post(client: httpx.Client, headers: Headers, spec: dict) -> dict:
    response = client.post("/jobs", json=spec, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def _set_state(app: FastAPI, job_id: str, state: str, reason: str | None = None) -> None:
    with app.state.session_factory() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(state=state, reason=reason))
        session.commit()


def _job(app: FastAPI, job_id: str) -> Job:
    with app.state.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _teacher_and_student(client: httpx.Client, alice: Headers) -> tuple[str, str]:
    teacher = _post(client, alice, _spec("tiny-fcos-teacher"))["id"]
    student = _post(client, alice, _spec("tiny-fcos-pgd", teacher_ref=teacher))
    assert (student["state"], student["teacher_job_id"]) == ("waiting", teacher)
    return teacher, student["id"]


def test_a_waiting_student_is_queued_when_its_teacher_succeeds(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    teacher, student = _teacher_and_student(client, alice)
    stored = _job(app, student)
    assert stored.task_id is None and stored.enqueued_at is None
    # Nothing happens while the teacher runs.
    _set_state(app, teacher, "running")
    with app.state.session_factory() as session:
        assert settle_students(session, app.state.settings, teacher).released == []
    assert _job(app, student).state == "waiting"
    _set_state(app, teacher, "succeeded")
    with app.state.session_factory() as session:
        settled = settle_students(session, app.state.settings, teacher)
    assert settled.released == [student] and settled.failed == []
    job = _job(app, student)
    # Queued; the broker is down, so it is left unsent for the re-sender.
    assert (job.state, job.reason, job.enqueued_at) == ("queued", None, None)
    # A second pass changes nothing.
    with app.state.session_factory() as session:
        assert settle_students(session, app.state.settings, teacher).released == []


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_a_waiting_student_fails_with_its_teacher(
    app: FastAPI, client: httpx.Client, alice: Headers, ending: str
) -> None:
    teacher, student = _teacher_and_student(client, alice)
    _set_state(app, teacher, ending, reason="error" if ending == "failed" else None)
    # The maintenance pass settles it (here nobody else did).
    report = maintenance.maintain(app.state.session_factory, app.state.settings)
    assert student in report.teacher_failed
    job = _job(app, student)
    assert (job.state, job.reason) == ("failed", "teacher_failed")
    assert f"teacher job {teacher} ended {ending}" in (job.message or "")
    assert job.finished_at is not None
    # The API shows the reason; a retry is refused while the teacher is not usable.
    shown = client.get(f"/jobs/{student}", headers=alice).json()
    assert (shown["state"], shown["reason"]) == ("failed", "teacher_failed")
    retry = client.post(f"/jobs/{student}/retry", headers=alice)
    assert retry.status_code == 409
    assert f"teacher job {teacher}, which is {ending}" in retry.json()["detail"]


def test_cancelling_a_queued_teacher_fails_its_students_at_once(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    teacher, student = _teacher_and_student(client, alice)
    response = client.post(f"/jobs/{teacher}/cancel", headers=alice)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "cancelled"
    job = _job(app, student)
    assert (job.state, job.reason) == ("failed", "teacher_failed")
    # Retrying the teacher, then the student: the student waits again.
    assert client.post(f"/jobs/{teacher}/retry", headers=alice).status_code == 202
    again = client.post(f"/jobs/{student}/retry", headers=alice)
    assert again.status_code == 202, again.text
    assert (again.json()["state"], again.json()["attempt"]) == ("waiting", 1)


def test_a_waiting_student_can_be_cancelled(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    teacher, student = _teacher_and_student(client, alice)
    response = client.post(f"/jobs/{student}/cancel", headers=alice)
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    _set_state(app, teacher, "succeeded")
    with app.state.session_factory() as session:
        assert settle_students(session, app.state.settings, teacher).released == []
    assert _job(app, student).state == "cancelled"


def test_a_student_of_a_finished_teacher_is_queued_at_once(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    teacher = _post(client, alice, _spec("tiny-fcos-teacher"))["id"]
    _set_state(app, teacher, "succeeded")
    student = _post(client, alice, _spec("tiny-fcos-pgd", teacher_ref=teacher))
    assert student["state"] == "queued"


# --- /studies -------------------------------------------------------------


def _study(**changes: object) -> dict:
    teacher = _spec("tiny-fcos-teacher")
    # The student template: a distill spec; method, seed and teacher are replaced.
    student = _spec("tiny-fcos-pgd")
    body = {
        "name": "s1",
        "teacher": teacher,
        "student": student,
        "methods": ["none", "inherit", "pgd"],
        "seeds": [0, 1],
    }
    body.update(changes)
    return body


def _study_jobs(app: FastAPI, study_id: str) -> list[Job]:
    with app.state.session_factory() as session:
        jobs = list(session.scalars(sa.select(Job).where(Job.study_id == study_id)))
        for job in jobs:
            session.expunge(job)
        return jobs


def test_a_study_queues_its_teacher_and_controls_and_the_rest_wait(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    response = client.post("/studies", json=_study(), headers=alice)
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["Location"] == f"/studies/{created['id']}"
    jobs = {job.id: job for job in _study_jobs(app, created["id"])}
    assert set(jobs) == set(created["jobs"]) and len(jobs) == 1 + 3 * 2
    teacher = jobs[created["teacher_job_id"]]
    assert (teacher.kind, teacher.state, teacher.spec["student"]["depth"]) == (
        "train",
        "queued",
        34,
    )
    by = {(j.method, j.seed): j for j in jobs.values() if j.id != teacher.id}
    assert set(by) == {(m, s) for m in ("none", "inherit", "pgd") for s in (0, 1)}
    for seed in (0, 1):
        control, inherit, pgd = by[("none", seed)], by[("inherit", seed)], by[("pgd", seed)]
        assert (control.kind, control.state, control.teacher_job_id) == ("train", "queued", None)
        for student in (inherit, pgd):
            assert (student.kind, student.state) == ("distill", "waiting")
            assert student.teacher_job_id == teacher.id
            assert student.spec["teacher_ref"] == teacher.id
            assert student.spec["teacher"] == teacher.spec["student"]
            # Each student's control is the none job of its seed.
            assert student.baseline_hash == control.config_hash
        # The template's settings (the tiny preset's alpha, a tenth of the paper's).
        assert pgd.spec["distill"]["alpha"] == pytest.approx(0.004)
    # Seeds differ, configurations do not.
    assert by[("pgd", 0)].config_hash == by[("pgd", 1)].config_hash
    assert by[("pgd", 0)].spec_hash != by[("pgd", 1)].spec_hash

    shown = client.get(f"/studies/{created['id']}", headers=alice).json()
    assert shown["total"] == 7 and shown["states"]["waiting"] == 4
    assert shown["states"]["queued"] == 3 and shown["done"] is False
    assert shown["methods"] == ["none", "inherit", "pgd"] and shown["seeds"] == [0, 1]
    assert shown["table"] == []  # no results yet
    # Another owner sees nothing.
    other = client.get(f"/studies/{created['id']}", headers=bearer(app, "mallory"))
    assert other.status_code == 404

    # The teacher fails: every waiting student fails with the reason.
    _set_state(app, teacher.id, "failed", reason="error")
    with app.state.session_factory() as session:
        settled = settle_students(session, app.state.settings, teacher.id)
    assert len(settled.failed) == 4
    shown = client.get(f"/studies/{created['id']}", headers=alice).json()
    failed = [j for j in shown["jobs"] if j["state"] == "failed"]
    assert len(failed) == 5 and all(
        j["reason"] == "teacher_failed" for j in failed if j["role"] == "student"
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"teacher_ref": "some-checkpoint"}, "teacher_ref"),  # both teacher and teacher_ref
        ({"seeds": [0, 0]}, "seeds"),
        ({"methods": ["pgd", "nonsense"]}, "methods.1"),
        ({"methods": []}, "methods"),
        ({"seeds": list(range(100))}, "seeds"),  # 301 jobs
    ],
)
def test_a_malformed_study_is_rejected(
    app: FastAPI, client: httpx.Client, alice: Headers, changes: dict, field: str
) -> None:
    before = _counts(app)
    response = client.post("/studies", json=_study(**changes), headers=alice)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert _counts(app) == before


def _counts(app: FastAPI) -> tuple[int, int]:
    with app.state.session_factory() as session:
        return (
            session.scalar(sa.select(sa.func.count()).select_from(Job)) or 0,
            session.scalar(sa.select(sa.func.count()).select_from(Study)) or 0,
        )


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (
            lambda b: b["student"].update(kind="train", method="none", teacher=None, distill=None),
            "student.kind",
            "'distill'",
        ),
        (lambda b: b["teacher"]["dataset"].update(name="other"), "teacher.dataset.name", "other"),
        (
            lambda b: b["teacher"].update(kind="evaluate", checkpoint_ref="x"),
            "teacher.kind",
            "train",
        ),
        (
            lambda b: [b[r]["dataset"].update(name="nope") for r in ("teacher", "student")],
            "teacher.dataset.name",
            "nope",
        ),
        (
            # A template without teacher (method none) is valid; inherit is not
            # with another neck width than the teacher's.
            lambda b: b["student"].update(
                method="none",
                teacher=None,
                distill=None,
                student=dict(b["student"]["student"], neck_channels=64),
            ),
            "methods.1",
            "init_student",
        ),
    ],
)
def test_an_impossible_study_stores_nothing(
    app: FastAPI, client: httpx.Client, alice: Headers, mutate, field: str, message: str
) -> None:
    body = _study()
    mutate(body)
    before = _counts(app)
    response = client.post("/studies", json=body, headers=alice)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["field"] == field and message in e["message"] for e in errors), errors
    assert _counts(app) == before


def test_a_study_on_a_finished_teacher_job_queues_every_student(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    teacher = _post(client, alice, _spec("tiny-fcos-teacher"))["id"]
    _set_state(app, teacher, "succeeded")
    student = _spec("tiny-fcos-pgd")
    body = {"teacher_ref": teacher, "student": student, "methods": ["none", "pgd"], "seeds": [3]}
    response = client.post("/studies", json=body, headers=alice)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["teacher_job_id"] == teacher and len(created["jobs"]) == 2
    jobs = _study_jobs(app, created["id"])
    assert sorted((j.method, j.state) for j in jobs) == [("none", "queued"), ("pgd", "queued")]


def test_the_chart_of_a_study_without_results_says_so(
    app: FastAPI, client: httpx.Client, alice: Headers, tmp_path
) -> None:
    from pgd_core.evaluation.png import read_plot_text

    created = client.post("/studies", json=_study(name="empty"), headers=alice).json()
    response = client.get(f"/studies/{created['id']}/chart.png", headers=alice)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    (tmp_path / "chart.png").write_bytes(response.content)
    text = read_plot_text(tmp_path / "chart.png")
    assert text == {
        "Title": "study empty: AP over seeds\nno AP results yet",
        "Description": "",
    }
    bad = client.get(f"/studies/{created['id']}/chart.png?metric=nope", headers=alice)
    assert bad.status_code == 422
    assert client.get("/studies/nope/chart.png", headers=alice).status_code == 404
