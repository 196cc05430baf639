"""Tenant-filtered listings and opaque cursors, on every engine (issue 12 item 10).

* A tenant paging through its jobs sees its own and nothing else, in every state.
* Its cursors say nothing about other tenants: a listing with another tenant's jobs
  interleaved hands out pages and cursors indistinguishable from one without them.
* A cursor is bound to its queue, state and tenant: used elsewhere, altered, or made
  up, it is `InvalidArgument` (HTTP 422), and no engine ever sees it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.engines import Outcome
from conveyor.engines.redis import RedisEngine
from conveyor.errors import InvalidArgument
from conveyor.facade.cursors import CursorSealer
from conveyor.job import JobState

Q = "listing"
STATES = (JobState.PENDING, JobState.SCHEDULED, JobState.CANCELLED)


@pytest.fixture
async def app(engine_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(engine_url)
    await app.connect()
    yield app
    await app.close()


async def fill(app: Conveyor, *, own: int, others_between: int) -> dict[JobState, list[str]]:
    """`own` jobs of tenant a per state, each followed by `others_between` of tenant b
    (and one without a tenant). Returns a's ids per state."""
    ids: dict[JobState, list[str]] = {s: [] for s in STATES}
    for i in range(own):
        for state in STATES:
            delay = 3600 if state is JobState.SCHEDULED else 0
            job = await app.enqueue("t", {"i": i}, queue=Q, tenant="a", delay=delay)
            ids[state].append(job.id)
            for _ in range(others_between):
                other = await app.enqueue("t", {}, queue=Q, tenant="b", delay=delay)
                if state is JobState.CANCELLED:
                    await app.cancel_job(other.id)
            await app.enqueue("t", {}, queue=Q, delay=delay)
            if state is JobState.CANCELLED:
                await app.cancel_job(job.id)
    return ids


async def page_through(
    app: Conveyor, state: JobState, tenant: str | None, limit: int = 2
) -> tuple[list[str], list[str]]:
    """Every job id of the listing, and every cursor handed out on the way."""
    seen: list[str] = []
    cursors: list[str] = []
    cursor: str | None = None
    while True:
        page = await app.list_jobs(Q, state, tenant=tenant, limit=limit, cursor=cursor)
        assert len(page.jobs) <= limit
        seen += [job.id for job in page.jobs]
        if page.cursor is None:
            return seen, cursors
        cursors.append(page.cursor)
        cursor = page.cursor


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.value)
async def test_a_tenant_pages_through_its_own_jobs_only(app: Conveyor, state: JobState) -> None:
    ids = await fill(app, own=7, others_between=3)
    seen, _ = await page_through(app, state, "a")
    assert sorted(seen) == sorted(ids[state])  # all of a's, none of b's, each once
    if state is not JobState.PENDING:
        return
    assert seen == ids[state]  # pending: claim order
    everyone, _ = await page_through(app, state, None, limit=5)
    assert set(seen) < set(everyone)


@pytest.fixture
def second_url(engine_url: str, tmp_path: Path) -> str:
    """Another, empty store of the same kind as `engine_url`."""
    if engine_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'other.db'}"
    if engine_url.startswith(("redis", "postgresql")):  # another key prefix / schema
        return engine_url.rsplit("=", 1)[0] + "=" + engine_url.rsplit("=", 1)[1] + "x"
    return engine_url


async def test_cursors_reveal_nothing_about_other_tenants(app: Conveyor, second_url: str) -> None:
    quiet = Conveyor(second_url)
    await quiet.connect()
    try:
        await fill(quiet, own=6, others_between=0)
        await fill(app, own=6, others_between=40)
        for state in STATES:
            alone, alone_cursors = await page_through(quiet, state, "a")
            crowded, crowded_cursors = await page_through(app, state, "a")
            # The same pages, and sealed cursors of one length (their content is
            # encrypted, see the sealer test): nothing tells 240 other jobs from none.
            assert len(alone) == len(crowded) == 6
            assert len(alone_cursors) == len(crowded_cursors) == 2
            lengths = {len(c) for c in alone_cursors + crowded_cursors}
            assert len(lengths) == 1, (state, alone_cursors, crowded_cursors)
    finally:
        await quiet.close()


