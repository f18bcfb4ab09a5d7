"""api.services.redis_push: the API's own LPUSH over RESP, against real Redis servers
(the machine's, and private ones for passwords and restarts)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import uvloop
from db_helpers import flushed_redis
from worker_helpers import PrivateRedis, free_port

from api.services.redis_push import PushError, RedisListPusher, command

REDIS_DB = 11
URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
T = TypeVar("T")


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    yield from flushed_redis(URL)


# uvicorn runs the API on uvloop when it is installed (it is a dependency), whose
# transports differ from asyncio's: every test runs on both loops.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
Run = Callable[..., Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """``run(body, url=URL, timeout=2.0)``: ``body(pusher)`` on a fresh event loop of
    the parameter's kind, the pusher closed afterwards."""

    def call(
        body: Callable[[RedisListPusher], Awaitable[T]], url: str = URL, timeout: float = 2.0
    ) -> T:
        async def main() -> T:
            pusher = RedisListPusher(url, timeout)
            try:
                return await body(pusher)
            finally:
                await pusher.close()

        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(main())

    return call


def test_command_is_a_resp_array_of_bulk_strings() -> None:
    assert command(b"LPUSH", b"q", b"a\r\nb") == b"*3\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$4\r\na\r\nb\r\n"


def test_pushes_land_in_order_with_their_lengths(server: redis.Redis, run: Run) -> None:
    async def body(pusher: RedisListPusher) -> list[int]:
        first = [await pusher.lpush("q", b"m%d" % i) for i in range(3)]
        # 200 concurrent pushes pipelined on one connection: every reply reaches its push.
        rest = await asyncio.gather(*(pusher.lpush("q", b"x%d" % i) for i in range(200)))
        clients = await asyncio.to_thread(server.client_list)
        # Named, on the URL's database (other API processes may be connected too).
        assert str(REDIS_DB) in [c["db"] for c in clients if c["name"] == "pgd-api"]
        return first + list(rest)

    lengths = run(body)
    assert lengths == list(range(1, 204))
    items = server.lrange("q", 0, -1)
    assert items[-3:] == [b"m2", b"m1", b"m0"]  # LPUSH: newest first, as kombu reads them
    assert sorted(items[:-3]) == sorted(b"x%d" % i for i in range(200))


def test_the_url_selects_the_database(server: redis.Redis, run: Run) -> None:
    run(lambda pusher: pusher.lpush("in-db", b"v"))
    assert server.lrange("in-db", 0, -1) == [b"v"]
    assert redis.Redis.from_url("redis://127.0.0.1:6379/0").exists("in-db") == 0


def test_an_error_reply_fails_that_push_only(server: redis.Redis, run: Run) -> None:
    server.set("a-string", "v")

    async def body(pusher: RedisListPusher) -> int:
        with pytest.raises(PushError, match="WRONGTYPE"):
            await pusher.lpush("a-string", b"x")
        return await pusher.lpush("a-list", b"y")  # the same connection goes on

    assert run(body) == 1


def test_a_killed_connection_is_replaced(server: redis.Redis, run: Run) -> None:
    async def body(pusher: RedisListPusher) -> list[int]:
        lengths = [await pusher.lpush("q", b"before")]
        # Only this pusher's connection: named pgd-api, on this test's database.
        (ours,) = [
            c["id"]
            for c in await asyncio.to_thread(server.client_list)
            if c["name"] == "pgd-api" and c["db"] == str(REDIS_DB)
        ]
        # Killed while the loop is blocked, so the push below is written to the dead
        # connection before its reader sees the end: the push must go once more.
        server.execute_command("CLIENT", "KILL", "ID", ours)
        lengths.append(await pusher.lpush("q", b"after"))
        return lengths

    assert run(body) == [1, 2]
    assert server.lrange("q", 0, -1) == [b"after", b"before"]


def test_nothing_listening_fails_fast(run: Run) -> None:
    async def body(pusher: RedisListPusher) -> None:
        with pytest.raises(OSError):
            await pusher.lpush("q", b"x")

    run(body, url=f"redis://127.0.0.1:{free_port()}/0")


def test_a_silent_server_times_out(run: Run) -> None:
    async def body(pusher: RedisListPusher) -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        quiet = RedisListPusher(f"redis://127.0.0.1:{port}/0", 0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await quiet.lpush("q", b"x")
        assert loop.time() - started < 2
        await quiet.close()
        silent.close()
        for writer in accepted:
            writer.close()

    run(body)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (needed for a Redis of our own)")
    server = PrivateRedis(tmp_path, "--requirepass", "s3cret")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_password_and_username_from_the_url(private_redis: PrivateRedis, run: Run) -> None:
    port = private_redis.port
    for url in (
        f"redis://:s3cret@127.0.0.1:{port}/2",
        f"redis://default:s3cret@127.0.0.1:{port}/2",
    ):
        assert run(lambda pusher: pusher.lpush("q", b"v"), url=url) >= 1
    client = redis.Redis(port=port, password="s3cret", db=2)
    assert client.lrange("q", 0, -1) == [b"v", b"v"]

    async def wrong(pusher: RedisListPusher) -> None:
        with pytest.raises(PushError):
            await pusher.lpush("q", b"v")

    run(wrong, url=f"redis://:nope@127.0.0.1:{port}/2")


def test_a_restarted_redis_takes_the_next_push(private_redis: PrivateRedis, run: Run) -> None:
    url = f"redis://:s3cret@127.0.0.1:{private_redis.port}/0"

    async def body(pusher: RedisListPusher) -> int:
        await pusher.lpush("q", b"first")
        await asyncio.to_thread(private_redis.stop)
        await asyncio.to_thread(private_redis.start)
        return await pusher.lpush("q", b"second")  # the old connection is dead

    assert run(body, url=url) == 1  # the restart lost "first" (no persistence)
