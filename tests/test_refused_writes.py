"""What a server refuses for good is dead-lettered with its reason, and the writing goes on.

Real refusals by real servers: a Kafka topic whose max.message.bytes is smaller than a fill
event (MessageSizeTooLargeError, not retriable), and a ClickHouse table with a constraint that
a gold fill breaks (VIOLATED_CONSTRAINT, code 469) on the project's ClickHouse HTTP front. The
service runs as in production; the refused item lands whole in ``dead-letters.jsonl`` of its
run directory, and what came after it is written.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from harness import RunningSystem, clickhouse_front, signal, wait_until

from messages.codec import encode
from service.config import Settings
from service.store import Store

# What Kafka adds to an event's bytes in a record batch of one (batch and record headers, the
# key, the event_id header), with room to spare.
RECORD_OVERHEAD = 160


def dead_letters(system: RunningSystem) -> list[dict[str, Any]]:
    path = Path(system.settings.run_dir) / "dead-letters.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def limit_archive_messages(settings: Settings, max_message_bytes: int) -> None:
    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(ConfigResourceType.TOPIC, settings.archive_topic, configs={"max.message.bytes": str(max_message_bytes)})
            await admin.alter_configs([resource])
        finally:
            await admin.close()

    asyncio.run(alter())


def test_an_event_kafka_refuses_for_good_is_dead_lettered_and_the_archive_goes_on(tmp_path: Path, kafka_bootstrap: str) -> None:
    system = RunningSystem(tmp_path, kafka_bootstrap)
    try:
        # A first order shows how large its events are; then the topic takes only those smaller
        # than a fill event (each event carries the order, so a fill's is the largest by far).
        probe = system.send(signal("EURUSD", "buy", 0.1))
        assert probe is not None
        system.wait_status(probe, "filled")
        sizes = wait_until(lambda: (e := {e.kind.value: len(encode(e)) for e in system.archive() if e.order_id == probe}) and len(e) == 3 and e, what="the archive")
        limit_archive_messages(system.settings, (max(sizes["created"], sizes["submitted"]) + sizes["fill"]) // 2 + RECORD_OVERHEAD)
        first = system.send(signal("EURUSD", "buy", 0.1))
        second = system.send(signal("USDJPY", "buy", 0.1))
        assert first is not None and second is not None
        for order_id in (first, second):
            system.wait_status(order_id, "filled")
        letters = wait_until(lambda: len(d := dead_letters(system)) >= 2 and d, 20, what="the dead letters")
        assert {(d["role"], d["item_type"], d["item"]["kind"]) for d in letters} == {("archiver", "OrderEvent", "fill")}
        assert all("MessageSizeTooLarge" in d["error"] for d in letters)
        refused = {d["item"]["event_id"] for d in letters}
        ours = (first, second)
        archived = wait_until(lambda: (a := [e for e in system.archive() if e.order_id in ours]) and len(a) >= 4 and a, what="the archive")
        # Every event of both orders is in one place or the other, once: nothing lost, nothing twice.
        kinds = {order_id: [e.kind.value for e in archived if e.order_id == order_id] for order_id in ours}
        assert kinds == {first: ["created", "submitted"], second: ["created", "submitted"]}
        assert refused == {f"{first}:3", f"{second}:3"}
        # The statuses and ClickHouse are not held up by the archive's refusal.
        assert wait_until(lambda: system.statuses_on_nats(second) == ["pending", "submitted", "filled"], what="NATS")
    finally:
        system.close()


@pytest.fixture
def shared_clickhouse(tmp_path: Path) -> Any:
    with clickhouse_front(tmp_path / "clickhouse") as address:
        yield f"http://default:@{address}/suho_analytics"


def test_a_row_clickhouse_refuses_for_good_is_dead_lettered_and_recording_goes_on(tmp_path: Path, kafka_bootstrap: str, shared_clickhouse: str) -> None:
    def constrain(settings: Settings) -> None:
        store = Store(settings.dsn, settings.clickhouse_database)  # the schema, as the service makes it
        store.client.command(f"ALTER TABLE {settings.clickhouse_database}.execution_records ADD CONSTRAINT sane_price CHECK fill_price < 1000")
        store.close()

    system = RunningSystem(tmp_path / "service", kafka_bootstrap, prepare=constrain, clickhouse_dsn=shared_clickhouse)
    try:
        gold = system.send(signal("XAUUSD", "buy", 0.1))
        assert gold is not None
        letters = wait_until(lambda: dead_letters(system), 20, what="the dead letter")
        assert [(d["role"], d["item_type"], d["item"]["kind"]) for d in letters] == [("recorder", "OrderEvent", "fill")]
        assert "469" in letters[0]["error"] or "VIOLATED_CONSTRAINT" in letters[0]["error"]
        # The order's own row is written (executions come last), its execution is the refused row.
        system.wait_status(gold, "filled")
        assert system.query("SELECT count() FROM suho_analytics.execution_records WHERE order_id = {id:UUID}", id=gold) == [(0,)]
        euro = system.send(signal("EURUSD", "buy", 0.1))
        assert euro is not None
        system.wait_status(euro, "filled")
        assert wait_until(lambda: system.query("SELECT count() FROM suho_analytics.executions WHERE order_id = {id:UUID}", id=euro) == [(1,)], what="the execution")
        assert len(dead_letters(system)) == 1
    finally:
        system.close()