async def test_a_cursor_is_bound_to_its_queue_state_and_tenant(app: Conveyor) -> None:
    await fill(app, own=5, others_between=1)
    for state in STATES:
        page = await app.list_jobs(Q, state, tenant="a", limit=2)
        assert page.cursor is not None
        token = page.cursor
        other_state = JobState.FAILED if state is not JobState.FAILED else JobState.PENDING
        uses: list[tuple[str, JobState, str | None, str]] = [
            (Q, state, "b", token),  # another tenant
            (Q, state, None, token),  # the admin listing
            ("elsewhere", state, "a", token),  # another queue
            (Q, other_state, "a", token),  # another state
            (Q, state, "a", token[:-2] + ("AA" if token[-2:] != "AA" else "BB")),  # altered
            (Q, state, "a", "0"),  # an engine position of one's own making
            (Q, state, "a", "1700000000000:12"),
            (Q, state, "a", "x" * 300),
        ]
        for queue, st, tenant, cursor in uses:
            with pytest.raises(InvalidArgument, match="cursor"):
                await app.list_jobs(queue, st, tenant=tenant, limit=2, cursor=cursor)
        # The rightful use still works.
        nxt = await app.list_jobs(Q, state, tenant="a", limit=2, cursor=token)
        assert len(nxt.jobs) == 2


def test_sealed_positions_are_hidden_and_unforgeable() -> None:
    sealer = CursorSealer(b"k" * 32)
    ctx = {"queue": "q", "state": "completed", "tenant": "a"}
    short, long = sealer.seal("1:2", **ctx), sealer.seal("1700000000000:123456789", **ctx)
    assert len(short) == len(long)  # the length of a position is hidden too
    assert sealer.seal("1:2", **ctx) != short  # a fresh nonce each time
    assert sealer.open(long, **ctx) == "1700000000000:123456789"
    for text in (short, long):
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        assert b"1700000000000" not in raw and b"1:2" not in raw
    with pytest.raises(InvalidArgument):
        CursorSealer(b"another secret, another process").open(long, **ctx)
    with pytest.raises(InvalidArgument):
        sealer.open(long, queue="q", state="completed", tenant=None)
    # Tenant "a" and no tenant, or "a:b" split differently, never share a tag.
    with pytest.raises(InvalidArgument):
        sealer.open(sealer.seal("1", queue="q:a", state="s", tenant="b"), queue="q", state="s",
                    tenant="a:b")  # fmt: skip


ERROR = '{"attempt": 1, "type": "E", "message": "m", "at": 0}'
ALL_STATES = tuple(JobState)


async def assert_tenant_views_agree(app: Conveyor, tenants: tuple[str, ...]) -> None:
    """Each tenant's listing of every state is exactly the admin listing's jobs of that
    tenant (on Redis: the per-tenant indexes follow every move the scripts make)."""
    for state in ALL_STATES:
        everyone, _ = await page_through(app, state, None, limit=50)
        by_id = {job_id: (await app.get_job(job_id)).tenant for job_id in everyone}
        for tenant in tenants:
            own, _ = await page_through(app, state, tenant, limit=3)
            expected = [i for i in everyone if by_id[i] == tenant]
            assert sorted(own) == sorted(expected), (state, tenant)


