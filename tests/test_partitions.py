"""Sharing the work: NATS's partition() mapping as the streams declare it, the leases in its
key-value store, and the plan that balances partitions between instances.

The mapping and the leases run against a nats-server of their own (a partitioned stream
would change the subjects the other tests' streams store). The plan is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from harness import NatsServer

from messages.symbols import SYMBOLS
from service.config import Settings, load_settings
from service.leases import DuplicateInstance, Leases, Plan, plan
from service.partitions import EVERYTHING, Share, partition_of, published_subject
from service.streams import StreamMismatch, ensure_streams
from system import Refused, claim


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-partitions"))
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def lease_bucket(server: NatsServer) -> AsyncIterator[tuple[Any, str]]:
    """A JetStream context and the name of a lease bucket of the test's own, deleted after."""
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    bucket = f"L{uuid.uuid4().hex[:8]}"
    try:
        yield js, bucket
    finally:
        await js.delete_key_value(bucket)
        await nc.close()


def settings_for(server: NatsServer, partitions: int, **overrides: Any) -> Settings:
    return load_settings({}, nats_url=server.url, stream_prefix=f"P{uuid.uuid4().hex[:8].upper()}", partitions=partitions, **overrides)


async def stored_subjects(settings: Settings, published: list[str]) -> list[str]:
    """Publish on each subject; the subjects the SIGNALS and BROKER streams stored them under."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    try:
        await ensure_streams(js, settings)
        for subject in published:
            await js.publish(subject, b"{}")
        stored = []
        for stream in ("SIGNALS", "BROKER"):
            info = await js.stream_info(f"{settings.stream_prefix}_{stream}")
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                stored.append((await js.get_msg(f"{settings.stream_prefix}_{stream}", seq)).subject)
        for stream in ("SIGNALS", "ORDERS", "BROKER", "DEADLETTER"):
            await js.delete_stream(f"{settings.stream_prefix}_{stream}")
        return stored
    finally:
        await nc.close()


# --- the mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 3, 4, 7])
def test_the_server_puts_a_symbols_signals_and_broker_news_in_the_partition_the_service_computes(
    nats_server: NatsServer, partitions: int
) -> None:
    settings = settings_for(nats_server, partitions)
    symbols = [*SYMBOLS, "XAGUSD", "US30", "btc-usd"]
    published = [f"signals.approved.{symbol}" for symbol in symbols] + [f"broker.fill.{symbol}" for symbol in symbols]
    stored = asyncio.run(stored_subjects(settings, published))
    expected = [f"signals.partition.{partition_of(s, partitions)}.{s}" for s in symbols]
    expected += [f"broker.partition.{partition_of(s, partitions)}.fill.{s}" for s in symbols]
    assert stored == expected
    assert [published_subject(subject) for subject in stored] == published
    for symbol in symbols:
        owners = [p for p in range(partitions) if Share(p, partitions).owns(symbol)]
        assert owners == [partition_of(symbol, partitions)]


def test_off_contract_subjects_are_stored_as_published_and_a_single_instance_rewrites_nothing(nats_server: NatsServer) -> None:
    off_contract = ["signals.approved", "signals.approved.EUR.USD", "broker.fill.EUR.USD"]
    assert asyncio.run(stored_subjects(settings_for(nats_server, 3), off_contract)) == off_contract
    contract = ["signals.approved.EURUSD", "broker.error.EURUSD"]
    assert asyncio.run(stored_subjects(settings_for(nats_server, 0), contract)) == contract
    assert EVERYTHING.owns("anything") and EVERYTHING.signal_subject == "signals.approved.>"


def test_instances_configured_with_another_number_of_partitions_are_refused(nats_server: NatsServer) -> None:
    three = settings_for(nats_server, 3)

    async def declare(settings: Settings) -> None:
        nc = await nats.connect(settings.nats_url)
        try:
            await ensure_streams(nc.jetstream(), settings)
        finally:
            await nc.close()

    asyncio.run(declare(three))
    asyncio.run(declare(three))  # the same again is fine
    for other in (4, 0):
        with pytest.raises(StreamMismatch, match=f"partitions = {other}"):
            asyncio.run(declare(msgspec.structs.replace(three, partitions=other)))


def test_sharing_the_work_on_the_embedded_store_is_refused(tmp_path: Path) -> None:
    settings = load_settings({}, run_dir=str(tmp_path), partitions=3, admin_port=1)
    with pytest.raises(Refused, match="needs one ClickHouse server"):
        claim(settings)


# --- the plan ----------------------------------------------------------------------------------


def settle(partitions: int, instances: list[str], holders: dict[int, str], rounds: int = 40) -> tuple[dict[int, str], int]:
    """Rounds of every instance's plan, in a random order each round (a hand-back lands in
    the same round); the holders at the end and how many partitions moved."""
    rng = random.Random(f"{partitions}:{len(instances)}")
    moves = 0
    for _ in range(rounds):
        for me in rng.sample(instances, len(instances)):
            step = plan(me, partitions, instances, holders)
            for partition in step.release:
                del holders[partition]
            for partition in step.take:
                if partition not in holders:
                    holders[partition] = me
                    moves += 1
    return holders, moves


@pytest.mark.parametrize(("partitions", "count"), [(1, 1), (3, 1), (3, 2), (3, 3), (4, 3), (6, 4), (2, 3), (8, 3)])
def test_the_plan_gives_every_partition_an_owner_and_each_instance_its_fair_share(partitions: int, count: int) -> None:
    instances = [f"i{n}" for n in range(count)]
    holders, _ = settle(partitions, instances, {})
    assert sorted(holders) == list(range(partitions))
    counts = [sum(1 for h in holders.values() if h == me) for me in instances]
    assert max(counts) - min(counts) <= 1, counts
    # Settled means settled: nobody takes or gives anything up any more.
    assert all(plan(me, partitions, instances, holders) == Plan([], []) for me in instances)


def test_the_plan_moves_only_what_balance_needs_when_instances_come_and_go() -> None:
    holders, _ = settle(6, ["a"], {})
    assert set(holders.values()) == {"a"}
    holders, moves = settle(6, ["a", "b", "c"], holders)
    assert moves == 4  # two each to b and c, nothing back and forth
    survivors = {p: h for p, h in holders.items() if h != "c"}  # c dies: its leases expire
    holders, moves = settle(6, ["a", "b"], survivors)
    assert moves == 2 and sorted(holders) == list(range(6))


def test_a_partition_held_by_an_instance_that_is_gone_is_left_to_its_lease() -> None:
    """Until its lease expires, a partition is its holder's, live or not: nobody takes it."""
    assert plan("a", 2, ["a"], {0: "a", 1: "dead"}) == Plan([], [])


