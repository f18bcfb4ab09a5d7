"""POST /jobs and /sweeps check datasets, teachers and checkpoints before storing anything."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgd_core.data.manifest import MANIFEST_NAME
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service.db.models import Job, Sweep

Headers = dict[str, str]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=1, num_val=1, max_objects=1)
    broken = data_root / "broken"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_text('{"format": "coco"}')
    weights_root = tmp_path_factory.mktemp("weights")
    (weights_root / "fcos-teacher.pth").write_bytes(b"weights")
    yield from migrated_app(
        request.param,
        tmp_path_factory,
        data_root=data_root,
        weights_root=weights_root,
        broker_url="redis://127.0.0.1:1/0",  # down: accepted jobs stay queued
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def owner() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def alice(app: FastAPI, owner: str) -> Headers:
    return bearer(app, owner)


def _spec(name: str = "tiny-fcos-pgd", **changes: Any) -> dict[str, Any]:
    return get_preset(name).model_dump(mode="json") | changes


def _add_job(
    app: FastAPI, state: str, preset: str = "tiny-fcos-teacher", *, owner: str, **values: Any
) -> str:
    """A job of ``owner`` stored directly, with the preset's spec."""
    spec = get_preset(preset)
    fields: dict[str, Any] = {
        "kind": spec.kind,
        "detector": spec.detector,
        "dataset": spec.dataset.name,
        "method": spec.method,
        "spec": spec.model_dump(mode="json"),
        "spec_hash": spec.spec_hash(),
        "owner": owner,
        "max_attempts": 3,
        "state": state,
    }
    fields.update(values)
    job = Job(**fields)
    with app.state.session_factory() as session:
        session.add(job)
        session.commit()
        return job.id


def _counts(app: FastAPI) -> tuple[int, int]:
    with app.state.session_factory() as session:
        jobs = session.scalar(sa.select(sa.func.count()).select_from(Job)) or 0
        sweeps = session.scalar(sa.select(sa.func.count()).select_from(Sweep)) or 0
    return jobs, sweeps


