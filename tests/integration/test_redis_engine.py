"""Redis-specific behaviour of `RedisEngine` (the shared contract is tests/integration/contract/).

* Cluster legality: every script call passes keys of one hash tag, and the scripts derive
  no key outside that slot — proven by running the engine against a `--cluster-enabled`
  redis-server, which refuses cross-slot scripts — plus a static look at the Lua.
* Wake-up subscription: the first wait returns at once (the claim before it ran
  unsubscribed). What every engine's wake-ups must do is in the contract suite
  (tests/integration/contract/test_coordination.py).
* Unreachable Redis: `EngineUnavailable` with a message naming the URL (no password).
* Redis restart: the engine (and a running worker) carries on without a restart.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from conveyor.clock import Clock, FakeClock
from conveyor.engines.base import Outcome
from conveyor.engines.redis import RedisEngine, connection, operations
from conveyor.engines.redis.keys import KeyLayout
from conveyor.errors import ConfigError, EngineUnavailable
from conveyor.job import JobState, NewJob, new_job_id
from conveyor.testing import eventually
from tests.conftest import free_port
from tests.redis_topologies import raw_client

pytestmark = pytest.mark.redis

LUA = resources.files("conveyor.engines.redis") / "lua"


def new(queue: str = "q", **kwargs: object) -> NewJob:
    fields: dict[str, object] = {"task": "t", "payload_json": "{}", "max_attempts": 3}
    fields.update(kwargs)
    return NewJob(id=new_job_id(queue), queue=queue, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[RedisEngine]:
    eng = RedisEngine(redis_url)
    await eng.connect()
    yield eng
    await eng.close()


@pytest.fixture
async def other(redis_url: str) -> AsyncIterator[RedisEngine]:
    """A second engine on the same prefix: another process, as far as Redis can tell."""
    eng = RedisEngine(redis_url)
    await eng.connect()
    yield eng
    await eng.close()


async def claim(engine: RedisEngine, limit: int = 10, queues: tuple[str, ...] = ("q",)):
    return await engine.exchange([], queues=queues, limit=limit, worker_id="w", lease_ms=30_000)


# --- URL and configuration -------------------------------------------------------------


def test_prefix_is_taken_from_the_url_and_the_password_is_never_shown() -> None:
    eng = RedisEngine("redis://:s3cret@127.0.0.1:6390/2?prefix=shop")
    assert eng.prefix == "shop"
    assert "s3cret" not in eng.url and "127.0.0.1:6390" in eng.url
    assert RedisEngine("redis://127.0.0.1:6390/0").prefix == "conveyor"


@pytest.mark.parametrize("url", ["http://localhost:6379", "redis://h:1/0?prefix={x}"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        RedisEngine(url)


# --- cluster legality ------------------------------------------------------------------


def test_every_queue_key_carries_the_queue_hash_tag() -> None:
    keys = KeyLayout("p").queue("emails")
    for key in [*keys.all(), keys.job("emails:abc")]:
        assert key.startswith("{p:emails}:"), key
    # Global keys share their own tag, so the worker scripts touch one slot too.
    layout = KeyLayout("p")
    assert {k.split("}")[0] for k in (layout.workers, layout.workers_info, layout.queues)} == {"{p"}


LUA_FILES = sorted(p.name for p in LUA.iterdir() if p.name.endswith(".lua"))


@pytest.mark.parametrize("name", LUA_FILES)
def test_lua_opens_with_its_contract_and_builds_no_key(name: str) -> None:
    text = (LUA / name).read_text("utf-8")
    header = text.split("\n\n")[0]
    if not name.startswith("_"):  # _lib.lua, _clock.lua: helpers, not operations
        for part in ("KEYS", "Returns:", "Touches:"):
            assert part in header, f"{name}: contract comment lacks {part!r}"
    code = "\n".join(line.split("--")[0] for line in text.splitlines())
    # The key of every command is a KEYS entry, or a variable holding one / a job hash /
    # a tenant's bucket, rate log or state index (KEYS prefixes with the queue's tag ..
    # a tenant).
    key_expr = re.compile(
        r"^(K_[A-Z]+|KEYS\[\w+\]|BY_STATE\[\w+\]|jk|zkey|bucket|tkey|inbox|wkey"
        r"|K_(JOB|TBUCKET|TRATE|INBOX) \.\. [\w\[\]]+"
        r"|tstate_key\([^)]*\)"  # _lib.lua: K_TSTATE .. state .. ':' .. tenant
        r"|wait_key\([^)]*\))$"  # _flows.lua: K_JOB .. id .. ':wait' (a job's own tag)
    )
    calls = re.findall(r"redis\.call\(\s*'(\w+)'\s*(?:,\s*([^,)]+))?", code)
    assert calls or name in ("pause.lua",), name
    for command, first in calls:
        if command in ("TIME", "PUBLISH"):
            continue  # no key: PUBLISH names a channel, which is legal in cluster scripts
        assert key_expr.match(first.strip()), f"{name}: {command} on {first.strip()!r}"
    # The only derived keys are a KEYS prefix with the tag .. a job id or a tenant.
    for match in re.finditer(r"(\w+(?:\[\d+\])?)\s*\.\.", code):
        assert not match.group(1).startswith(("K_", "KEYS")) or match.group(1) in (
            "K_JOB",
            "K_TBUCKET",
            "K_TRATE",
            "K_TSTATE",
            "K_INBOX",  # _pickup.lua: a worker's inbox, K_INBOX .. worker id
        ), f"{name}: builds a key from {match.group(1)}"
    # Where a variable stands for a key, it is assigned from KEYS-derived values only.
    for var in ("jk", "zkey", "bucket", "tkey", "inbox", "wkey"):
        for assigned in re.findall(rf"local {var} = ([^\n]+)", code):
            assert key_expr.match(assigned.strip()), f"{name}: {var} = {assigned}"


def _start_cluster_node(server: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start a cluster-enabled redis-server holding every slot; (process, port)."""
    # Not an ephemeral port: a cluster node's bus listens on port + 10000, which must be a
    # valid port (an OS-picked 60585 made the node refuse to start).
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
         "--cluster-config-file", str(directory / f"nodes-{port}.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    slots_added = False
    while time.monotonic() < deadline and proc.poll() is None:
        cli = ["redis-cli", "-p", str(port), "cluster"]
        try:
            if not slots_added:
                out = subprocess.run(
                    [*cli, "addslotsrange", "0", "16383"], capture_output=True, text=True,
                    timeout=2, check=False,
                ).stdout  # fmt: skip
                slots_added = out.strip() == "OK" or "already busy" in out
            elif (
                "cluster_state:ok"
                in subprocess.run(
                    [*cli, "info"], capture_output=True, text=True, timeout=2, check=False
                ).stdout
            ):
                return proc, port
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise OSError(f"cluster-enabled redis-server on port {port} did not come up")


@pytest.fixture
def cluster_url(tmp_path: Path) -> Iterator[str]:
    """A one-node Redis Cluster holding every slot: it refuses cross-slot scripts."""
    server = shutil.which("redis-server")
    if not server or not shutil.which("redis-cli"):
        pytest.fail(
            "redis-server / redis-cli are not installed; run scripts/test, which installs them"
        )
    for attempt in range(3):  # a free port can be taken by a parallel test run: try again
        try:
            proc, port = _start_cluster_node(server, tmp_path)
            break
        except OSError:
            if attempt == 2:
                raise
    try:
        yield f"redis+cluster://127.0.0.1:{port}/?prefix=c"
    finally:
        proc.kill()
        proc.wait(10)


async def test_every_operation_is_legal_on_redis_cluster(
    cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis Cluster rejects a call whose KEYS span slots (CROSSSLOT). A script that opens
    with `#!lua` (Redis 7) is also refused when it touches an undeclared key of another
    slot; shipped scripts have no shebang (so they run on Redis 6.2), so this test loads
    them in that strict mode. Each call below fails if a script mixed tags or derived a
    key outside its queue's slot."""
    raw = raw_client(cluster_url)
    with pytest.raises(ResponseError, match="same slot"):  # the server does enforce it
        await raw.eval("#!lua\nreturn redis.call('GET', '{elsewhere}:x')", 1, "{c:a}:x")
    await raw.aclose()
    strict = connection._script_source
    monkeypatch.setattr(connection, "_script_source", lambda name: "#!lua\n" + strict(name))
    eng = RedisEngine(cluster_url)
    await eng.connect()
    try:
        a, b, c = new("a"), new("b", dedupe_key="k"), new("a", delay_ms=60_000)
        results = await eng.enqueue([a, b, c, new("b", dedupe_key="k")])
        assert [r.created for r in results] == [True, True, True, False]
        got = await eng.exchange([], queues=("a", "b"), limit=5, worker_id="w", lease_ms=30_000)
        assert {j.id for j in got.jobs} == {a.id, b.id}
        assert got.next_due_ms is not None and got.next_due_ms > 50_000
        ja, jb = sorted(got.jobs, key=lambda j: j.id != a.id)
        assert await eng.heartbeat([(ja.id, str(ja.token)), (jb.id, "stale")], lease_ms=5_000) == [
            jb.id
        ]
        assert await eng.set_progress(ja.id, str(ja.token), "50")
        done = await eng.exchange(
            [
                Outcome(ja.id, str(ja.token), "fail", error_json='{"attempt":1,"message":"x"}'),
                Outcome(jb.id, str(jb.token), "complete", result_json="1"),
            ],
            queues=("a",), limit=1, worker_id="w", lease_ms=30_000,
        )  # fmt: skip
        assert done.lost == [] and done.jobs == []
        assert (await eng.retry_job(a.id)).state == JobState.PENDING
        assert (await eng.cancel_job(a.id)).state == JobState.CANCELLED
        assert await eng.retry_all("a", JobState.CANCELLED) == 1
        assert (await eng.promote_job(c.id)).state == JobState.PENDING
        await eng.pause("a")
        assert (await eng.counts("a")).paused
        await eng.resume("a")
        assert (await eng.counts("a")).pending == 2
        assert len((await eng.list_jobs("a", JobState.PENDING, tenant="nobody")).jobs) == 0
        assert await eng.recover_expired(["a", "b"]) == 0
        assert await eng.clean("b", JobState.COMPLETED, 0, 10) == 1
        events = await eng.read_events(["a"], since={"a": "0"}, count=100, block_ms=0)
        assert "failed" in {e.kind for e in events}
        await eng.register_worker("w", '{"queues": ["a"]}', 10_000)
        assert [w["id"] for w in await eng.workers()] == ["w"]
        await eng.unregister_worker("w")
        assert await eng.purge("a") == 2
        assert await eng.queue_names() == ["a", "b"]
    finally:
        await eng.close()


async def test_a_plain_url_at_a_cluster_node_names_the_fix(cluster_url: str) -> None:
    """What issue 17 found: redis:// at a cluster node used to fail on the first enqueue
    with a raw MOVED; it now fails at connect and names redis+cluster://."""
    port = cluster_url.split(":")[2].split("/")[0]
    eng = RedisEngine(f"redis://127.0.0.1:{port}/0?prefix=c")
    with pytest.raises(ConfigError, match=rf"use redis\+cluster://127.0.0.1:{port}/"):
        await eng.connect()
    await eng.close()


# --- the test clock, and batching that only Redis has --------------------------------


@pytest.fixture
async def clocked(redis_url: str) -> AsyncIterator[tuple[RedisEngine, FakeClock]]:
    """An engine whose scripts take their now from a FakeClock instead of Redis TIME."""
    clock = FakeClock()
    eng = RedisEngine(redis_url, clock=clock)
    await eng.connect()
    yield eng, clock
    await eng.close()


async def test_a_test_clock_drives_due_times_and_lease_expiry(
    clocked: tuple[RedisEngine, FakeClock],
) -> None:
    eng, clock = clocked
    later = new(delay_ms=60_000)
    await eng.enqueue([later])
    assert (await eng.get_job(later.id)).scheduled_at == clock.now() + 60
    assert (await claim(eng)).jobs == []
    clock.advance(60)
    [job] = (await claim(eng)).jobs  # due now by the test clock, whatever Redis TIME says
    assert job.started_at == clock.now()
    clock.advance(30)  # the lease (30 s) runs out at the test clock's now
    assert await eng.recover_expired(["q"]) == 1
    assert (await eng.get_job(job.id)).state == JobState.PENDING


async def test_the_apps_own_clock_does_not_replace_redis_time(redis_url: str) -> None:
    """Every app hands its engine a `Clock`; only a test clock may replace Redis TIME.
    (Passed on, each client's wall clock was the scripts' now: scripts of several workers
    ran with times out of order, and a 50/s rate window admitted 52 starts.)"""
    clock = Clock()
    clock.now_ms = lambda: 1_000  # type: ignore[method-assign]  # a client clock far off
    eng = RedisEngine(redis_url, clock=clock)
    await eng.connect()
    try:
        job = new()
        await eng.enqueue([job])
        stored = await eng.get_job(job.id)
        assert abs(stored.created_at - time.time()) < 60  # Redis TIME, not the client's 1 s
    finally:
        await eng.close()


async def test_retry_all_walks_past_skipped_jobs(engine: RedisEngine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Skipped jobs stay at the head of the failed index: the next batch starts after them."""
    monkeypatch.setattr(operations, "_BATCH", 2)
    jobs = [new(dedupe_key=f"k{i}", max_attempts=1) for i in range(5)]
    await engine.enqueue(jobs)
    claimed = (await claim(engine)).jobs
    await engine.exchange(
        [Outcome(j.id, str(j.token), "fail", error_json="{}") for j in claimed],
        queues=("q",), limit=0, worker_id="w", lease_ms=30_000,
    )  # fmt: skip
    # Held: the three most recently finished but one (retry_all walks newest first).
    await engine.enqueue([new(dedupe_key="k4"), new(dedupe_key="k3"), new(dedupe_key="k1")])
    assert await engine.retry_all("q", JobState.FAILED) == 2
    states = [(await engine.get_job(j.id)).state for j in jobs]
    assert states == [JobState.PENDING, JobState.FAILED, JobState.PENDING, JobState.FAILED,
                      JobState.FAILED]  # fmt: skip


# --- ordering and storage details --------------------------------------------------------


async def test_event_stream_is_bounded(redis_url: str) -> None:
    eng = RedisEngine(redis_url, events_maxlen=50)
    await eng.connect()
    try:
        for _ in range(10):
            await eng.enqueue([new() for _ in range(50)])
        for _ in range(100):
            await eng.enqueue([new()])
        kept = await eng.read_events(["q"], since={"q": "0"}, count=100_000, block_ms=0)
        # MAXLEN ~ trims whole stream nodes (100 entries or 4 kB)
        assert 50 <= len(kept) < 250
    finally:
        await eng.close()


async def test_a_job_hash_stays_small_and_reads_whole(engine: RedisEngine, redis_url: str) -> None:
    """A new job's hash leaves out what its key says (id, queue) and the fields equal to
    their default (attempt 0, priority 0, max_attempts 1; a pending job's score, which its
    bucket has); every reader puts them back."""
    job = new(max_attempts=1)
    await engine.enqueue([job])
    raw = aioredis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    key = KeyLayout(engine.prefix).queue("q").job(job.id)
    try:
        assert set(await raw.hkeys(key)) == {"task", "payload", "created_ms", "state"}
        stored = await engine.get_job(job.id)
        assert (stored.id, stored.queue, stored.attempt, stored.max_attempts) == (job.id, "q", 0, 1)
        assert stored.priority == 0
        [claimed] = (await claim(engine)).jobs
        assert (claimed.id, claimed.queue, claimed.attempt) == (job.id, "q", 1)
        assert await raw.hget(key, "score")  # the claim kept its place for a lost lease
    finally:
        await raw.aclose()


async def test_a_job_stored_by_the_previous_layout_reads_and_runs(
    clocked: tuple[RedisEngine, FakeClock], redis_url: str
) -> None:
    """Jobs written before the smaller hashes (id, queue, attempt, priority, max_attempts
    and score stored) are read, listed, claimed, recovered and finished as before."""
    eng, clock = clocked
    keys = KeyLayout(eng.prefix).queue("q")
    raw = aioredis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    job_id = "q:" + uuid.uuid4().hex  # the old id: 32 hex digits
    score = 4_000_000_000_000_007  # an old pending score (any number orders it)
    now_ms = clock.now_ms()
    try:
        await raw.hset(keys.job(job_id), mapping={
            "id": job_id, "queue": "q", "task": "t", "payload": '{"n": 1}', "attempt": 0,
            "max_attempts": 2, "priority": 3, "created_ms": now_ms, "state": "pending",
            "score": score,
        })  # fmt: skip
        await raw.zadd(keys.pending, {job_id: score})
        await raw.sadd(KeyLayout(eng.prefix).queues, "q")
        stored = await eng.get_job(job_id)
        assert (stored.id, stored.queue, stored.payload) == (job_id, "q", {"n": 1})
        assert (stored.attempt, stored.max_attempts, stored.priority) == (0, 2, 3)
        assert [j.id for j in (await eng.list_jobs("q", JobState.PENDING)).jobs] == [job_id]
        [first] = (await claim(eng)).jobs
        assert (first.id, first.queue, first.attempt, first.max_attempts) == (job_id, "q", 1, 2)
        clock.advance(31)  # its lease runs out: back to pending at its old place
        assert await eng.recover_expired(["q"]) == 1
        assert await raw.zscore(keys.pending, job_id) == score
        [second] = (await claim(eng)).jobs
        assert second.attempt == 2
        await eng.exchange(
            [Outcome(job_id, str(second.token), "complete", result_json='{"ok": true}')],
            queues=("q",), limit=0, worker_id="w", lease_ms=30_000,
        )  # fmt: skip
        done = await eng.get_job(job_id)
        assert (done.state, done.result, done.attempt) == (JobState.COMPLETED, {"ok": True}, 2)
    finally:
        await raw.aclose()


async def test_an_exchange_writes_its_events_as_one_entry_and_each_can_be_resumed_after(
    engine: RedisEngine, redis_url: str
) -> None:
    """One XADD per exchange call, not two per processed job: its events share one stream
    entry, and each still has its own id, in order, to resume after (the API's
    `since=`), also from the middle of the entry; plain one-event entries read as before."""
    jobs = [new() for _ in range(4)]
    await engine.enqueue(jobs)  # one entry of four `enqueued` events
    start = (await engine.last_event_ids(["q"]))["q"]
    claimed = (await claim(engine)).jobs  # four `started` events, one entry
    await engine.exchange(
        [Outcome(j.id, str(j.token), "complete", result_json="null") for j in claimed],
        queues=("q",), limit=0, worker_id="w", lease_ms=30_000,
    )  # fmt: skip
    raw = aioredis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    try:
        assert await raw.xlen(KeyLayout(engine.prefix).queue("q").events) == 1 + 2
    finally:
        await raw.aclose()
    events = await engine.read_events(["q"], since={"q": start}, count=100, block_ms=0)
    assert [e.kind for e in events] == ["started"] * 4 + ["completed"] * 4
    assert [e.job_id for e in events] == [j.id for j in claimed] * 2
    assert all(e.attempt == 1 and e.task == "t" for e in events)
    assert len({e.id for e in events}) == 8
    assert sorted(events, key=lambda e: tuple(int(p) for p in e.id.split("-"))) == events
    assert (await engine.last_event_ids(["q"]))["q"] == events[-1].id
    for k in range(8):  # resume after any event, in an entry or at its end
        rest = await engine.read_events(["q"], since={"q": events[k].id}, count=100, block_ms=0)
        assert rest == events[k + 1 :]
    paged, at = [], start  # one event per read: every resume but the last is inside
    while page := await engine.read_events(["q"], since={"q": at}, count=1, block_ms=0):
        assert len(page) == 1
        paged += page
        at = page[-1].id
    assert paged == events
    older = await engine.read_events(["q"], since={"q": "0"}, count=100, block_ms=0)
    assert [e.kind for e in older] == ["enqueued"] * 4 + [e.kind for e in events]


async def test_an_event_stream_of_batched_entries_is_bounded_in_events(redis_url: str) -> None:
    """The stream's bound counts entries; an entry of many events trims it further, so
    it keeps about `events_maxlen` events, not that many entries of events."""
    eng = RedisEngine(redis_url, events_maxlen=200)
    await eng.connect()
    try:
        await eng.enqueue([new() for _ in range(2000)])
        outs: list[Outcome] = []
        while True:  # 50 completions and 50 claims per call: two entries of 64 + 36
            got = await eng.exchange(outs, queues=("q",), limit=50, worker_id="w", lease_ms=30_000)
            if not got.jobs and not outs:
                break
            outs = [Outcome(j.id, str(j.token), "complete", result_json="null") for j in got.jobs]
        kept = await eng.read_events(["q"], since={"q": "0"}, count=100_000, block_ms=0)
        assert 100 <= len(kept) < 200 * 3  # entries of 64 events: 200 entries would keep 12,800
        assert kept[-1].kind == "completed"
    finally:
        await eng.close()


# --- wake-ups ------------------------------------------------------------------------------


async def test_first_wait_returns_at_once_so_the_caller_claims_again(
    engine: RedisEngine, other: RedisEngine
) -> None:
    """The claim before the first wait ran unsubscribed: a job enqueued in that gap
    published to nobody, so the first wait must not block."""
    assert (await claim(engine)).jobs == []
    await other.enqueue([new()])
    start = time.monotonic()
    await engine.wait_for_jobs(["q"], 10)
    assert time.monotonic() - start < 1.0


async def test_a_cancel_during_a_call_is_never_swallowed(engine: RedisEngine) -> None:
    """Python 3.11's wait_for (inside redis-py) drops a cancel that lands as a read
    completes; a worker's heartbeat task then never stopped. The engine re-raises it."""
    for _ in range(20):
        call = asyncio.ensure_future(engine.register_worker("w", "{}", 1000))
        await asyncio.sleep(0)  # the command is on its way
        if call.cancel():
            with pytest.raises(asyncio.CancelledError):
                await call


# --- unreachable and restarted Redis -------------------------------------------------------


async def test_unreachable_redis_is_engine_unavailable_with_a_readable_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    eng = RedisEngine(f"redis://:hunter2@127.0.0.1:{port}/0?prefix=x")
    start = time.monotonic()
    with pytest.raises(EngineUnavailable) as info:
        await eng.connect()
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "redis-server running" in message and "CONVEYOR_URL" in message
    assert "hunter2" not in message
    with pytest.raises(EngineUnavailable):
        await eng.enqueue([new()])
    with pytest.raises(EngineUnavailable):
        await eng.wait_for_jobs(["q"], 0.1)
    await eng.close()
    await eng.close()  # twice is fine


@pytest.mark.slow
async def test_engine_survives_a_redis_restart(private_redis) -> None:  # type: ignore[no-untyped-def]
    url = f"{private_redis.url}?prefix=r{uuid.uuid4().hex[:6]}"
    eng, producer = RedisEngine(url), RedisEngine(url)
    await eng.connect()
    await producer.connect()
    try:
        first = new()
        await producer.enqueue([first])
        await eng.wait_for_jobs(["q"], 1)  # subscribe before the restart

        private_redis.stop()
        with pytest.raises(EngineUnavailable):
            await claim(eng)
        private_redis.start()

        # Same engine objects, no reconnect call: AOF kept the job; scripts are reloaded.
        [job] = (await claim(eng)).jobs
        assert job.id == first.id
        # The wake-up subscription came back too: a reconnect counts as a wake-up, and
        # after that a new job wakes the waiter promptly.
        await eng.wait_for_jobs(["q"], 5)
        assert (await claim(eng)).jobs == []
        waiter = asyncio.ensure_future(eng.wait_for_jobs(["q"], 10))
        await asyncio.sleep(0.2)
        start = time.monotonic()
        await producer.enqueue([new()])
        await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - start < 1.0
    finally:
        await eng.close()
        await producer.close()


@pytest.mark.slow
async def test_worker_resumes_after_a_redis_restart(private_redis) -> None:  # type: ignore[no-untyped-def]
    from conveyor import Conveyor, Job, Worker

    url = f"{private_redis.url}?prefix=w{uuid.uuid4().hex[:6]}"
    app = Conveyor(url)
    done: list[str] = []

    @app.task("t", queue="q")
    async def t(job: Job) -> None:
        done.append(job.id)

    worker = Worker(app, queues=("q",), concurrency=2)
    running = asyncio.ensure_future(worker.run())
    try:
        before = await app.enqueue("t", {})
        await eventually(lambda: _true(before.id in done), message="job before restart")
        private_redis.stop()
        await asyncio.sleep(0.5)  # the worker sees the engine down and backs off
        private_redis.start()
        after = await app.enqueue("t", {})
        await eventually(lambda: _true(after.id in done), message="job after restart")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)


async def _true(value: bool) -> bool:
    return value


async def test_pending_jobs_stored_before_the_fifo_drain_first_and_in_order(
    engine: RedisEngine, redis_url: str
) -> None:
    """A queue written by the version without the fifo list has its priority-0 jobs in
    the pending zset: they are listed, counted, cancelled and claimed with the new ones,
    in the one order (theirs first: their places were taken earlier)."""
    keys = KeyLayout(engine.prefix).queue("q")
    raw = aioredis.Redis.from_url(redis_url.split("?")[0], decode_responses=True)
    try:
        await engine.enqueue([new()])  # the queue exists; its seq counter has moved
        [warm] = (await claim(engine)).jobs
        base = 100 * (1 << 44) + (1 << 43)  # priority 0: MAX_PRIORITY * BAND + MID
        old = [new() for _ in range(3)]
        for i, job in enumerate(old):  # the old layout: pending at priority 0 in the zset
            await raw.hset(keys.job(job.id), mapping={
                "task": "t", "payload": "{}", "created_ms": 1, "state": "pending",
            })  # fmt: skip
            await raw.zadd(keys.pending, {job.id: base + 10 + i})
        await raw.set(keys.seq, 100)  # the old version took seqs 10-12 from it
        fresh = [new() for _ in range(2)]
        await engine.enqueue(fresh)
        assert await raw.llen(keys.fifo) == 4  # two entries a job: seq, id
        want = [j.id for j in [*old, *fresh]]
        assert [j.id for j in (await engine.list_jobs("q", JobState.PENDING)).jobs] == want
        assert (await engine.counts("q")).pending == 5
        await engine.cancel_job(old[1].id)
        await engine.cancel_job(fresh[0].id)
        got = [j.id for j in (await claim(engine)).jobs]
        assert got == [old[0].id, old[2].id, fresh[1].id] and warm.id not in got
        assert await raw.exists(keys.pending, keys.fifo) == 0
    finally:
        await raw.aclose()


async def test_fifo_cancel_finds_the_job_whatever_its_id_looks_like(engine: RedisEngine) -> None:
    """A fifo job is two list entries, its seq then its id less "q:": an id whose rest is
    a number equal to some seq must not be taken for that seq entry, and a job pushed back
    (promoted) is found from the tail."""
    jobs = [
        NewJob(id=f"q:{n}", queue="q", task="t", payload_json="{}", max_attempts=3)
        for n in range(1, 6)
    ]
    for job in jobs:
        await engine.enqueue([job])  # seqs 1-5: the seq entries read "1" .. "5" too
    late = new(delay_ms=60_000)
    await engine.enqueue([late])
    await engine.promote_job(late.id)
    await engine.cancel_job("q:3")
    await engine.cancel_job(late.id)
    await engine.cancel_job("q:1")
    listed = [j.id for j in (await engine.list_jobs("q", JobState.PENDING, limit=2)).jobs]
    assert listed == ["q:2", "q:4"]
    assert [j.id for j in (await claim(engine)).jobs] == ["q:2", "q:4", "q:5"]
    assert (await engine.counts("q")).pending == 0