# --- the leases, for real -----------------------------------------------------------------------


def test_a_lease_is_held_by_one_instance_renewed_by_revision_and_taken_over_once_it_expires(nats_server: NatsServer) -> None:
    async def run() -> None:
        async with lease_bucket(nats_server) as (js, bucket):
            first, second = Leases(js, bucket, "first", 2, 2.0), Leases(js, bucket, "second", 2, 2.0)
            await first.join()
            await second.join()
            assert await first.take(0)
            assert not await second.take(0)  # held: a create cannot take it
            live, holders = await second.look()
            assert live == {"first", "second"} and holders == {0: "first"}
            for _ in range(3):  # renewed past its TTL: still first's
                await asyncio.sleep(1.0)
                assert await first.renew() == []
            assert not await second.take(0)
            trusted_until = first.held[0].valid_until
            await asyncio.sleep(2.5)  # first stops renewing (it died): the lease expires
            assert await second.take(0)
            assert trusted_until < time.monotonic()  # first had stopped trusting it before
            # first comes back and renews with the revision it knew: refused, it has lost it.
            assert await first.renew() == [0] and 0 not in first.held
            await second.give_up(0)
            assert await first.take(0)  # handed back: free at once

    asyncio.run(run())


def test_a_second_live_instance_with_the_same_id_is_refused(nats_server: NatsServer) -> None:
    async def run() -> None:
        async with lease_bucket(nats_server) as (js, bucket):
            original = Leases(js, bucket, "same", 1, 1.0)
            await original.join()

            stopped = asyncio.Event()

            async def keep_renewing() -> None:
                while not stopped.is_set():
                    await original.renew()
                    await asyncio.sleep(0.2)

            renewing = asyncio.create_task(keep_renewing())
            with pytest.raises(DuplicateInstance, match="'same'"):
                await Leases(js, bucket, "same", 1, 1.0).join()
            # Stopped by a flag, not cancel(): on Python 3.11 asyncio.wait_for (under nats-py's
            # requests) can swallow a cancellation that comes as its answer does, and the renewing
            # went on (a fresh-clone CI run: the id was still renewed, the last join refused).
            stopped.set()
            await renewing
            await asyncio.sleep(1.2)  # the original is gone: its presence expires, the id is free
            await Leases(js, bucket, "same", 1, 1.0).join()

    asyncio.run(run())


def test_a_dead_runs_last_renewal_landing_late_does_not_block_a_restart(nats_server: NatsServer) -> None:
    """A run killed with a renewal on its way to a slow server: that one write lands while the
    restart watches, and is not taken for a live duplicate (a CI host's server did just that)."""

    async def run() -> None:
        async with lease_bucket(nats_server) as (js, bucket):
            dead = Leases(js, bucket, "same", 1, 1.0)
            await dead.join()
            restart = asyncio.create_task(Leases(js, bucket, "same", 1, 1.0).join())
            await asyncio.sleep(0.3)
            await dead.renew()  # its last one, landing late
            await asyncio.wait_for(restart, 10)
            assert (await (await dead.open()).get("instance.same")).value != dead.token

    asyncio.run(run())


def test_a_dead_runs_presence_that_the_server_expires_late_does_not_block_a_restart(nats_server: NatsServer) -> None:
    """The server's expiry timer may run seconds late on a loaded host: an entry that nobody
    renews for a TTL is a dead run's, and the restart goes on."""

    async def run() -> None:
        async with lease_bucket(nats_server) as (js, bucket):
            kv = await js.create_key_value(bucket=bucket, ttl=60, history=1)  # expires far too late
            await kv.put("instance.same", b"dead run")
            started = time.monotonic()
            await Leases(js, bucket, "same", 1, 1.0).join()
            assert 1.0 <= time.monotonic() - started < 5.0
            assert (await kv.get("instance.same")).value != b"dead run"

    asyncio.run(run())
