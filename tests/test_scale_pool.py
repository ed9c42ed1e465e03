"""Endpoint pools: least-outstanding choice, take-out of a dead server, half-open take-back.

The behaviour is shown against real loopback servers on several ports (one stopped and
restarted on the same port); the state machine's timing is pinned with a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from scale_responders import answers

from synthgen.engine.errors import RequestError
from synthgen.engine.pool import DOWN, PROBING, UP, EndpointPool, PooledClient, counts_against
from synthgen.loopback_server import LoopbackServer

MSG = [{"role": "user", "content": "こんにちは"}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_least_outstanding_then_rotation_on_ties():
    pool = EndpointPool(["http://a", "http://b", "http://c"])
    held = [pool.choose() for _ in range(6)]
    assert sorted(ep.outstanding for ep in pool.endpoints) == [2, 2, 2]
    a = pool.endpoints[0]
    for ep in held:
        if ep is a:
            pool.release(ep, True)
    # a is now idle, so the next two requests both go to it
    assert pool.choose() is a and pool.choose() is a
    assert a.outstanding == 2


def test_failure_kinds_that_count_against_an_endpoint():
    assert counts_against("connection") and counts_against("timeout") and counts_against("http_503")
    assert not counts_against("http_429") and not counts_against("http_400") and not counts_against(None)
    pool = EndpointPool(["http://a"], fail_threshold=2)
    for _ in range(5):  # a server that answers 4xx is alive
        pool.release(pool.choose(), False, "http_400")
    assert pool.endpoints[0].state == UP and pool.endpoints[0].failures == 0


def test_take_out_half_open_probe_and_backoff():
    clock = FakeClock()
    pool = EndpointPool(["http://a", "http://b"], fail_threshold=3, cooldown=5.0, max_cooldown=12.0, clock=clock)
    a, b = pool.endpoints
    for _ in range(3):  # three connection errors in a row (requests handed out to a by hand)
        a.outstanding += 1
        pool.release(a, False, "connection")
    assert a.state == DOWN and a.taken_out == 1 and a.retry_at == 105.0
    assert all(pool.choose() is b for _ in range(10))  # nothing goes to a while it cools down
    clock.now = 105.0
    probe = pool.choose()
    assert probe is a and a.state == PROBING
    assert all(pool.choose() is b for _ in range(5))  # one probe at a time
    pool.release(a, False, "http_502")  # the probe fails: out again, cooldown doubled
    assert a.state == DOWN and a.cooldown == 10.0 and a.retry_at == 115.0 and a.taken_out == 2
    clock.now = 115.0
    assert pool.choose() is a
    pool.release(a, False, "timeout")
    assert a.cooldown == 12.0  # capped
    clock.now = 127.0
    assert pool.choose() is a
    pool.release(a, None)  # the probe was cancelled: it does not count, the next choice probes again
    assert a.state == DOWN and a.outstanding == 0
    assert pool.choose() is a and a.state == PROBING
    pool.release(a, True)  # the probe succeeds: back in, cooldown forgotten
    assert a.state == UP and a.cooldown == 0.0 and a.streak == 0


def test_all_down_still_sends_to_the_soonest_due():
    clock = FakeClock()
    pool = EndpointPool(["http://a", "http://b"], fail_threshold=1, cooldown=5.0, clock=clock)
    a, b = pool.endpoints
    pool.release(pool.choose(), False, "connection")
    clock.now += 1
    pool.release(pool.choose(), False, "connection")
    assert a.state == b.state == DOWN
    first = pool.choose()
    assert first is (a if a.retry_at < b.retry_at else b) and first.state == DOWN


def test_threads_share_a_pool_without_losing_counts():
    pool = EndpointPool([f"http://h{i}" for i in range(4)], fail_threshold=10**9)

    def worker(k: int) -> None:
        for i in range(5000):
            ep = pool.choose()
            pool.release(ep, (i + k) % 7 != 0, "http_500")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [ep.outstanding for ep in pool.endpoints] == [0, 0, 0, 0]
    assert sum(ep.requests for ep in pool.endpoints) == 20000
    assert sum(ep.failures for ep in pool.endpoints) == sum(1 for k in range(4) for i in range(5000) if (i + k) % 7 == 0)


async def _burst(client: PooledClient, count: int) -> list[str]:
    results = await asyncio.gather(*(client.complete(MSG, {}, 10.0) for _ in range(count)))
    return [r.text for r in results]


def test_requests_spread_over_loopback_servers_by_load():
    """Three servers, one 8x slower, under a steady load of 6 callers each sending one request
    after another: counting requests in flight sends the slow one far fewer (round robin would
    send each a third)."""
    with LoopbackServer(latency=0.05) as s1, LoopbackServer(latency=0.05) as s2, \
            LoopbackServer(latency=0.4) as slow:
        async def caller(client: PooledClient, count: int) -> None:
            for _ in range(count):
                assert (await client.complete(MSG, {}, 10.0)).text

        async def main() -> None:
            client = PooledClient.openai([s1.base_url, s2.base_url, slow.base_url], "m")
            try:
                await asyncio.gather(*(caller(client, 12) for _ in range(6)))
            finally:
                await client.aclose()
            assert [ep.outstanding for ep in client.pool.endpoints] == [0, 0, 0]

        asyncio.run(main())
    assert s1.requests + s2.requests + slow.requests == 72
    assert s1.requests >= 24 and s2.requests >= 24  # both fast servers carry load
    assert slow.requests <= 12  # a third would be 24


def test_dead_server_is_skipped_then_taken_back_when_it_restarts(caplog):
    caplog.set_level(logging.INFO, logger="synthgen.engine.pool")
    with LoopbackServer(latency=0.01) as live:
        victim = LoopbackServer(latency=0.01)
        victim.__enter__()
        port = victim.port

        async def main() -> None:
            nonlocal victim
            client = PooledClient.openai([live.base_url, victim.base_url], "m", fail_threshold=2, cooldown=0.5)
            dead_ep = client.pool.endpoints[1]
            try:
                await _burst(client, 20)
                assert victim.requests >= 5  # both serve while both are up
                victim.__exit__(None, None, None)
                before = live.requests
                # every request still succeeds: connection refused fails over at once, then the
                # dead endpoint is out and gets nothing until its cooldown ends
                texts = await _burst(client, 40)
                assert len(texts) == 40 and all(texts)
                assert live.requests - before == 40
                assert dead_ep.state == DOWN and dead_ep.taken_out == 1
                attempts = dead_ep.requests
                await _burst(client, 20)
                assert dead_ep.requests == attempts  # still cooling down: not even tried
                victim = LoopbackServer(latency=0.01, port=port)
                victim.__enter__()
                await asyncio.sleep(0.6)
                for _ in range(5):  # the first request after the cooldown is its probe
                    await _burst(client, 8)
                assert dead_ep.state == UP and victim.requests >= 10
            finally:
                await client.aclose()

        try:
            asyncio.run(main())
        finally:
            victim.__exit__(None, None, None)
    said = [r.getMessage() for r in caplog.records]
    assert any("taken out after connection" in m for m in said) and any("back in the pool" in m for m in said)


def test_other_failures_reach_the_roles_retry_policy():
    from synthgen.loopback_server import Reply

    with LoopbackServer(lambda _b: Reply(status=503)) as bad:
        async def main() -> None:
            client = PooledClient.openai([bad.base_url], "m", fail_threshold=1)
            try:
                with pytest.raises(RequestError) as err:
                    await client.complete(MSG, {}, 5.0)
                assert err.value.reason == "http_503" and err.value.retryable
                assert client.pool.endpoints[0].state == DOWN
            finally:
                await client.aclose()

        asyncio.run(main())
    assert bad.requests == 1  # a 5xx is not resent by the pool itself


def test_a_rest_job_pool_is_checked_server_by_server(tmp_path):
    """Every server of a pool receives the role's API key, so the endpoint allowlist applies to each."""
    from synthgen.policy import Policy, check_roles
    from synthgen.spec import RoleConfig

    policy = Policy(data_root=tmp_path, allowed_endpoints=("loopback",))
    ok = RoleConfig(engine="openai", model="m", base_urls=["http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"])
    assert check_roles({"writer": ok}, policy)[1] == []
    bad = RoleConfig(engine="openai", model="m", base_urls=["http://127.0.0.1:8001/v1", "http://10.0.0.7:8000/v1"])
    errors = check_roles({"writer": bad}, policy)[1]
    assert errors and all("10.0.0.7" in str(e) for e in errors)


