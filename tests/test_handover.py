"""Hand-overs to the recorder are acknowledged, kept until then and sent again to a new recorder
(actors/base.py); the recorder acknowledges many at once and drops events it already has.
Exercised on the actors' own code, without an actor system (send and timers are captured)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from actors import base
from actors.base import HANDOVER, RoleActor
from actors.recorder import ACKNOWLEDGE, Recorder
from messages.actor import Configure, Peers, Record, Recorded
from messages.enums import OrderType, Side
from messages.order import Order, OrderEvent
from model import order as model
from service.config import Settings
from service.outbox import Batch, Outbox
from service.partitions import Share
from service.store import Store


class Captured:
    """Stands in for Thespian: what the actor sent and the timers it set."""

    def __init__(self, actor: Any, address: str) -> None:
        self.sent: list[tuple[Any, Any]] = []
        self.timers: list[Any] = []
        actor._myRef = SimpleNamespace(address=address)
        actor.send = lambda target, message: self.sent.append((target, message))
        actor.wakeupAfter = lambda delay, payload=None: self.timers.append(payload)


def event(order_id: uuid.UUID) -> OrderEvent:
    order = Order(
        order_id=order_id, signal_id=uuid.uuid4(), symbol="EURUSD", side=Side.BUY, order_type=OrderType.MARKET,
        quantity=0.1, expected_price=1.1, created_at=datetime.now(UTC),
    )  # fmt: skip
    return model.decide(order, model.Take(), datetime.now(UTC), model.Policy(Settings().limits), "actor").events[0]


def test_a_hand_over_is_kept_until_acknowledged_and_goes_again_to_a_new_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    actor = RoleActor()
    io = Captured(actor, "order-actor")
    actor.peers = Peers(recorder="recorder-1")
    first, second = event(uuid.uuid4()), event(uuid.uuid4())
    actor.hand_over(Record([first]))
    actor.hand_over(Record([second]))
    assert [(t, m.ack, m.reply_to) for t, m in io.sent] == [("recorder-1", 1, "order-actor"), ("recorder-1", 2, "order-actor")]
    assert io.timers == [HANDOVER]  # one timer for all of them
    actor.receiveMsg_Recorded(Recorded([1]), "recorder-1")
    io.sent.clear()
    actor.receiveMsg_Peers(Peers(recorder="recorder-2"), "supervisor")  # the recorder was replaced
    assert [(t, m.events) for t, m in io.sent] == [("recorder-2", [second])]
    io.sent.clear()
    actor.receiveMsg_Peers(Peers(recorder="recorder-2", archiver="a2"), "supervisor")  # another role: nothing again
    assert io.sent == []
    monkeypatch.setattr(base, "RESEND_AFTER_S", 0.0)
    assert actor.handover_wakeup(SimpleNamespace(payload=HANDOVER))  # unanswered too long: again
    assert [(t, m.ack) for t, m in io.sent] == [("recorder-2", 2)]
    actor.receiveMsg_Recorded(Recorded([2]), "recorder-2")
    assert not actor.handed_over


def test_a_hand_over_lost_on_the_way_goes_again_and_a_slow_recorder_is_not_flooded(monkeypatch: pytest.MonkeyPatch) -> None:
    actor = RoleActor()
    io = Captured(actor, "order-actor")
    actor.peers = Peers(recorder="recorder-1")
    first, second, third = (event(uuid.uuid4()) for _ in range(3))
    for e in (first, second, third):
        actor.hand_over(Record([e]))
    io.sent.clear()
    assert actor.handover_wakeup(SimpleNamespace(payload=HANDOVER))  # a busy recorder: not acknowledged yet
    assert io.sent == []  # nothing sent again before RESEND_AFTER_S
    monkeypatch.setattr(base, "LOST_AFTER_S", 0.0)
    actor.receiveMsg_Recorded(Recorded([1, 3]), "recorder-1")  # 2 never arrived: it goes again, once
    assert [(t, m.ack, m.events) for t, m in io.sent] == [("recorder-1", 2, [second])]
    actor.receiveMsg_Recorded(Recorded([2]), "recorder-1")
    assert not actor.handed_over


def test_an_orders_events_go_one_record_at_a_time_the_next_once_the_one_before_is_taken() -> None:
    actor = RoleActor()
    io = Captured(actor, "order-actor")
    actor.peers = Peers(recorder="recorder-1")
    order_id, other = uuid.uuid4(), uuid.uuid4()
    created, submitted, filled, elsewhere = event(order_id), event(order_id), event(order_id), event(other)
    actor.hand_over_in_order(Record([created]), order_id)
    actor.hand_over_in_order(Record([submitted]), order_id)
    actor.hand_over_in_order(Record([elsewhere]), other)  # another order's do not wait
    actor.hand_over_in_order(Record([filled]), order_id)
    assert [(m.ack, m.events) for _, m in io.sent] == [(1, [created]), (2, [elsewhere])]
    io.sent.clear()
    actor.receiveMsg_Recorded(Recorded([2]), "recorder-1")
    assert io.sent == []  # the first is not taken yet: lost, nothing of this order goes past it
    actor.receiveMsg_Recorded(Recorded([1]), "recorder-1")
    assert [(m.ack, m.events) for _, m in io.sent] == [(3, [submitted, filled])]  # what waited, as one
    actor.receiveMsg_Recorded(Recorded([3]), "recorder-1")
    assert not actor.handed_over and not actor.in_flight and not actor.behind


def test_the_recorder_acknowledges_per_sender_per_window_and_drops_what_it_has(tmp_path: Path) -> None:
    recorder = Recorder()
    io = Captured(recorder, "recorder")
    recorder.settings = Settings(run_dir=str(tmp_path))
    recorder.peers = Peers(ingress="ingress")
    recorder.opened = object()  # configured (no write happens before the flush timer)
    recorder.outbox = Outbox(tmp_path / "outbox")
    a, b = event(uuid.uuid4()), event(uuid.uuid4())
    recorder.receiveMsg_Record(Record([a], ack=1, reply_to="actor-1"), "actor-1")
    recorder.receiveMsg_Record(Record([b], ack=2, reply_to="actor-1"), "actor-1")
    recorder.receiveMsg_Record(Record([a], ack=7, reply_to="actor-2"), "supervisor")  # forwarded, and a duplicate
    assert io.timers.count(ACKNOWLEDGE) == 1
    assert [e.event_id for e in recorder.held.events] == [a.event_id, b.event_id]  # a once
    assert io.sent == []  # nothing until the window ends
    recorder.receiveMsg_WakeupMessage(SimpleNamespace(payload=ACKNOWLEDGE), "recorder")
    assert sorted((t, m.acks) for t, m in io.sent) == [("actor-1", [1, 2]), ("actor-2", [7])]
    # A successor knows what the outbox holds: a hand-over sent again is dropped there too.
    successor = Recorder()
    Captured(successor, "recorder-2")
    successor._remember(Outbox(tmp_path / "outbox").leftovers()[1].events)
    successor.settings, successor.peers, successor.opened = recorder.settings, recorder.peers, object()
    successor.outbox = Outbox(tmp_path / "outbox")
    successor.receiveMsg_Record(Record([b], ack=2, reply_to="actor-1"), "actor-1")
    assert not successor.held.events and successor.duplicates == 1


def test_batch_numbers_are_never_reused_by_a_successor(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    used = outbox.seal()
    outbox.done(used)
    assert Outbox(tmp_path).next_batch > used


def test_an_outbox_is_replayed_by_the_last_owner_only(tmp_path: Path) -> None:
    """Another instance that served the partition since has rebuilt its orders without what the
    outbox holds and gone on from there: replayed, the old events would overwrite its own. The
    outbox is set aside instead, and the new owner marks the partition before reading anything."""
    settings = Settings(run_dir=str(tmp_path), partitions=3, instance_id="b", clickhouse_database="handover")
    share = Share(1, 3)
    held = event(uuid.uuid4())
    Outbox(tmp_path / f"outbox{share.name}").append(Batch(events=[held]))
    store = Store(settings.dsn, settings.clickhouse_database)
    confirmed = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    store.record_checkpoint(share.partition, confirmed, "b")

    def configured() -> Recorder:
        recorder = Recorder()
        Captured(recorder, "recorder")
        recorder.receiveMsg_Configure(Configure(settings, Peers(), share), "tree")
        return recorder

    assert configured().held.events == [held]  # this instance served it last: its outbox goes on
    store.record_checkpoint(share.partition, confirmed, "a")
    assert not configured().held.events  # "a" served it since
    assert [p.name for p in tmp_path.glob("outbox_p1.superseded-*")] and (tmp_path / "outbox_p1").is_dir()
    assert store.checkpoint(share.partition) == (confirmed, "b")  # marked, confirming no more than "a" did
