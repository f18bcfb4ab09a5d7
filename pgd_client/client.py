"""``Client``: the pgd REST API from Python (httpx; no server code, no torch).

    from pgd_client import Client
    pgd = Client("http://localhost:8000", token="pgd_...")      # or Client.from_env()
    job = pgd.submit(pgd.preset("tiny-fcos-student"))
    for event in pgd.events(job.id):                              # live, resumes by itself
        print(event.event, event.data)
    print(pgd.wait(job.id).state, pgd.result(job.id))

Retries: connection errors and 502/503/504 answers are retried (with backoff)
for reads, and for ``POST /jobs`` because every submission carries an
``Idempotency-Key`` (generated unless given), so a retried POST never makes a
second job. Other writes (cancel, retry) are sent once.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from pgd_client.config import load_config
from pgd_client.errors import ProblemError, Unreachable
from pgd_client.models import (
    TERMINAL_STATES,
    Artifact,
    CreatedToken,
    Event,
    GroupPage,
    Job,
    JobPage,
    MetricPoint,
    ResultPage,
    ResultRow,
    Token,
)

_RETRY_STATUS = {502, 503, 504}


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class Client:
    """One API and one token. ``retries``: extra attempts after a connection error
    or a 502/503/504 on a retry-safe call; ``backoff_s``: the first wait, doubled
    each time (a ``Retry-After`` header wins)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"Accept": "application/json", "User-Agent": "pgd-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_env(cls, **options: Any) -> Client:
        """``PGD_URL`` / ``PGD_TOKEN``, else the file ``pgd login`` wrote."""
        config = load_config()
        url = os.environ.get("PGD_URL") or config.get("url") or "http://127.0.0.1:8000"
        token = os.environ.get("PGD_TOKEN") or config.get("token")
        return cls(url, token, **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------

    def _send(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not retry or attempt >= self.retries:
                    raise Unreachable(self.url, exc) from None
                wait = self.backoff_s * 2**attempt
            else:
                if response.status_code < 400:
                    return response
                if not (retry and response.status_code in _RETRY_STATUS) or attempt >= self.retries:
                    raise _problem(response)
                wait = _retry_after(response, self.backoff_s * 2**attempt)
            attempt += 1
            time.sleep(wait)

    def _get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, retry=True, params=_clean(params)).json()

    # -- who and what -----------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        """``{"owner": ..., "is_admin": ...}`` of the token."""
        return self._get("/me")

    def presets(self) -> dict[str, dict[str, Any]]:
        """Every preset's complete spec, by name."""
        return {p["name"]: p["spec"] for p in self._get("/presets")}

    def preset(self, name: str) -> dict[str, Any]:
        """One preset's spec (a ``KeyError`` naming the known ones if there is none)."""
        presets = self.presets()
        if name not in presets:
            raise KeyError(f"no preset {name!r}; known: {', '.join(sorted(presets))}")
        return presets[name]

    # -- jobs -------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """``POST /jobs``; the same key always names the same job (retried safely)."""
        key = idempotency_key or str(uuid.uuid4())
        response = self._send(
            "POST", "/jobs", retry=True, json=dict(spec), headers={"Idempotency-Key": key}
        )
        return Job.model_validate(response.json())

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._get(f"/jobs/{job_id}"))

    def jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        detector: str | None = None,
        dataset: str | None = None,
        method: str | None = None,
        sweep: str | None = None,
        study: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first (``next_cursor`` for the next)."""
        filters = dict(state=state, kind=kind, detector=detector, dataset=dataset, method=method)
        body = self._get("/jobs", **filters, sweep=sweep, study=study, limit=limit, cursor=cursor)
        return JobPage.model_validate(body)

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        """Every matching job, newest first, page after page."""
        cursor = None
        while True:
            page = self.jobs(**filters, limit=200, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._send("POST", f"/jobs/{job_id}/cancel", retry=False).json())

    def retry(self, job_id: str) -> Job:
        return Job.model_validate(self._send("POST", f"/jobs/{job_id}/retry", retry=False).json())

    def metrics(self, job_id: str, names: list[str] | None = None) -> dict[str, list[MetricPoint]]:
        body = self._get(f"/jobs/{job_id}/metrics", name=names)
        return {
            name: [MetricPoint.model_validate(p) for p in points]
            for name, points in body["series"].items()
        }

    def logs(self, job_id: str, *, tail: int = 200) -> str:
        """The last ``tail`` lines of the job's log."""
        return self._send("GET", f"/jobs/{job_id}/logs", retry=True, params={"tail": tail}).text

    def artifacts(self, job_id: str) -> list[Artifact]:
        return [Artifact.model_validate(a) for a in self._get(f"/jobs/{job_id}/artifacts")]

    def download(self, job_id: str, name: str, dest: str | os.PathLike[str]) -> Path:
        """Write an artifact to ``dest`` (a file, or a folder to put it in); its path.
        Written to a temporary name first: a failed download leaves nothing."""
        target = Path(dest)
        if target.is_dir():
            target = target / Path(name).name
        partial = target.with_name(f".{target.name}.part")
        with self._http.stream("GET", f"/jobs/{job_id}/artifacts/{name}") as response:
            if response.status_code >= 400:
                response.read()
                raise _problem(response)
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        partial.replace(target)
        return target

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """Server-sent events until the job has finished. A dropped connection is
        resumed with ``Last-Event-ID``: no event is lost or repeated."""
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            finished = False
            try:
                with self._http.stream(
                    "GET", f"/jobs/{job_id}/events", headers=headers, timeout=None
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _problem(response)
                    for event in _parse_events(response.iter_lines()):
                        failures = 0
                        if event.id:
                            last_event_id = event.id
                        if event.event == "state" and event.data.get("state") in TERMINAL_STATES:
                            finished = True
                        yield event
            except (httpx.TransportError, httpx.StreamError) as exc:
                failures += 1
                if failures > self.retries:
                    raise Unreachable(self.url, exc) from None
                time.sleep(self.backoff_s * 2 ** (failures - 1))
                continue
            if finished:
                return
            # The server closed the stream early (its longest stream time): go on.

    def wait(self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0) -> Job:
        """The job once it has finished (polling); ``TimeoutError`` after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout_s} s")
            time.sleep(poll_s)

    # -- results ----------------------------------------------------------------------

    def results(
        self,
        *,
        sort: str = "-ap",
        limit: int = 50,
        offset: int = 0,
        group_by: str | None = None,
        **filters: str | None,
    ) -> ResultPage | GroupPage:
        """One leaderboard page (``group_by="config"``: grouped over seeds).
        Filters: dataset, detector, method, kind, study, sweep, job."""
        body = self._get(
            "/results", sort=sort, limit=limit, offset=offset, group_by=group_by, **filters
        )
        return GroupPage.model_validate(body) if group_by else ResultPage.model_validate(body)

    def result(self, job_id: str) -> ResultRow | None:
        """The job's evaluation result with its teacher and baseline, if it has one."""
        page = self.results(job=job_id, limit=1)
        assert isinstance(page, ResultPage)
        return page.items[0] if page.items else None

    def results_csv(self, *, sort: str = "-ap", group_by: str | None = None, **filters: Any) -> str:
        params = _clean({"sort": sort, "group_by": group_by, "format": "csv", **filters})
        return self._send("GET", "/results", retry=True, params=params).text

    def pareto(
        self,
        detector: str,
        dataset: str,
        *,
        cost: str = "latency_ms",
        metric: str = "ap",
        device: str | None = None,
    ) -> dict[str, Any]:
        """``GET /results/pareto``: every measured result of ``detector`` on ``dataset``
        (on ``device`` when given) as a (cost, metric) point, and the job ids of the
        accuracy/cost front."""
        return self._get(
            "/results/pareto",
            detector=detector,
            dataset=dataset,
            cost=cost,
            metric=metric,
            device=device,
        )

    # -- sweeps and studies -----------------------------------------------------------

    def submit_sweep(
        self, base: Mapping[str, Any], grid: Mapping[str, list[Any]]
    ) -> dict[str, Any]:
        """``POST /sweeps``: ``{"id", "jobs"}`` (not retried: a sweep has no key)."""
        body = {"base": dict(base), "grid": dict(grid)}
        return self._send("POST", "/sweeps", retry=False, json=body).json()

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._get(f"/sweeps/{sweep_id}")

    def submit_study(self, request: Mapping[str, Any]) -> dict[str, Any]:
        return self._send("POST", "/studies", retry=False, json=dict(request)).json()

    def study(self, study_id: str) -> dict[str, Any]:
        return self._get(f"/studies/{study_id}")

    def study_chart(self, study_id: str, *, metric: str = "ap") -> bytes:
        """The study's bar chart (PNG): mean per method, one-sd bars, the teacher's line."""
        path = f"/studies/{study_id}/chart.png"
        return self._send("GET", path, retry=True, params={"metric": metric}).content

    def studies(self, *, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """``GET /studies``: the caller's studies, newest first, with their progress."""
        return self._get("/studies", limit=limit, offset=offset)

    # -- tokens -----------------------------------------------------------------------

    def tokens(self, *, owner: str | None = None, revoked: bool = False) -> list[Token]:
        """The caller's tokens (an admin's: everyone's, or ``owner``'s), newest first."""
        rows = self._get("/tokens", owner=owner, revoked=revoked or None)
        return [Token.model_validate(row) for row in rows]

    def create_token(
        self,
        *,
        name: str | None = None,
        expires_in_days: float | None = None,
        owner: str | None = None,
        is_admin: bool = False,
    ) -> CreatedToken:
        """A new token (not retried: a lost answer would leave a token nobody has seen)."""
        body = _clean({"name": name, "expires_in_days": expires_in_days, "owner": owner}) | (
            {"is_admin": True} if is_admin else {}
        )
        response = self._send("POST", "/tokens", retry=False, json=body)
        return CreatedToken.model_validate(response.json())

    def revoke_token(self, token_id: int) -> Token:
        """Revoke a token; it is refused from the next request on (revoking twice is fine)."""
        response = self._send("DELETE", f"/tokens/{token_id}", retry=True)
        return Token.model_validate(response.json())


def _problem(response: httpx.Response) -> ProblemError:
    try:
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        body = {"title": response.reason_phrase, "detail": response.text[:200]}
    return ProblemError(response.status_code, body)


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(30.0, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default


def _parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """text/event-stream lines to events (comments and keep-alives skipped)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(
                    id=fields.get("id"),
                    event=fields.get("event", "message"),
                    data=json.loads("\n".join(data)),
                )
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