def test_a_local_run_over_a_pool_with_one_dead_server(tmp_path):
    """persona-qa through the engine's runner on a pool of two live servers and one that was never
    started: every record is written, both live servers share the work, the dead one is out."""
    from synthgen.engine.roles import build_roles, close_roles, resolve_roles
    from synthgen.engine.runner import run_job
    from synthgen.spec import JobSpec, RoleConfig

    with LoopbackServer(answers, latency=0.02) as s1, LoopbackServer(answers, latency=0.02) as s2:
        dead = LoopbackServer()
        with dead:
            dead_url = dead.base_url  # a port that was just freed: connection refused
        pool = RoleConfig(base_urls=[s1.base_url, dead_url, s2.base_url], model="m")
        spec = JobSpec(generator="persona-qa", n=12, out=str(tmp_path / "run"), roles={"default": pool})
        roles = build_roles(resolve_roles(spec.roles, ("writer", "answerer")))  # as run_job builds them
        assert isinstance(roles["writer"].client, PooledClient)
        assert roles["writer"].client is roles["answerer"].client  # one pool for both roles

        async def main():
            try:
                return await run_job(spec, roles=roles)
            finally:
                await close_roles(roles)

        result = asyncio.run(main())
    assert result.stats.state == "succeeded" and result.manifest["counts"]["records"] == 12
    assert result.manifest["counts"]["failed"] == 0
    assert s1.requests + s2.requests == 48 and min(s1.requests, s2.requests) >= 12
    states = {ep["url"]: ep for ep in roles["writer"].client.pool.snapshot()}
    assert states[dead_url]["state"] == DOWN and states[dead_url]["requests"] >= 1
