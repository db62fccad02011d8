"""A small client of the paper broker: orders as the service sends them, ``sim.control``, the
``mt5.*`` requests, and a record of what arrives on ``broker.>``. Used by the throughput run and
the tests; handy from a REPL for paper trading by hand."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.msg import Msg

from messages.broker import (
    CANCEL_SUBJECT,
    DEALS_SUBJECT,
    MODIFY_SUBJECT,
    ORDER_STATUS_SUBJECT,
    POSITIONS_SUBJECT,
    BrokerCancelled,
    BrokerError,
    BrokerFill,
    BrokerOrderReport,
    BrokerPlaced,
    CancelRequest,
    DealsQuery,
    DealsReport,
    ModifyRequest,
    OrderRequest,
    OrderStatusQuery,
    OrderStatusReport,
    PositionsQuery,
    PositionsReport,
    RequestResult,
)
from messages.codec import decode, encode
from messages.enums import Mt5OrderType, OrderStatus, OrderType, TradeAction
from simulator.book import MARKET, side_of
from simulator.control import CONTROL_SUBJECT, SetQuote, SimControl, SimStatus

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
NEWS: dict[str, type[msgspec.Struct]] = {"fill": BrokerFill, "error": BrokerError, "placed": BrokerPlaced, "cancelled": BrokerCancelled}


def order_request(order_type: Mt5OrderType = Mt5OrderType.BUY, volume: float = 0.1, symbol: str = "EURUSD", **fields: Any) -> OrderRequest:
    """An order request shaped like the service's submitted status message; ``fields`` override."""
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
        actor_address="simulator.client",
        seq=1,
        timestamp=datetime.now(UTC),
        action=TradeAction.DEAL if order_type in MARKET else TradeAction.PENDING,
        type=order_type,
        volume=volume,
    )
    base.update(fields)
    return OrderRequest(**base)


class SimClient:
    def __init__(self, nc: nats.NATS, control_subject: str = CONTROL_SUBJECT) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.control_subject = control_subject
        # (subject, headers, message) of everything seen on broker.> since watch().
        self.news: list[tuple[str, dict[str, str], msgspec.Struct]] = []
        self.on_news: Callable[[msgspec.Struct], None] | None = None

    @classmethod
    async def connect(cls, url: str, control_subject: str = CONTROL_SUBJECT) -> SimClient:
        return cls(await nats.connect(url, name="sim-client"), control_subject)

    async def close(self) -> None:
        await self.nc.close()

    async def watch(self) -> None:
        """Record broker news as the service's durable consumer sees it: what the stream stored
        (an ordered JetStream consumer), so copies JetStream deduplicated are not seen."""

        async def record(msg: Msg) -> None:
            news = decode(msg.data, NEWS[msg.subject.split(".")[1]])
            self.news.append((msg.subject, dict(msg.headers or {}), news))
            if self.on_news is not None:
                self.on_news(news)

        await self.js.subscribe("broker.>", cb=record, ordered_consumer=True)

    async def submit(self, *requests: OrderRequest, msg_id: str | None = None) -> None:
        """Publish like the service: JetStream, Nats-Msg-Id = order_id unless told otherwise."""
        futures = [
            await self.js.publish_async(
                f"orders.submitted.{request.symbol}", encode(request), headers={"Nats-Msg-Id": msg_id or str(request.order_id)}
            )
            for request in requests
        ]
        await asyncio.gather(*futures)

    async def control(self, **fields: Any) -> SimStatus:
        return await self.ask(self.control_subject, SimControl(**fields), SimStatus, timeout=5.0)

    async def set_quote(self, symbol: str, bid: float, ask: float) -> SimStatus:
        return await self.control(set_quote=SetQuote(symbol=symbol, bid=bid, ask=ask))

    async def ask(self, subject: str, message: msgspec.Struct | bytes, kind: type[T], timeout: float = 1.0) -> T:
        payload = message if isinstance(message, bytes) else encode(message)
        reply = await self.nc.request(subject, payload, timeout=timeout)
        return decode(reply.data, kind)

    async def order_status(self, *order_ids: uuid.UUID, timeout: float = 1.0) -> list[BrokerOrderReport]:
        report = await self.ask(ORDER_STATUS_SUBJECT, OrderStatusQuery(order_ids=list(order_ids)), OrderStatusReport, timeout)
        return report.orders

    async def positions(self, symbol: str | None = None) -> PositionsReport:
        return await self.ask(POSITIONS_SUBJECT, PositionsQuery(symbol=symbol), PositionsReport)

    async def deals(self, since: datetime, until: datetime | None = None) -> list[BrokerFill]:
        report = await self.ask(DEALS_SUBJECT, DealsQuery(since=since, until=until), DealsReport)
        return report.deals

    async def cancel(self, order_id: uuid.UUID) -> RequestResult:
        return await self.ask(CANCEL_SUBJECT, CancelRequest(order_id=order_id), RequestResult)

    async def modify(self, order_id: uuid.UUID, **fields: Any) -> RequestResult:
        return await self.ask(MODIFY_SUBJECT, ModifyRequest(order_id=order_id, **fields), RequestResult)

    def of(self, kind: type[T], order_id: uuid.UUID | None = None) -> list[T]:
        return [n for _, _, n in self.news if isinstance(n, kind) and (order_id is None or getattr(n, "order_id", None) == order_id)]

    async def until(self, condition: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not met within {timeout} s; broker news so far: {[n for _, _, n in self.news]}")
            await asyncio.sleep(0.005)