async def test_tenant_listings_follow_every_state_change(app: Conveyor) -> None:
    engine = await app.connect()
    tenants = ("a", "b:c")  # a tenant name with the separator of composed keys
    jobs = {
        (t, n): await app.enqueue("t", {}, queue=Q, tenant=t, delay=3600 if n < 2 else 0)
        for t in tenants
        for n in range(6)
    }
    await app.enqueue("t", {}, queue=Q)  # one without a tenant
    await assert_tenant_views_agree(app, tenants)  # scheduled and pending
    for t in tenants:
        await app.promote_job(jobs[(t, 0)].id)  # scheduled -> pending
        await app.cancel_job(jobs[(t, 1)].id)  # scheduled -> cancelled
    claimed = await engine.exchange([], queues=[Q], limit=100, worker_id="w", lease_ms=60_000)
    await assert_tenant_views_agree(app, tenants)  # running
    kinds = ["complete", "fail", "retry", "complete", "fail", "retry", "complete"]
    outcomes = [
        Outcome(
            job.id, str(job.token), kind, result_json="{}", error_json=ERROR, delay_ms=3_600_000
        )
        for job, kind in zip(claimed.jobs, kinds * 3, strict=False)
    ]
    await engine.exchange(outcomes, queues=[Q], limit=0, worker_id="w", lease_ms=60_000)
    await assert_tenant_views_agree(app, tenants)  # completed, failed, back to scheduled
    await app.retry_all(Q, JobState.FAILED)
    await app.retry_job(jobs[("a", 1)].id)  # cancelled -> pending
    await assert_tenant_views_agree(app, tenants)
    await app.clean(Q, JobState.COMPLETED, 0)
    await assert_tenant_views_agree(app, tenants)
    await app.purge(Q)
    for state in ALL_STATES:
        for tenant in tenants:
            assert (await app.list_jobs(Q, state, tenant=tenant)).jobs == []
    if isinstance(engine, RedisEngine):
        # No stale entry is left behind in any tenant index (listings skip entries whose
        # job is gone, so only the keys themselves show it).
        prefix = engine._keys.queue(Q).tstate_prefix
        assert [k async for k in engine._client.scan_iter(match=f"{prefix}*")] == []


async def test_redis_backfills_tenant_indexes_of_jobs_stored_before_them(
    redis_url: str,
) -> None:
    """A store written before the per-tenant indexes existed: its tenant jobs are
    indexed on the first tenant listing (in batches walked by score), once."""
    from conveyor.engines.redis import reads

    old = Conveyor(redis_url)
    engine = await old.connect()
    assert isinstance(engine, RedisEngine)
    for n in range(7):
        await old.enqueue("t", {}, queue=Q, tenant="a", delay=3600)
        job = await old.enqueue("t", {}, queue=Q, tenant="a")
        await old.enqueue("t", {}, queue=Q, tenant="b")
        if n % 2:
            await old.cancel_job(job.id)
    # Forget the indexes, as a store from before them would be.
    prefix = engine._keys.queue(Q).tstate_prefix
    stale = [k async for k in engine._client.scan_iter(match=f"{prefix}*")]
    assert stale
    await engine._client.delete(*stale, engine._keys.queue(Q).tindexed)
    await old.close()

    fresh = Conveyor(redis_url)
    await fresh.connect()
    try:
        reads._BACKFILL_BATCH = 2  # several batches, with ties of one score among them
        for state in (JobState.SCHEDULED, JobState.CANCELLED):
            everyone, _ = await page_through(fresh, state, None, limit=50)
            own, _ = await page_through(fresh, state, "a")
            assert len(own) == (7 if state is JobState.SCHEDULED else 3)
            assert set(own) <= set(everyone)
    finally:
        reads._BACKFILL_BATCH = 1000
        await fresh.close()


async def test_a_configured_secret_lets_every_api_process_take_the_cursors(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONVEYOR_API_CURSOR_SECRET: replicas behind one address (here: two apps on one
    store) accept each other's cursors; without it each process has its own key."""
    first, second, lone = Conveyor(sqlite_url), Conveyor(sqlite_url), Conveyor(sqlite_url)
    _ = lone.cursors  # keyed before the secret is set: a random key of its own
    monkeypatch.setenv("CONVEYOR_API_CURSOR_SECRET", "s" * 32)
    try:
        for _ in range(3):
            await first.enqueue("t", {}, queue=Q, tenant="a")
        page = await first.list_jobs(Q, JobState.PENDING, tenant="a", limit=2)
        assert page.cursor is not None
        rest = await second.list_jobs(Q, JobState.PENDING, tenant="a", cursor=page.cursor)
        assert len(rest.jobs) == 1
        with pytest.raises(InvalidArgument):
            await lone.list_jobs(Q, JobState.PENDING, tenant="a", cursor=page.cursor)
    finally:
        for app in (first, second, lone):
            await app.close()
