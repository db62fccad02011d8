"""Archiver: every recorded lifecycle event to Kafka ``order_execution_archive``, keyed by
order_id so one order's events stay in order (idempotent producer, acks=all)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from actors.sink import SinkActor
from messages.actor import Publish
from messages.control import ServerCheck
from messages.codec import encode
from messages.order import OrderEvent
from service.failures import Failure, classify
from service.health import check_kafka
from service.kafka import archive_producer, ensure_topic


class Archiver(SinkActor):
    role = "archiver"
    producer: AIOKafkaProducer | None = None

    async def open(self) -> None:
        await ensure_topic(self.settings)
        producer = archive_producer(self.settings)
        await producer.start()
        self.producer = producer

    def receiveMsg_Publish(self, message: Publish, sender: Any) -> None:
        self.enqueue(message.events, message.batch_id, sender)

    async def check_servers(self) -> list[ServerCheck]:
        return [await check_kafka(self.producer, self.settings)]

    async def write(self, batch: list[OrderEvent]) -> None:
        if self.producer is None:
            raise ConnectionError("the Kafka producer is not started")  # transient: open() retries it
        sent = [
            await self.producer.send(
                self.settings.archive_topic,
                value=encode(event),
                key=str(event.order_id).encode(),
                headers=[("event_id", event.event_id.encode())],
            )
            for event in batch
        ]
        try:
            await asyncio.gather(*sent)
        except Exception as exc:
            if classify(exc) is not Failure.TRANSIENT:
                # An idempotent producer that had a batch refused is out of step with the
                # broker's sequence numbers (OutOfOrderSequenceNumber next): a fresh one is not.
                producer, self.producer = self.producer, None
                await producer.stop()
                await self.open()
            raise