def _rejected(
    app: FastAPI, client: httpx.Client, headers: Headers, spec: dict[str, Any]
) -> list[dict[str, str]]:
    """POST /jobs, expect 422 problem+json and nothing stored; return its errors."""
    before = _counts(app)
    response = client.post("/jobs", json=spec, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["detail"] == "; ".join(f"{e['field']}: {e['message']}" for e in body["errors"])
    assert _counts(app) == before
    return body["errors"]


def test_unknown_dataset(app: FastAPI, client: httpx.Client, alice: Headers) -> None:
    spec = _spec("tiny-fcos-student", dataset={"name": "nope", "img_scale": [160, 160]})
    assert _rejected(app, client, alice, spec) == [
        {"field": "dataset.name", "message": "no dataset 'nope' is registered on this server"}
    ]


def test_broken_dataset_is_rejected_without_server_paths(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    spec = _spec("tiny-fcos-student", dataset={"name": "broken"})
    errors = _rejected(app, client, alice, spec)
    assert errors == [
        {
            "field": "dataset.name",
            "message": "dataset 'broken' is registered but unusable "
            "(its manifest or files are invalid; see the server log)",
        }
    ]


def test_unknown_splits(app: FastAPI, client: httpx.Client, alice: Headers) -> None:
    dataset = {"name": "shapes", "train_split": "trainval", "val_split": "test"}
    assert _rejected(app, client, alice, _spec("tiny-fcos-student", dataset=dataset)) == [
        {
            "field": "dataset.train_split",
            "message": "dataset 'shapes' has no split 'trainval' (available: train, val)",
        },
        {
            "field": "dataset.val_split",
            "message": "dataset 'shapes' has no split 'test' (available: train, val)",
        },
    ]


def test_unknown_teacher_ref(app: FastAPI, client: httpx.Client, alice: Headers) -> None:
    assert _rejected(app, client, alice, _spec(teacher_ref="ghost")) == [
        {"field": "teacher_ref", "message": "no job and no registered checkpoint is named 'ghost'"}
    ]


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_teacher_job_must_have_succeeded_or_be_unfinished(
    app: FastAPI, client: httpx.Client, alice: Headers, state: str, owner: str
) -> None:
    teacher = _add_job(app, state, owner=owner)
    assert _rejected(app, client, alice, _spec(teacher_ref=teacher)) == [
        {
            "field": "teacher_ref",
            "message": f"job {teacher} is {state}, not succeeded or unfinished",
        }
    ]


@pytest.mark.parametrize("state", ["waiting", "queued", "running"])
def test_a_student_of_an_unfinished_teacher_waits_for_it(
    app: FastAPI, client: httpx.Client, alice: Headers, state: str, owner: str
) -> None:
    teacher = _add_job(app, state, owner=owner)
    response = client.post("/jobs", json=_spec(teacher_ref=teacher), headers=alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["state"], job["teacher_job_id"]) == ("waiting", teacher)


def test_teacher_job_must_make_a_checkpoint(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    evaluation = _add_job(app, "succeeded", kind="evaluate", owner=owner)
    assert _rejected(app, client, alice, _spec(teacher_ref=evaluation)) == [
        {
            "field": "teacher_ref",
            "message": f"job {evaluation} is an 'evaluate' job; "
            "only train or distill jobs make a checkpoint",
        }
    ]


def test_teacher_job_must_have_the_same_detector(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    teacher = _add_job(app, "succeeded", "tiny-atss-teacher", owner=owner)
    assert _rejected(app, client, alice, _spec(teacher_ref=teacher)) == [
        {
            "field": "teacher_ref",
            "message": f"job {teacher} trained a 'atss' detector, not 'fcos'",
        }
    ]


def test_teacher_job_must_have_the_teacher_model(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    teacher = _add_job(app, "succeeded", owner=owner)
    spec = _spec(teacher_ref=teacher)
    spec["teacher"] = spec["teacher"] | {"pretrained": "r34-imagenet", "num_classes": 3}
    assert _rejected(app, client, alice, spec) == [
        {
            "field": "teacher_ref",
            "message": f"job {teacher}'s student model differs from this teacher: "
            "pretrained None in the job, 'r34-imagenet' here, "
            "num_classes None in the job, 3 here",
        }
    ]


def test_a_succeeded_teacher_job_of_the_caller_is_used(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    teacher = _add_job(app, "succeeded", owner=owner)
    response = client.post("/jobs", json=_spec(teacher_ref=teacher), headers=alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["teacher_job_id"], job["spec"]["teacher_ref"]) == (teacher, teacher)
    with app.state.session_factory() as session:
        assert session.scalar(sa.select(Job.teacher_job_id).where(Job.id == job["id"])) == teacher


@pytest.mark.parametrize("state", ["succeeded", "failed", "running"])
def test_another_owners_job_is_no_job_to_a_reference(
    app: FastAPI, client: httpx.Client, alice: Headers, state: str
) -> None:
    """Bob's job, whatever its state, reads as a name that does not exist: Alice can
    neither distil from it, evaluate it (and so download its weights through her
    job), nor learn its state or model from the error. An admin may use it."""
    bobs = _add_job(app, state, owner="bob")
    nothing = str(uuid.uuid4())
    for field, spec in (
        ("teacher_ref", _spec(teacher_ref=bobs)),
        ("checkpoint_ref", _spec("tiny-fcos-teacher", kind="evaluate", checkpoint_ref=bobs)),
    ):
        refused = _rejected(app, client, alice, spec)
        missing = [
            e | {"message": e["message"].replace(nothing, bobs)}
            for e in _rejected(
                app, client, alice, json.loads(json.dumps(spec).replace(bobs, nothing))
            )
        ]
        assert (
            refused
            == missing
            == [
                {
                    "field": field,
                    "message": f"no job and no registered checkpoint is named '{bobs}'",
                }
            ]
        )
    sweep = {"base": _spec(teacher_ref=bobs), "grid": {"seed": [1, 2]}}
    response = client.post("/sweeps", json=sweep, headers=alice)
    assert response.status_code == 422 and "no job and no registered checkpoint" in response.text
    admin = bearer(app, "root", is_admin=True)
    if state != "failed":
        response = client.post("/jobs", json=_spec(teacher_ref=bobs), headers=admin)
        assert response.status_code == 202, response.text
        assert response.json()["teacher_job_id"] == bobs


def test_registered_checkpoint_is_a_teacher(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    response = client.post("/jobs", json=_spec(teacher_ref="fcos-teacher"), headers=alice)
    assert response.status_code == 202, response.text
    assert (response.json()["teacher_job_id"], response.json()["state"]) == (None, "queued")


def test_several_problems_are_reported_together(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    teacher = _add_job(app, "failed", owner=owner)
    spec = _spec(teacher_ref=teacher, dataset={"name": "nope"})
    assert [e["field"] for e in _rejected(app, client, alice, spec)] == [
        "dataset.name",
        "teacher_ref",
    ]


def _evaluate(checkpoint_ref: str) -> dict[str, Any]:
    return _spec("tiny-fcos-teacher", kind="evaluate", checkpoint_ref=checkpoint_ref)


def test_evaluate_checkpoint_job_must_have_succeeded(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    running = _add_job(app, "running", owner=owner)
    assert _rejected(app, client, alice, _evaluate(running)) == [
        {"field": "checkpoint_ref", "message": f"job {running} is running, not succeeded"}
    ]
    assert _rejected(app, client, alice, _evaluate("missing")) == [
        {
            "field": "checkpoint_ref",
            "message": "no job and no registered checkpoint is named 'missing'",
        }
    ]


def test_evaluate_checkpoint_job_must_have_the_student_model(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    student = _add_job(app, "succeeded", "tiny-fcos-student", owner=owner)
    assert _rejected(app, client, alice, _evaluate(student)) == [
        {
            "field": "checkpoint_ref",
            "message": f"job {student}'s student model differs from this student: "
            "depth 18 in the job, 34 here",
        }
    ]


def test_evaluate_a_succeeded_job_or_a_checkpoint(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    trained = _add_job(app, "succeeded", owner=owner)
    for ref in (trained, "fcos-teacher"):
        response = client.post("/jobs", json=_evaluate(ref), headers=alice)
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["kind"], body["spec"]["checkpoint_ref"]) == ("evaluate", ref)
        assert body["teacher_job_id"] is None


def test_sweep_rejects_a_combination_naming_an_unknown_dataset(
    app: FastAPI, client: httpx.Client, alice: Headers
) -> None:
    before = _counts(app)
    body = {"base": _spec(), "grid": {"dataset.name": ["shapes", "nope"], "seed": [0, 1]}}
    response = client.post("/sweeps", json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["combination"] == {"dataset.name": "nope", "seed": 0}
    assert problem["errors"] == [
        {"field": "dataset.name", "message": "no dataset 'nope' is registered on this server"}
    ]
    assert problem["detail"] == (
        "grid: the combination {'dataset.name': 'nope', 'seed': 0} is rejected: "
        "dataset.name: no dataset 'nope' is registered on this server"
    )
    assert _counts(app) == before


def test_sweep_rejects_a_teacher_that_has_not_succeeded(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    before = _counts(app)
    good, bad = _add_job(app, "succeeded", owner=owner), _add_job(app, "failed", owner=owner)
    body = {"base": _spec(), "grid": {"teacher_ref": [good, bad]}}
    response = client.post("/sweeps", json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"field": "teacher_ref", "message": f"job {bad} is failed, not succeeded or unfinished"}
    ]
    assert _counts(app) == (before[0] + 2, before[1])


def test_sweep_jobs_point_to_their_teacher_job(
    app: FastAPI, client: httpx.Client, alice: Headers, owner: str
) -> None:
    teacher = _add_job(app, "succeeded", owner=owner)
    body = {"base": _spec(teacher_ref=teacher), "grid": {"seed": [0, 1]}}
    response = client.post("/sweeps", json=body, headers=alice)
    assert response.status_code == 202, response.text
    with app.state.session_factory() as session:
        teachers = session.scalars(
            sa.select(Job.teacher_job_id).where(Job.id.in_(response.json()["jobs"]))
        ).all()
    assert teachers == [teacher, teacher]
