"""Kafka: the audit archive of every order lifecycle event (topic ``order_execution_archive``).

Records are keyed by order_id, so one order's events land in one partition and stay in
order there. The producer is idempotent with acks=all: a retried send after a lost ack is
written once, and a send reported done is on every in-sync replica.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.codec import has_lz4
from aiokafka.errors import for_code

from service.config import Settings
from service.logs import Log

log = Log(__name__)

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC_OR_PARTITION = 3
_LEADER_NOT_AVAILABLE = 5


def _to_bytes(value: bytes | str | None) -> bytes | None:
    # Keys are order ids (str or bytes); values are already-encoded events (bytes).
    return value.encode() if isinstance(value, str) else value


def archive_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer for the archive topic; the caller starts and stops it."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="execution-service-archive",
        enable_idempotence=True,
        acks="all",
        # Small: the archiver batches on its own; this only coalesces one burst of sends.
        linger_ms=5,
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        # lz4 only when its binding is installed; aiokafka refuses the setting otherwise.
        compression_type="lz4" if has_lz4() else None,
        key_serializer=_to_bytes,
        value_serializer=_to_bytes,
    )


async def ensure_topic(settings: Settings, timeout_ms: int = 10_000) -> None:
    """Create the archive topic with ``settings.archive_partitions`` partitions, idempotently.

    An existing topic with fewer partitions is grown (Kafka cannot shrink one; that case is
    logged). Growing moves the key -> partition mapping, so it is logged as a warning too.
    """
    topic, partitions = settings.archive_topic, settings.archive_partitions
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="execution-service-admin",
        request_timeout_ms=timeout_ms,
    )
    await admin.start()
    try:
        # aiokafka speaks CreateTopics v3 at most, where "-1 = broker default" does not exist
        # yet: replicate on up to 3 brokers (1 on a single local node).
        brokers = (await admin.describe_cluster())["brokers"]
        replicas = max(1, min(3, len(brokers)))
        response = await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=replicas)],
            timeout_ms=timeout_ms,
        )
        created = True
        for _name, code, *rest in response.topic_errors:
            if code == _TOPIC_ALREADY_EXISTS:
                created = False
            elif code != 0:
                raise for_code(code)(f"creating topic {topic}: {rest[0] if rest else ''}")
        if created:
            log.info("created Kafka topic %s with %d partitions", topic, partitions)

        have = await _partitions(admin, topic, timeout_ms, at_least=partitions if created else 1)
        if have < partitions:
            log.warning(
                "Kafka topic %s has %d partitions, growing it to %d: keys move partition",
                topic, have, partitions,
            )
            response = await admin.create_partitions(
                {topic: NewPartitions(total_count=partitions)}, timeout_ms=timeout_ms
            )
            for _name, code, message in response.topic_errors:
                if code != 0:
                    raise for_code(code)(f"growing topic {topic}: {message}")
            await _partitions(admin, topic, timeout_ms, at_least=partitions)
        elif have > partitions:
            log.warning(
                "Kafka topic %s has %d partitions, more than the %d configured; left as is",
                topic, have, partitions,
            )
    finally:
        await admin.close()


async def _partitions(admin: AIOKafkaAdminClient, topic: str, timeout_ms: int, at_least: int = 1) -> int:
    """The topic's partition count as the broker's metadata shows it. The controller answers
    CreateTopics once it committed the change; the broker applies it a moment later, so a
    topic just created (by us or by a concurrent caller) may be unknown for a few ms."""
    deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
    while True:
        (described,) = await admin.describe_topics([topic])
        code, have = described["error_code"], len(described["partitions"])
        if code == 0 and have >= at_least:
            return have
        if code not in (0, _UNKNOWN_TOPIC_OR_PARTITION, _LEADER_NOT_AVAILABLE):
            raise for_code(code)(f"describing topic {topic}")
        if asyncio.get_running_loop().time() > deadline:
            raise for_code(code or _UNKNOWN_TOPIC_OR_PARTITION)(
                f"topic {topic} not visible with {at_least}+ partitions after {timeout_ms} ms"
            )
        await asyncio.sleep(0.05)
