"""``/tokens``: a caller lists, creates and revokes their tokens; an admin everyone's.
Checked on SQLite and PostgreSQL against the rows in ``api_tokens``, and a
revocation against a second API process on the same database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.auth import hash_token, store_token
from pgd_service.db.models import ApiToken


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    yield from migrated_app(request.param, tmp_path_factory)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


def _row(app: FastAPI, token_id: int) -> ApiToken:
    with app.state.session_factory() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        session.expunge(row)
        return row


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_created_token_works_and_is_stored_as_its_hash_only(
    app: FastAPI, client: httpx.Client
) -> None:
    alice = bearer(app, "alice-t")
    before = datetime.now(UTC)
    response = client.post("/tokens", json={"name": "laptop", "expires_in_days": 30}, headers=alice)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/tokens/{body['id']}"
    secret = body["token"]
    assert secret.startswith("pgd_")
    row = _row(app, body["id"])
    assert row.token_hash == hash_token(secret) and secret not in row.token_hash
    assert (row.owner, row.name, row.is_admin, row.revoked_at) == ("alice-t", "laptop", False, None)
    assert row.expires_at is not None
    # 30 days from the request, to the second
    expected = before + timedelta(days=30)
    assert abs((row.expires_at - expected).total_seconds()) < 5
    assert datetime.fromisoformat(body["expires_at"]) == row.expires_at
    me = client.get("/me", headers=_auth(secret))
    assert me.status_code == 200 and me.json() == {
        "owner": "alice-t",
        "is_admin": False,
        "results": "own",
    }


def test_list_shows_the_callers_tokens_never_a_secret(app: FastAPI, client: httpx.Client) -> None:
    owner = "lister"
    headers = bearer(app, owner)
    made = [
        client.post("/tokens", json={"name": f"t{i}"}, headers=headers).json() for i in range(2)
    ]
    bearer(app, "someone-else")
    listed = client.get("/tokens", headers=headers)
    assert listed.status_code == 200
    rows = listed.json()
    with app.state.session_factory() as session:
        ids = session.scalars(
            sa.select(ApiToken.id).where(ApiToken.owner == owner).order_by(ApiToken.id.desc())
        ).all()
    assert [r["id"] for r in rows] == list(ids)  # newest first, only this owner's
    assert all("token" not in r and "token_hash" not in r for r in rows)
    text = listed.text
    assert all(m["token"] not in text for m in made)
    current = [r for r in rows if r["current"]]
    assert len(current) == 1 and current[0]["name"] is None  # the bearer() one
    assert {r["name"] for r in rows} == {None, "t0", "t1"}


def test_only_an_admin_creates_for_others_or_admin_tokens(
    app: FastAPI, client: httpx.Client
) -> None:
    user = bearer(app, "plain")
    for body, detail in (
        ({"owner": "victim"}, "only an admin may create a token for another owner"),
        ({"is_admin": True}, "only an admin may create an admin token"),
    ):
        refused = client.post("/tokens", json=body, headers=user)
        assert refused.status_code == 403
        assert refused.json()["detail"] == detail
    with app.state.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).where(ApiToken.owner == "victim")) == 0
    admin = bearer(app, "root-t", is_admin=True)
    made = client.post("/tokens", json={"owner": "victim", "is_admin": True}, headers=admin)
    assert made.status_code == 201, made.text
    assert client.get("/me", headers=_auth(made.json()["token"])).json() == {
        "owner": "victim",
        "is_admin": True,
        "results": "all",
    }
    everyone = client.get("/tokens", headers=admin).json()
    assert {"plain", "victim", "root-t"} <= {r["owner"] for r in everyone}
    only = client.get("/tokens", params={"owner": "plain"}, headers=admin).json()
    assert {r["owner"] for r in only} == {"plain"}
    # a non-admin's owner filter cannot widen what they see
    mine = client.get("/tokens", params={"owner": "victim"}, headers=user).json()
    assert {r["owner"] for r in mine} == {"plain"}


def test_revoked_token_is_refused_at_the_next_request(app: FastAPI, client: httpx.Client) -> None:
    headers = bearer(app, "revoker")
    made = client.post("/tokens", json={"name": "old"}, headers=headers).json()
    old = _auth(made["token"])
    assert client.get("/jobs", headers=old).status_code == 200
    revoked = client.delete(f"/tokens/{made['id']}", headers=headers)
    assert revoked.status_code == 200
    stamp = revoked.json()["revoked_at"]
    assert datetime.fromisoformat(stamp) == _row(app, made["id"]).revoked_at
    refused = client.get("/jobs", headers=old)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "invalid or revoked token"
    again = client.delete(f"/tokens/{made['id']}", headers=headers)
    assert again.status_code == 200 and again.json()["revoked_at"] == stamp
    assert made["id"] not in [r["id"] for r in client.get("/tokens", headers=headers).json()]
    listed = client.get("/tokens", params={"revoked": True}, headers=headers).json()
    assert [r["revoked_at"] for r in listed if r["id"] == made["id"]] == [stamp]


def test_revoking_with_the_token_itself_signs_it_out(app: FastAPI, client: httpx.Client) -> None:
    made = client.post("/tokens", json={}, headers=bearer(app, "selfrevoke")).json()
    own = _auth(made["token"])
    assert client.delete(f"/tokens/{made['id']}", headers=own).status_code == 200
    assert client.get("/me", headers=own).status_code == 401


def test_another_owners_token_is_not_found(app: FastAPI, client: httpx.Client) -> None:
    alice = bearer(app, "alice-r")
    target = client.post("/tokens", json={}, headers=alice).json()
    bob = bearer(app, "bob-r")
    for token_id in (target["id"], 2**62, 2**70):
        missing = client.delete(f"/tokens/{token_id}", headers=bob)
        assert missing.status_code == 404, (token_id, missing.text)
        assert missing.json()["detail"] == f"token {token_id} not found"
    assert _row(app, target["id"]).revoked_at is None
    admin = bearer(app, "admin-r", is_admin=True)
    assert client.delete(f"/tokens/{target['id']}", headers=admin).status_code == 200
    assert client.get("/me", headers=_auth(target["token"])).status_code == 401
    assert client.delete("/tokens/abc", headers=bob).status_code == 422


def test_expired_token_is_refused_saying_so(app: FastAPI, client: httpx.Client) -> None:
    url = app.state.settings.database_url
    gone = store_token(url, owner="exp", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    refused = client.get("/me", headers=_auth(gone))
    assert refused.status_code == 401 and refused.json()["detail"] == "token expired"
    soon = store_token(url, owner="exp", expires_at=datetime.now(UTC) + timedelta(seconds=1.5))
    assert client.get("/me", headers=_auth(soon)).status_code == 200
    time.sleep(1.6)
    assert client.get("/me", headers=_auth(soon)).json()["detail"] == "token expired"


def test_expiry_holds_even_for_a_cached_token(
    app: FastAPI, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.settings, "token_cache_s", 60.0)
    url = app.state.settings.database_url
    soon = store_token(url, owner="exp2", expires_at=datetime.now(UTC) + timedelta(seconds=1.5))
    assert client.get("/me", headers=_auth(soon)).status_code == 200  # now cached
    time.sleep(1.6)
    refused = client.get("/me", headers=_auth(soon))
    assert refused.status_code == 401 and refused.json()["detail"] == "token expired"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"expires_in_days": -3}, "expires_in_days"),
        ({"expires_in_days": 400}, "expires_in_days"),
        ({"expires_in_days": "soon"}, "expires_in_days"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"owner": ""}, "owner"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_bodies_name_their_field(
    app: FastAPI, client: httpx.Client, body: dict[str, object], field: str
) -> None:
    headers = bearer(app, "badbody")
    with app.state.session_factory() as session:
        before = session.scalar(sa.select(sa.func.count()).select_from(ApiToken))
    response = client.post("/tokens", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    with app.state.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == before


def test_infinite_expiry_is_refused(app: FastAPI, client: httpx.Client) -> None:
    response = client.post(
        "/tokens",
        content=b'{"expires_in_days": 1e400}',
        headers=bearer(app, "inf") | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["expires_in_days"]


def test_revocation_reaches_another_api_process_at_once(tmp_path: Path) -> None:
    """Two API processes on one database: a token revoked through one is refused by
    the other on its very next request (no per-process cache keeps it alive)."""
    from ui_helpers import live_api

    with live_api(tmp_path / "a") as first:
        admin = first.token("two-proc", is_admin=True)
        with live_api(tmp_path / "b", first.database_url) as second:
            with first.client(admin) as one:
                made = one.create_token(name="shared")
            with second.client(made.token) as other:
                assert other.me()["owner"] == "two-proc"
                assert other.me()["owner"] == "two-proc"  # used twice: would be cached
            with first.client(admin) as one:
                one.revoke_token(made.id)
            response = httpx.get(f"{second.url}/me", headers=_auth(made.token), timeout=10)
            assert response.status_code == 401
            assert response.json()["detail"] == "invalid or revoked token"


def test_a_token_never_makes_one_that_outlives_it(app: FastAPI, client: httpx.Client) -> None:
    url = app.state.settings.database_url
    ends = datetime.now(UTC) + timedelta(days=2)
    short = _auth(store_token(url, owner="leaky", expires_at=ends))
    for body in ({}, {"expires_in_days": 30}):
        made = client.post("/tokens", json=body, headers=short)
        assert made.status_code == 201, made.text
        assert abs((_row(app, made.json()["id"]).expires_at - ends).total_seconds()) < 1
    sooner = client.post("/tokens", json={"expires_in_days": 1}, headers=short).json()
    assert _row(app, sooner["id"]).expires_at < ends - timedelta(hours=23)


def test_a_plain_token_neither_sees_nor_revokes_its_owners_admin_token(
    app: FastAPI, client: httpx.Client
) -> None:
    admin = client.post(
        "/tokens", json={"owner": "shared-name", "is_admin": True},
        headers=bearer(app, "root-x", is_admin=True),
    ).json()  # fmt: skip
    plain = bearer(app, "shared-name")
    listed = client.get("/tokens", headers=plain).json()
    assert admin["id"] not in {t["id"] for t in listed} and len(listed) == 1
    refused = client.delete(f"/tokens/{admin['id']}", headers=plain)
    assert refused.status_code == 404
    assert _row(app, admin["id"]).revoked_at is None
    assert client.get("/me", headers=_auth(admin["token"])).json()["is_admin"] is True


def test_list_says_which_tokens_expired(app: FastAPI, client: httpx.Client) -> None:
    url = app.state.settings.database_url
    me = _auth(store_token(url, owner="lister-states"))
    store_token(url, owner="lister-states", expires_at=datetime.now(UTC) - timedelta(days=1))
    made = client.post("/tokens", json={}, headers=me).json()
    client.delete(f"/tokens/{made['id']}", headers=me)
    listed = client.get("/tokens?revoked=true", headers=me).json()
    states = sorted(t["state"] for t in listed)
    assert states == ["active", "expired", "revoked"], listed
