"""The Kafka archive against a real single-node broker (tests/conftest.py).

Records are keyed by order_id so each order's lifecycle events stay in order; the topic is
created idempotently with the configured number of partitions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import msgspec
from aiokafka.admin import AIOKafkaAdminClient
from harness import archive_reader

from service.config import Settings
from service.kafka import archive_producer, ensure_topic


def fresh(settings: Settings, partitions: int | None = None) -> Settings:
    """The same settings on a topic of this test's own."""
    return msgspec.structs.replace(
        settings,
        archive_topic=f"test_archive_{uuid.uuid4().hex[:8]}",
        archive_partitions=partitions or settings.archive_partitions,
    )


async def partition_count(settings: Settings) -> int:
    """The topic's partitions as the broker shows them. No retrying: ensure_topic returns only
    once the broker's metadata shows the topic as asked."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([settings.archive_topic])
        assert topic["error_code"] == 0, topic
        return len(topic["partitions"])
    finally:
        await admin.close()


def test_keyed_records_are_read_back_in_order_per_key(kafka_settings: Settings) -> None:
    settings = fresh(kafka_settings)
    orders = [str(uuid.uuid4()) for _ in range(8)]
    events_per_order = 25

    async def main() -> None:
        await ensure_topic(settings)
        producer = archive_producer(settings)
        await producer.start()
        try:
            # Interleaved, as many orders' lifecycles are: o1#0, o2#0, ..., o1#1, o2#1, ...
            # Sends are not awaited one by one, so batching and in-flight requests happen.
            sent = []
            for seq in range(events_per_order):
                for order_id in orders:
                    value = msgspec.json.encode({"order_id": order_id, "seq": seq})
                    sent.append(await producer.send(settings.archive_topic, value, key=order_id))
            metadata = await asyncio.gather(*sent)
        finally:
            await producer.stop()
        partitions_used = {m.partition for m in metadata}
        assert len(partitions_used) > 1  # keys really spread over partitions

        consumer = archive_reader(settings)
        await consumer.start()
        seen: dict[str, list[int]] = defaultdict(list)
        partition_of: dict[str, int] = {}
        try:
            total = len(orders) * events_per_order
            count = 0
            while count < total:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    for record in records:
                        assert record.key is not None and record.value is not None
                        event = msgspec.json.decode(record.value)
                        assert record.key.decode() == event["order_id"]
                        seen[event["order_id"]].append(event["seq"])
                        # One key, one partition.
                        assert partition_of.setdefault(event["order_id"], tp.partition) == tp.partition
                        count += 1
        finally:
            await consumer.stop()
        assert set(seen) == set(orders)
        for order_id in orders:
            assert seen[order_id] == list(range(events_per_order)), order_id  # in order, once each

    asyncio.run(asyncio.wait_for(main(), 60))


def test_ensure_topic_is_idempotent_with_configured_partitions(kafka_settings: Settings) -> None:
    settings = fresh(kafka_settings)

    async def main() -> None:
        await ensure_topic(settings)
        await ensure_topic(settings)
        assert await partition_count(settings) == settings.archive_partitions == 6

        # An older, smaller topic is grown to the configured count.
        small = fresh(kafka_settings, partitions=2)
        await ensure_topic(small)
        assert await partition_count(small) == 2
        await ensure_topic(msgspec.structs.replace(small, archive_partitions=5))
        assert await partition_count(small) == 5
        # Asking for fewer than there are changes nothing (Kafka cannot shrink a topic).
        await ensure_topic(msgspec.structs.replace(small, archive_partitions=3))
        assert await partition_count(small) == 5

    asyncio.run(asyncio.wait_for(main(), 60))


def test_infra_created_the_archive_topic(kafka_settings: Settings) -> None:
    # infra.sh up creates order_execution_archive with EXEC_ARCHIVE_PARTITIONS (6) partitions.
    assert asyncio.run(partition_count(kafka_settings)) == kafka_settings.archive_partitions
