"""BrokerGateway: the only actor that speaks to mt5-connector.

Out: order requests on ``orders.submitted.{symbol}`` (JetStream, Nats-Msg-Id = order_id, so a
resend of the same order is dropped by the server) and the request/reply additions (status,
positions, cancel, modify). In: the durable ``broker.>`` consumer; each piece of news goes to the
actor that holds its order, or to the supervisor, which revives the order.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors.loop import LoopActor
from messages import broker as wire
from messages.actor import (
    BrokerNews,
    BrokerUpdate,
    CancelAtBroker,
    Configure,
    ModifyAtBroker,
    ModifyResult,
    Orphan,
    Peers,
    PositionsReply,
    QueryBroker,
    QueryPositions,
    Ready,
    RecordDeals,
    Route,
    Submit,
)
from messages.codec import ContractError, decode, encode
from messages.control import ServerCheck
from messages.order import OrderStatusMessage
from service import metrics
from service.config import Settings
from service.health import check_nats
from service.leases import Fence
from service.logs import Log
from service.mt5 import fill_of
from service.partitions import published_subject
from service.streams import connect_nats, ensure_streams

log = Log(__name__)

NEWS_KINDS: dict[str, type[BrokerNews]] = {
    "fill": wire.BrokerFill,
    "error": wire.BrokerError,
    "placed": wire.BrokerPlaced,
    "cancelled": wire.BrokerCancelled,
}
REQUEST_TIMEOUT_S = 2.0


class Inbound(msgspec.Struct):
    """One fetch of news decoded on the loop, handed to the actor thread for routing, and the
    deliveries to acknowledge once routed (never crosses processes)."""

    news: list[BrokerNews]
    deliveries: list[Any]


class BrokerGateway(LoopActor):
    nc: Any = None  # the NATS connection, once connected

    def __init__(self) -> None:
        super().__init__()
        # order_id -> the OrderActor holding it; set by Submit and Route.
        self.routes: dict[uuid.UUID, Any] = {}

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        self.share = message.share
        self.fence = Fence.of(self.settings.run_dir, self.share)
        if self.loop is None:
            self.start_loop()
            self.spawn(self._connect_and_consume(sender))
        else:
            self.send(sender, Ready("gateway"))

    async def check_servers(self) -> list[ServerCheck]:
        return [await check_nats(self.nc, self.settings)]

    async def _connect_and_consume(self, configurer: Any) -> None:
        self.nc, self.js = await connect_nats(self.settings)
        await ensure_streams(self.js, self.settings)
        stream, durable = f"{self.settings.stream_prefix}_BROKER", f"{self.settings.stream_prefix}_gateway{self.share.name}"
        subscription = await self.js.pull_subscribe(
            self.share.broker_subject,
            durable=durable,
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=10),
        )
        self.spawn(metrics.watch_consumer(self.js, stream, durable))
        self.deliver(configurer, Ready("gateway"))
        while True:
            if not (batch := await self.fetch(subscription, "broker consumer")):
                continue
            news = []
            for msg in batch:
                try:
                    news.append(decode(msg.data, NEWS_KINDS[published_subject(msg.subject).split(".")[1]]))
                except (ContractError, KeyError) as exc:
                    log.error("unreadable broker message on %s: %s", msg.subject, exc)
            self.deliver(None, Inbound(news, batch))

    # --- routing news --------------------------------------------------------------------

    def receiveMsg_Inbound(self, message: Inbound, sender: Any) -> None:
        closes = []
        for news in message.news:
            if isinstance(news, wire.BrokerFill) and news.order_id is None:
                # A deal with no order of ours behind it: an SL/TP/stop-out close at the broker.
                closes.append(fill_of(news))
            else:
                self._route(BrokerUpdate(news.order_id, news))
        if closes:
            self.hand_over(RecordDeals(closes))

        async def ack_all() -> None:
            for msg in message.deliveries:
                await msg.ack()  # an unreadable one too: it would never read better

        self.spawn(ack_all())

    def _route(self, update: BrokerUpdate) -> None:
        actor = self.routes.get(update.order_id)
        if actor is None:
            self.send(self.peers.supervisor, Orphan(update))
        else:
            self.send(actor, update)

    def receiveMsg_Route(self, message: Route, sender: Any) -> None:
        self.routes[message.order_id] = sender

    # --- requests to the connector -------------------------------------------------------

    def receiveMsg_Submit(self, message: Submit, sender: Any) -> None:
        request = message.request
        self.routes[request.order_id] = sender
        self.spawn(self._publish_request(request, message.pending, message.created_at))

    async def _publish_request(self, request: wire.OrderRequest, pending: OrderStatusMessage | None, created_at: datetime | None) -> None:
        # Both go out at once, in this order on the one connection; their acks are awaited together.
        publishes = []
        if pending is not None:
            publishes.append(self._publish(f"orders.pending.{pending.symbol}", pending, f"{pending.order_id}:{pending.seq}"))
        # The order_id as message id: JetStream drops a resend of the same order.
        publishes.append(self._publish(f"orders.submitted.{request.symbol}", request, str(request.order_id)))
        await asyncio.gather(*publishes)
        metrics.submitted(created_at)

    async def _publish(self, subject: str, message: msgspec.Struct, message_id: str) -> None:
        backoff = 0.1
        while True:
            try:
                await self.js.publish(subject, encode(message), headers={"Nats-Msg-Id": message_id})
                return
            except Exception as exc:  # NATS down: held here until it goes out
                log.warning("%s for %s not published (%s); retrying", subject, message_id, exc)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    def receiveMsg_QueryBroker(self, message: QueryBroker, sender: Any) -> None:
        async def query() -> None:
            reply = await self._request(wire.ORDER_STATUS_SUBJECT, wire.OrderStatusQuery(order_ids=message.order_ids))
            if reply is not None:
                for report in decode(reply, wire.OrderStatusReport).orders:
                    self.deliver(sender, BrokerUpdate(report.order_id, report))

        self.spawn(query())

    def receiveMsg_CancelAtBroker(self, message: CancelAtBroker, sender: Any) -> None:
        async def cancel() -> None:
            reply = await self._request(wire.CANCEL_SUBJECT, wire.CancelRequest(order_id=message.order_id))
            if reply is not None:
                self.deliver(sender, BrokerUpdate(message.order_id, decode(reply, wire.RequestResult)))

        self.spawn(cancel())

    def receiveMsg_ModifyAtBroker(self, message: ModifyAtBroker, sender: Any) -> None:
        order_id = message.request.order_id

        async def modify() -> None:
            reply = await self._request(wire.MODIFY_SUBJECT, message.request)
            if reply is not None:
                self.deliver(sender, BrokerUpdate(order_id, ModifyResult(decode(reply, wire.RequestResult))))

        self.spawn(modify())

    def receiveMsg_QueryPositions(self, message: QueryPositions, sender: Any) -> None:
        async def query() -> None:
            positions = await self._request(wire.POSITIONS_SUBJECT, wire.PositionsQuery())
            deals: list[wire.BrokerFill] = []
            if message.deals_since is not None:
                reply = await self._request(wire.DEALS_SUBJECT, wire.DealsQuery(since=message.deals_since))
                if reply is None:
                    return
                deals = decode(reply, wire.DealsReport).deals
            if positions is not None:
                self.deliver(sender, PositionsReply(decode(positions, wire.PositionsReport), deals))

        self.spawn(query())

    async def _request(self, subject: str, payload: msgspec.Struct) -> bytes | None:
        """A request to the connector; None when it does not answer (the asker retries on its timer)."""
        if self.nc is None:
            log.warning("%s not asked: not connected to NATS yet", subject)
            return None
        try:
            return (await self.nc.request(subject, encode(payload), timeout=REQUEST_TIMEOUT_S)).data
        except Exception as exc:
            log.warning("connector did not answer %s: %s", subject, exc)
            return None
