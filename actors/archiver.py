"""Archiver: every recorded lifecycle event to Kafka ``order_execution_archive``, keyed by
order_id so one order's events stay in order (idempotent producer, acks=all)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaProducer

from actors.sink import SinkActor
from messages.actor import Publish
from messages.codec import encode
from messages.control import ServerCheck
from messages.order import OrderEvent
from service.health import check_kafka
from service.kafka import archive_producer, ensure_topic


class Archiver(SinkActor):
    role = "archiver"
    producer: AIOKafkaProducer | None = None

    async def open(self) -> None:
        await ensure_topic(self.settings)
        producer = archive_producer(self.settings)
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()  # its connections and tasks, which a failed start leaves
            raise
        self.producer = producer

    def receiveMsg_Publish(self, message: Publish, sender: Any) -> None:
        self.enqueue(message.events, message.batch_id, sender)

    async def check_servers(self) -> list[ServerCheck]:
        return [await check_kafka(self.producer, self.settings)]

    async def write(self, batch: list[OrderEvent]) -> None:
        if self.producer is None:  # none yet, or dropped after a failed batch
            try:
                await self.open()
            except Exception as exc:  # Kafka is not reachable: nothing of the batch was refused
                raise ConnectionError(f"no Kafka producer: {exc}") from exc
        producer, sent = self.producer, []
        try:
            for event in batch:
                sent.append(await producer.send(
                    self.settings.archive_topic,
                    value=encode(event),
                    key=str(event.order_id).encode(),
                    headers=[("event_id", event.event_id.encode())],
                ))  # fmt: skip
            failed = [r for r in await asyncio.gather(*sent, return_exceptions=True) if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
        except Exception:
            # Any failed batch, transient or not, may have used sequence numbers the broker never
            # stored: one refused, or one aiokafka expired while no leader was known. The
            # idempotent producer is then out of step on that partition for good
            # (OutOfOrderSequenceNumber on every later send); a fresh one (a new producer id) is
            # not. Every send settles first: none is in flight when the producer goes.
            await asyncio.gather(*sent, return_exceptions=True)
            self.producer = None
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
