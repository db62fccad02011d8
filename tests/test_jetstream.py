"""JetStream as the service relies on it, against a real nats-server (tests/conftest.py).

Durable signals, redelivery of what was not acknowledged, and deduplication of order
requests by Nats-Msg-Id: the last is what keeps "one signal -> at most one broker order"
true on the wire when an order request is re-sent after a crash.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
)

from service.config import Settings
from service.streams import MAX_SIGNAL_MESSAGE_BYTES, connect_nats, ensure_streams

T = TypeVar("T")


def run_with_nats(settings: Settings, body: Callable[[Client, JetStreamContext], Awaitable[T]]) -> T:
    async def main() -> T:
        nc, js = await asyncio.wait_for(connect_nats(settings, name="test"), 10)
        try:
            await ensure_streams(js, settings)
            return await body(nc, js)
        finally:
            await nc.close()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_signal_published_while_no_consumer_runs_is_delivered_later(nats_settings: Settings) -> None:
    stream = f"{nats_settings.stream_prefix}_SIGNALS"
    subject = "signals.approved.EURUSD"
    durable = f"ingress_{uuid.uuid4().hex[:8]}"
    payload = f'{{"signal_id": "{uuid.uuid4()}", "symbol": "EURUSD"}}'.encode()

    async def declare_consumer(nc: Client, js: JetStreamContext) -> None:
        # The durable consumer exists (as the service declares it), then the service stops.
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
            ),
        )

    async def publish(nc: Client, js: JetStreamContext) -> None:
        ack = await js.publish(subject, payload)
        assert ack.stream == stream

    async def consume(nc: Client, js: JetStreamContext) -> None:
        sub = await js.pull_subscribe(subject, durable=durable, stream=stream)
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == payload
        await msg.ack_sync()
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=0.3)

    run_with_nats(nats_settings, declare_consumer)
    run_with_nats(nats_settings, publish)  # nobody consuming now
    run_with_nats(nats_settings, consume)  # later: it is waiting


def test_message_not_acked_is_redelivered(nats_settings: Settings) -> None:
    stream = f"{nats_settings.stream_prefix}_SIGNALS"
    subject = "signals.approved.GBPUSD"
    durable = f"redeliver_{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().bytes

    async def body(nc: Client, js: JetStreamContext) -> None:
        sub = await js.pull_subscribe(
            subject,
            durable=durable,
            stream=stream,
            config=ConsumerConfig(ack_wait=0.5, deliver_policy=DeliverPolicy.NEW),
        )
        await js.publish(subject, payload)
        (first,) = await sub.fetch(1, timeout=5)
        assert first.data == payload and first.metadata.num_delivered == 1
        # Not acked (say the actor died): after ack_wait it comes back.
        (again,) = await sub.fetch(1, timeout=5)
        assert again.data == payload
        assert again.metadata.num_delivered == 2
        assert again.metadata.sequence.stream == first.metadata.sequence.stream
        await again.ack_sync()
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=0.8)  # acked: not redelivered again

    run_with_nats(nats_settings, body)


def test_order_request_with_same_msg_id_is_dropped_as_duplicate(nats_settings: Settings) -> None:
    stream = f"{nats_settings.stream_prefix}_ORDERS"
    subject = "orders.submitted.X"
    order_id = str(uuid.uuid4())

    async def count(js: JetStreamContext) -> int:
        info = await js.stream_info(stream, subjects_filter=subject)
        return (info.state.subjects or {}).get(subject, 0)

    async def body(nc: Client, js: JetStreamContext) -> None:
        before = await count(js)
        headers = {"Nats-Msg-Id": order_id}
        first = await js.publish(subject, b'{"order_id": "%s"}' % order_id.encode(), headers=headers)
        # Re-sent after a crash, payload maybe re-encoded: the id alone decides.
        second = await js.publish(subject, b'{"order_id": "%s", "retry": 1}' % order_id.encode(), headers=headers)
        assert not first.duplicate
        assert second.duplicate is True
        assert second.seq == first.seq
        assert await count(js) - before == 1
        # A different order id is a different order.
        third = await js.publish(subject, b"{}", headers={"Nats-Msg-Id": str(uuid.uuid4())})
        assert not third.duplicate
        assert await count(js) - before == 2

    run_with_nats(nats_settings, body)


def test_ensure_streams_twice_is_harmless_and_restores_config(nats_settings: Settings) -> None:
    p = nats_settings.stream_prefix
    day = nats_settings.idempotency_window_hours * 3600

    async def body(nc: Client, js: JetStreamContext) -> None:
        ack = await js.publish("broker.fill.EURUSD", b"fill")
        assert ack.stream == f"{p}_BROKER"
        before = (await js.stream_info(f"{p}_BROKER")).state.messages

        # Someone changed the dedup window by hand: the next start puts it back.
        orders = (await js.stream_info(f"{p}_ORDERS")).config
        orders.duplicate_window = 60
        await js.update_stream(orders)

        await ensure_streams(js, nats_settings)
        await ensure_streams(js, nats_settings)

        assert (await js.stream_info(f"{p}_BROKER")).state.messages == before  # nothing lost
        expected = {
            f"{p}_SIGNALS": ["signals.approved.>", "signals.approved"],
            f"{p}_ORDERS": ["orders.>"],
            f"{p}_BROKER": ["broker.>"],
            f"{p}_DEADLETTER": [nats_settings.dead_letter_subject, "signals.alert"],
        }
        for name, subjects in expected.items():
            config = (await js.stream_info(name)).config
            assert config.subjects == subjects
            assert config.storage == StorageType.FILE
            assert config.retention == RetentionPolicy.LIMITS
        assert (await js.stream_info(f"{p}_ORDERS")).config.duplicate_window == day
        assert (await js.stream_info(f"{p}_SIGNALS")).config.max_msg_size == MAX_SIGNAL_MESSAGE_BYTES
        ack = await js.publish(nats_settings.dead_letter_subject, b'{"reason": "test"}')
        assert ack.stream == f"{p}_DEADLETTER"

    run_with_nats(nats_settings, body)
