"""StatusPublisher: ``orders.{status}.{symbol}`` for every recorded status, and position alerts.

``pending`` and ``submitted`` are published by the gateway as the order goes out (the
submitted message is the order request itself), so that they precede every later status
and the connector never mistakes a status update for a new order. After that, each fill and
each change of status is published (model.order.PUBLISHED_KINDS); what changes no status (a
placement, a query, a modify: a second ``filled`` would read as another fill) is in the
archive only.
"""

from __future__ import annotations

from typing import Any

from actors.sink import SinkActor
from messages.actor import Publish, PublishAlert
from messages.codec import encode
from messages.control import ServerCheck
from messages.order import OrderEvent, OrderStatusMessage
from messages.position import ALERT_SUBJECT, PositionAlert
from model.order import PUBLISHED_KINDS
from service.health import check_nats
from service.logs import Log
from service.streams import connect_nats

log = Log(__name__)

class StatusPublisher(SinkActor):
    role = "status_publisher"

    async def open(self) -> None:
        self.nc, self.js = await connect_nats(self.settings)

    async def check_servers(self) -> list[ServerCheck]:
        return [await check_nats(getattr(self, "nc", None), self.settings)]  # (nc: once connected)

    def receiveMsg_Publish(self, message: Publish, sender: Any) -> None:
        published = [e for e in message.events if e.kind in PUBLISHED_KINDS]
        self.enqueue(published, message.batch_id, sender)

    def receiveMsg_PublishAlert(self, message: PublishAlert, sender: Any) -> None:
        self.enqueue([message.alert])

    async def write(self, batch: list[OrderEvent | PositionAlert]) -> None:
        for item in batch:
            if isinstance(item, PositionAlert):
                await self.nc.publish(ALERT_SUBJECT, encode(item))
                continue
            # The message id makes a republish after a retry or a restart a no-op in JetStream.
            await self.js.publish(
                f"orders.{item.status.value}.{item.order.symbol}",
                encode(OrderStatusMessage.of(item)),
                headers={"Nats-Msg-Id": item.event_id},
            )
