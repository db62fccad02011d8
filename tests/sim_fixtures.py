"""Helpers for the simulator's tests: order requests, and a running simulator watched by a client.

The tests start their own nats-server (``LocalNats``) so they do not depend on the service's
``infra`` fixture; each test gets a fresh server, hence fresh streams and consumers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import nats

from messages.broker import (
    ORDER_STATUS_SUBJECT,
    BrokerCancelled,
    BrokerError,
    BrokerFill,
    BrokerOrderReport,
    BrokerPlaced,
    OrderRequest,
    OrderStatusQuery,
    OrderStatusReport,
)
from messages.codec import decode, encode
from messages.enums import Mt5OrderType, OrderStatus, OrderType, TradeAction
from simulator.book import MARKET, side_of
from simulator.config import SimConfig
from simulator.connector import Connector
from simulator.control import SetQuote, SimControl, SimStatus
from simulator.faults import Faults

T = TypeVar("T")

ORDER_TYPES = {
    Mt5OrderType.BUY: OrderType.MARKET,
    Mt5OrderType.SELL: OrderType.MARKET,
    Mt5OrderType.BUY_LIMIT: OrderType.LIMIT,
    Mt5OrderType.SELL_LIMIT: OrderType.LIMIT,
    Mt5OrderType.BUY_STOP: OrderType.STOP,
    Mt5OrderType.SELL_STOP: OrderType.STOP,
    Mt5OrderType.BUY_STOP_LIMIT: OrderType.STOP_LIMIT,
    Mt5OrderType.SELL_STOP_LIMIT: OrderType.STOP_LIMIT,
}
NEWS = {"fill": BrokerFill, "error": BrokerError, "placed": BrokerPlaced, "cancelled": BrokerCancelled}


def order(order_type: Mt5OrderType = Mt5OrderType.BUY, volume: float = 0.1, symbol: str = "EURUSD", **fields: Any) -> OrderRequest:
    """An order request as the service sends it (the submitted status message)."""
    base: dict[str, Any] = dict(
        order_id=uuid.uuid4(),
        signal_id=uuid.uuid4(),
        status=OrderStatus.SUBMITTED,
        symbol=symbol,
        side=side_of(order_type),
        order_type=ORDER_TYPES[order_type],
        quantity=volume,
        filled_quantity=0.0,
        average_fill_price=None,
        broker_order_id=None,
        reason=None,
        actor_address="test",
        seq=1,
        timestamp=datetime.now(UTC),
        action=TradeAction.DEAL if order_type in MARKET else TradeAction.PENDING,
        type=order_type,
        volume=volume,
    )
    base.update(fields)
    return OrderRequest(**base)


def sim_config(url: str, **overrides: Any) -> SimConfig:
    """Prices move only when a test says so; tickets and deals are numbered from 1000."""
    faults = overrides.pop("faults", Faults())
    return SimConfig(nats_url=url, tick_ms=0, ticket_base=1000, seed=7, faults=faults, **overrides)


class Sim:
    """``async with Sim(url) as sim``: a simulator in this event loop and a client on ``broker.>``."""

    def __init__(self, url: str, **config: Any) -> None:
        self.url = url
        self.config = sim_config(url, **config)
        self.news: list[tuple[str, msgspec.Struct]] = []

    async def __aenter__(self) -> Sim:
        self.connector = Connector(self.config)
        await self.connector.start()
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()

        async def collect(msg: Any) -> None:
            self.news.append((msg.subject, decode(msg.data, NEWS[msg.subject.split(".")[1]])))

        await self.nc.subscribe("broker.>", cb=collect)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()
        await self.connector.stop()

    async def submit(self, *requests: OrderRequest, msg_id: str | None = None) -> None:
        """Publish like the service: JetStream, Nats-Msg-Id = order_id unless told otherwise."""
        for request in requests:
            headers = {"Nats-Msg-Id": msg_id or str(request.order_id)}
            await self.js.publish(f"orders.submitted.{request.symbol}", encode(request), headers=headers)

    async def control(self, **fields: Any) -> SimStatus:
        reply = await self.nc.request(self.connector.config.control_subject, encode(SimControl(**fields)), timeout=2)
        return decode(reply.data, SimStatus)

    async def quote(self, symbol: str, bid: float, ask: float) -> SimStatus:
        return await self.control(set_quote=SetQuote(symbol=symbol, bid=bid, ask=ask))

    async def ask(self, subject: str, message: msgspec.Struct, kind: type[T], timeout: float = 1.0) -> T:
        reply = await self.nc.request(subject, encode(message), timeout=timeout)
        return decode(reply.data, kind)

    async def status_of(self, order_id: uuid.UUID) -> BrokerOrderReport:
        return (await self.ask(ORDER_STATUS_SUBJECT, OrderStatusQuery(order_ids=[order_id]), OrderStatusReport)).orders[0]

    def of(self, kind: type[T], order_id: uuid.UUID | None = None) -> list[T]:
        return [n for _, n in self.news if isinstance(n, kind) and (order_id is None or getattr(n, "order_id", None) == order_id)]

    def subjects(self) -> list[str]:
        return [subject for subject, _ in self.news]

    async def until(self, condition: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s; news so far: {self.news}")
            await asyncio.sleep(0.005)

    async def quiet(self, seconds: float = 0.2) -> None:
        """Give anything still on its way the time to arrive, before asserting it did not."""
        await asyncio.sleep(seconds)
