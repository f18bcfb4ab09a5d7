"""Property-based fuzzing of the OpenAPI surface (hypothesis, no schemathesis).

Every operation listed in ``/openapi.json`` gets random path ids, query
parameters and headers; ``POST /jobs`` also gets arbitrary JSON and mutations
of a valid preset spec. Whatever arrives, the API must never answer 5xx, every
4xx must be RFC 9457 problem+json with a matching ``status``, and a rejected
submission must store nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service.db.models import Job

PRESET = "tiny-fcos-pgd"
EXAMPLES = {"sqlite": 60, "postgresql": 25}
# Function-scoped fixtures are built once per test, not per example: every
# example here only reads them or adds rows that the assertions account for.
FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"}
SKIPPED_OPERATIONS = {("get", "/jobs/{job_id}/events")}  # a stream: fuzzed with a short limit below


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def app(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=2, num_val=1, max_objects=2)
    yield from migrated_app(
        backend,
        tmp_path_factory,
        data_root=data_root,
        work_root=tmp_path_factory.mktemp("work"),
        events_poll_s=0.05,
        events_max_s=0.3,
    )


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http


@pytest.fixture(scope="module")
def auth(app: FastAPI) -> dict[str, str]:
    return bearer(app, f"fuzz-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def openapi(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _count_jobs(app: FastAPI) -> int:
    with app.state.session_factory() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Job)) or 0


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if 400 <= response.status_code < 500:
        assert response.headers["content-type"].startswith("application/problem+json"), (
            response.status_code,
            response.headers.get("content-type"),
            response.text,
        )
        body = response.json()
        assert body["status"] == response.status_code
        assert {"type", "title", "detail"} <= set(body)


# ---- strategies ---------------------------------------------------------------------------

ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "' OR 1=1 --",
            "%00",
            "../../etc/passwd",
            "\u202e\u0000\ufeff",
            "💥" * 20,
            "-1",
            "0",
            "1e309",
            "NaN",
            "null",
            "x" * 300,
            "queued",
            "fcos",
            "pgd",
        ]
    ),
)
# Header values travel as latin-1 bytes; keep to what httpx can send.
HEADER_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
    st.sampled_from(["", " ", "x" * 129, "x" * 128, "Bearer", "Bearer ", "Basic YWJj", "\\u00e9"]),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, -1e308, 2**63, 2**63 - 1, -(2**63), 1e-320]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, ODD_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _deep(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every path into a nested JSON value (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _parent(doc: object, path: tuple) -> Any:
    for part in path[:-1]:
        doc = doc[part]  # type: ignore[index]
    return doc


@st.composite
def mutated_specs(draw: st.DrawFn) -> object:
    spec = get_preset(PRESET).model_dump(mode="json")
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(spec)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(spec, path)
        action = draw(st.sampled_from(["delete", "replace", "number", "string", "nest", "extra"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif action == "number":
            parent[path[-1]] = draw(NUMBERS)
        elif action == "string":
            parent[path[-1]] = draw(ODD_TEXT)
        elif action == "nest":
            parent[path[-1]] = _deep(draw(st.integers(min_value=1, max_value=200)))
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(JSON_VALUES)
    return spec


BODIES = st.one_of(JSON_VALUES, mutated_specs(), mutated_specs())


def _raw_body(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _path_value(draw: st.DrawFn) -> str:
    return draw(st.one_of(ODD_TEXT, st.uuids().map(str))) or "x"


@st.composite
def operation_requests(draw: st.DrawFn, openapi: dict[str, Any]) -> tuple[str, str, dict, dict]:
    operations = sorted(
        (method, path)
        for path, item in openapi["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
        and (method, path) not in SKIPPED_OPERATIONS
    )
    method, template = draw(st.sampled_from(operations))
    operation = openapi["paths"][template][method]
    url = template
    params: dict[str, object] = {}
    headers: dict[str, str] = {}
    for parameter in operation.get("parameters", []):
        name, where = parameter["name"], parameter["in"]
        if where == "path":
            url = url.replace("{" + name + "}", quote(_path_value(draw), safe=""))
        elif where == "query" and draw(st.booleans()):
            params[name] = draw(st.one_of(ODD_TEXT, NUMBERS.map(str)))
        elif where == "header" and draw(st.booleans()):
            headers[name] = draw(HEADER_TEXT)
    for name in draw(st.lists(st.sampled_from(["limit", "cursor", "sort", "offset"]), max_size=2)):
        params.setdefault(name, draw(ODD_TEXT))
    return method, url, params, headers


AUTH_GARBAGE = st.one_of(
    HEADER_TEXT,
    HEADER_TEXT.map(lambda text: "Bearer " + text),
    st.sampled_from(["Bearer pgd_" + "0" * 40, "bearer", "Token abc"]),
)


# ---- tests ----------------------------------------------------------------------------------


def test_post_jobs_fuzzed_bodies_never_5xx_and_store_nothing_when_rejected(
    backend: str, app: FastAPI, client: httpx.Client, auth: dict[str, str]
) -> None:
    @settings(max_examples=EXAMPLES[backend], **FUZZ)
    @given(body=BODIES, key=st.one_of(st.none(), HEADER_TEXT))
    def run(body: object, key: str | None) -> None:
        headers = {**auth, "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        before = _count_jobs(app)
        response = client.post("/jobs", content=_raw_body(body), headers=headers)
        _check(response)
        after = _count_jobs(app)
        if response.status_code >= 400:
            assert after == before, response.text
        else:
            assert after - before in (0, 1)

    run()


def test_post_jobs_garbage_payloads(app: FastAPI, client: httpx.Client, auth: dict) -> None:
    before = _count_jobs(app)
    valid = _raw_body(get_preset(PRESET).model_dump(mode="json"))
    for content, content_type in [
        (b"", "application/json"),
        (b"{", "application/json"),
        (b"NaN", "application/json"),
        (b'{"kind": NaN}', "application/json"),
        (b'{"a": Infinity}', "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"[" * 5000 + b"]" * 5000, "application/json"),
        (valid, "text/plain"),
        (valid, "application/x-www-form-urlencoded"),
    ]:
        response = client.post(
            "/jobs", content=content, headers={**auth, "Content-Type": content_type}
        )
        _check(response)
        assert response.status_code >= 400
    assert _count_jobs(app) == before


def test_every_operation_fuzzed_params_and_headers(
    backend: str, client: httpx.Client, openapi: dict[str, Any], auth: dict[str, str]
) -> None:
    @settings(max_examples=EXAMPLES[backend] * 2, **FUZZ)
    @given(request=operation_requests(openapi), with_auth=st.booleans(), garbage=AUTH_GARBAGE)
    def run(request: tuple[str, str, dict, dict], with_auth: bool, garbage: str) -> None:
        method, url, params, headers = request
        headers = {**headers, **(auth if with_auth else {"Authorization": garbage})}
        body = b"{}" if method == "post" else None
        response = client.request(method, url, params=params, headers=headers, content=body)
        _check(response)
        if not with_auth and url not in PUBLIC:
            assert response.status_code in (401, 403, 404, 405, 422), response.text

    run()


def test_list_jobs_fuzzed_filters_and_pagination(
    backend: str, client: httpx.Client, auth: dict[str, str]
) -> None:
    names = ["state", "kind", "detector", "dataset", "method", "limit", "cursor"]

    @settings(max_examples=EXAMPLES[backend], **FUZZ)
    @given(params=st.dictionaries(st.sampled_from(names), st.one_of(ODD_TEXT, NUMBERS.map(str))))
    def run(params: dict[str, str]) -> None:
        _check(client.get("/jobs", params=params, headers=auth))
        _check(client.get("/results", params=params, headers=auth))

    run()


def test_events_stream_with_fuzzed_ids(
    backend: str, client: httpx.Client, auth: dict[str, str]
) -> None:
    @settings(max_examples=min(EXAMPLES[backend], 20), **FUZZ)
    @given(job_id=ODD_TEXT)
    def run(job_id: str) -> None:
        url = "/jobs/" + quote(job_id or "x", safe="") + "/events"
        _check(client.get(url, headers=auth, timeout=5))

    run()


def test_nul_characters_are_rejected_not_crashing(
    app: FastAPI, client: httpx.Client, auth: dict[str, str]
) -> None:
    """PostgreSQL text cannot hold NUL: found by the fuzzing above (a 500 before the fix)."""
    before = _count_jobs(app)
    for response in (
        client.get("/jobs", params={"state": "\x00"}, headers=auth),
        client.get("/jobs", params={"detector": "a\x00b"}, headers=auth),
        client.get("/jobs/%00", headers=auth),
        client.post("/jobs/%00/cancel", headers=auth),
        client.post("/jobs/%00/retry", headers=auth),
        client.get("/jobs/%00/events", headers=auth),
        client.post("/jobs", json={**_spec_with_nul()}, headers=auth),
    ):
        _check(response)
        assert response.status_code in (200, 404, 422), response.text
    assert _count_jobs(app) == before


def _spec_with_nul() -> dict[str, Any]:
    spec = get_preset(PRESET).model_dump(mode="json")
    spec["dataset"]["name"] = "sha\x00pes"
    return spec
