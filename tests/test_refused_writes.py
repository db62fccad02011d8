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
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from harness import RunningSystem, clickhouse_front, signal, wait_until

from service.config import Settings
from service.store import Store

# Smaller than a fill event (about 1.5 KB encoded), larger than the other events of an order.
ARCHIVE_MAX_MESSAGE_BYTES = 1400


def dead_letters(system: RunningSystem) -> list[dict[str, Any]]:
    path = Path(system.settings.run_dir) / "dead-letters.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def small_archive_topic(settings: Settings) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            topic = NewTopic(settings.archive_topic, settings.archive_partitions, 1, topic_configs={"max.message.bytes": str(ARCHIVE_MAX_MESSAGE_BYTES)})
            await admin.create_topics([topic])
        finally:
            await admin.close()

    asyncio.run(create())


def test_an_event_kafka_refuses_for_good_is_dead_lettered_and_the_archive_goes_on(tmp_path: Path, kafka_bootstrap: str) -> None:
    system = RunningSystem(tmp_path, kafka_bootstrap, prepare=small_archive_topic)
    try:
        first = system.send(signal("EURUSD", "buy", 0.1))
        second = system.send(signal("USDJPY", "buy", 0.1))
        assert first is not None and second is not None
        for order_id in (first, second):
            system.wait_status(order_id, "filled")
        letters = wait_until(lambda: len(d := dead_letters(system)) >= 2 and d, 20, what="the dead letters")
        assert {(d["role"], d["item_type"], d["item"]["kind"]) for d in letters} == {("archiver", "OrderEvent", "fill")}
        assert all("MessageSizeTooLarge" in d["error"] for d in letters)
        refused = {d["item"]["event_id"] for d in letters}
        archived = wait_until(lambda: (a := [e for e in system.archive() if e.order_id in (first, second)]) and len(a) >= 4 and a, what="the archive")
        # Every event of both orders is in one place or the other, once: nothing lost, nothing twice.
        kinds = {order_id: [e.kind.value for e in archived if e.order_id == order_id] for order_id in (first, second)}
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
