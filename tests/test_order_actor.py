"""The OrderActor wired to stand-in peers under Thespian's simpleSystemBase (one process,
synchronous): it carries out what the order model decides — the request to the gateway, one
hand-over of the order's events to the recorder, the release to the supervisor. The model's
decisions themselves are tested in tests/test_order_model.py; the real service, its processes
and servers in the end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from thespian.actors import Actor, ActorSystem

from actors.order import OrderActor
from messages import broker as wire
from messages.actor import Assign, BrokerUpdate, Configure, Peers, QueryBroker, Ready, Record, Released, Route, Submit
from messages.enums import DealEntry, DealReason, OrderStatus, OrderType, Side
from messages.order import EventKind, Order, order_id_for
from service.config import Settings

WHAT_DID_YOU_GET = "what did you get?"


class Peer(Actor):
    """Keeps what it is sent; answers WHAT_DID_YOU_GET with all of it, and forgets it."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Any] = []

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if message == WHAT_DID_YOU_GET:
            self.send(sender, self.got)
            self.got = []
        elif not isinstance(message, str):
            self.got.append(message)


@pytest.fixture
def wired() -> Iterator[tuple[ActorSystem, Any, dict[str, Any]]]:
    system = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        peers = {role: system.createActor(Peer) for role in ("supervisor", "recorder", "gateway", "ingress")}
        actor = system.createActor(OrderActor)
        settings = Settings(run_dir="/tmp/unused", broker_timeout_s=30.0, batch_window_ms=50)
        assert system.ask(actor, Configure(settings, Peers(**peers)), 5) == Ready("order")
        yield system, actor, peers
    finally:
        system.shutdown()


def got(system: ActorSystem, peer: Any) -> list[Any]:
    return system.ask(peer, WHAT_DID_YOU_GET, 5)


def market_order() -> Order:
    signal_id = uuid.uuid4()
    return Order(
        order_id=order_id_for(signal_id), signal_id=signal_id, symbol="EURUSD", side=Side.BUY,
        order_type=OrderType.MARKET, quantity=0.1, expected_price=1.08500, created_at=datetime.now(UTC),
    )  # fmt: skip


def deal(order: Order, number: int) -> wire.BrokerFill:
    return wire.BrokerFill(
        order_id=order.order_id, ticket=900, deal=number, symbol="EURUSD", side=Side.BUY, volume=0.1, price=1.08502,
        timestamp=datetime.now(UTC), commission=-0.35, position=900, entry=DealEntry.IN, reason=DealReason.CLIENT,
    )  # fmt: skip


def test_an_order_goes_out_and_its_events_are_recorded_once_with_its_end(wired: tuple[ActorSystem, Any, dict[str, Any]]) -> None:
    system, actor, peers = wired
    order = market_order()
    system.tell(actor, Assign(order))
    [submit] = got(system, peers["gateway"])
    assert isinstance(submit, Submit) and submit.request.order_id == order.order_id and submit.pending is not None
    assert got(system, peers["recorder"]) == []  # held while the broker's answer is awaited
    system.tell(actor, BrokerUpdate(order.order_id, deal(order, 1)))
    [record] = got(system, peers["recorder"])
    assert isinstance(record, Record) and [e.kind for e in record.events] == [EventKind.CREATED, EventKind.SUBMITTED, EventKind.FILL]
    assert [e.seq for e in record.events] == [1, 2, 3] and record.ack == 1
    [released] = got(system, peers["supervisor"])
    assert isinstance(released, Released) and released.order.status is OrderStatus.FILLED


def test_a_slow_broker_does_not_hold_the_events_back_longer_than_the_batch_window(wired: tuple[ActorSystem, Any, dict[str, Any]]) -> None:
    system, actor, peers = wired
    system.tell(actor, Assign(market_order()))
    system.listen(0.3)  # past the 50 ms window: the timer fires
    [record] = got(system, peers["recorder"])
    assert [e.kind for e in record.events] == [EventKind.CREATED, EventKind.SUBMITTED]
    assert got(system, peers["supervisor"]) == []  # still the actor's: it waits for the broker


def test_news_for_another_order_goes_back_to_the_supervisor(wired: tuple[ActorSystem, Any, dict[str, Any]]) -> None:
    system, actor, peers = wired
    held, other = market_order(), market_order()
    system.tell(actor, Assign(held))
    system.tell(actor, BrokerUpdate(other.order_id, deal(other, 2)))
    [orphan] = got(system, peers["supervisor"])
    assert orphan.update.order_id == other.order_id


def test_a_revived_order_asks_the_broker_before_anything_else(wired: tuple[ActorSystem, Any, dict[str, Any]]) -> None:
    system, actor, peers = wired
    order = market_order()
    system.tell(actor, Assign(order, reconcile=True))
    [query] = got(system, peers["gateway"])
    assert isinstance(query, QueryBroker) and query.order_ids == [order.order_id]
    system.tell(actor, BrokerUpdate(order.order_id, wire.BrokerOrderReport(order_id=order.order_id, state=wire.BrokerOrderState.FILLED, ticket=900, deals=[deal(order, 3)])))
    [record] = got(system, peers["recorder"])
    assert [e.kind for e in record.events] == [EventKind.CREATED, EventKind.SUBMITTED, EventKind.QUERIED, EventKind.FILL]
    assert not any(isinstance(m, (Submit, Route)) for m in got(system, peers["gateway"]))  # never sent again
