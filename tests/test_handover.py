"""Hand-overs to the recorder are acknowledged, kept until then and sent again to a new recorder
(actors/base.py); the recorder acknowledges many at once and drops events it already has.
Exercised on the actors' own code, without an actor system (send and timers are captured)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from harness import clickhouse_front

from actors import base
from actors.base import HANDOVER, RESEND_AFTER_S, RESEND_PATIENCE_MAX_S, RoleActor
from actors.positions import COMPARE_AGAIN, PositionKeeper
from actors.recorder import ACKNOWLEDGE, Recorder
from actors.supervisor import REHYDRATE_TIMEOUT, Supervisor
from messages import broker as wire
from messages.actor import (
    Assign,
    BrokerUpdate,
    Configure,
    Delivered,
    FillsRecorded,
    Orphan,
    Peers,
    QueryPositions,
    Record,
    Recorded,
    Rehydrate,
    Rehydrated,
    Released,
)
from messages.enums import OrderType, Side
from messages.order import Order, OrderEvent
from model import order as model
from service import mt5
from service.config import Settings
from service.outbox import Batch, Outbox
from service.partitions import Share
from service.store import Store
from service.taken import Taken


class Captured:
    """Stands in for Thespian: what the actor sent and the timers it set."""

    def __init__(self, actor: Any, address: str) -> None:
        self.sent: list[tuple[Any, Any]] = []
        self.timers: list[Any] = []
        actor._myRef = SimpleNamespace(address=address)
        actor.send = lambda target, message: self.sent.append((target, message))
        actor.wakeupAfter = lambda delay, payload=None: self.timers.append(payload)


def history(order_id: uuid.UUID, *inputs: model.Input) -> list[OrderEvent]:
    """A new limit order's events: taken (CREATED, SUBMITTED), then ``inputs``."""
    order = Order(
        order_id=order_id, signal_id=uuid.uuid4(), symbol="EURUSD", side=Side.BUY, order_type=OrderType.LIMIT,
        quantity=0.1, expected_price=1.1, created_at=datetime.now(UTC),
    )  # fmt: skip
    events = []
    for given in (model.Take(), *inputs):
        decision = model.decide(order, given, datetime.now(UTC), model.Policy(Settings().limits), "actor")
        order, events = decision.order, events + decision.events
    return events


def event(order_id: uuid.UUID) -> OrderEvent:
    return history(order_id)[0]


def deal_news(order: Order, deal: int) -> wire.BrokerFill:
    return wire.BrokerFill(
        order_id=order.order_id, ticket=7, deal=deal, symbol=order.symbol, side=order.side, volume=0.05, price=1.1,
        timestamp=datetime.now(UTC), position=7,
    )


def test_a_hand_over_is_kept_until_acknowledged_and_goes_again_to_a_new_recorder() -> None:
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
    go_back(actor, 2, RESEND_AFTER_S)
    assert actor.handover_wakeup(SimpleNamespace(payload=HANDOVER))  # unanswered too long: again
    assert [(t, m.ack) for t, m in io.sent] == [("recorder-2", 2)]
    actor.receiveMsg_Recorded(Recorded([2]), "recorder-2")
    assert not actor.handed_over


def go_back(actor: RoleActor, ack: int, seconds: float) -> None:
    """As if hand-over ``ack`` had been sent ``seconds`` earlier."""
    kept = actor.handed_over[ack]
    actor.handed_over[ack] = kept._replace(sent_at=kept.sent_at - seconds)


def test_a_recorder_far_behind_gets_copies_ever_more_rarely() -> None:
    """Without evidence of a loss, each copy doubles the wait for the next: a recorder minutes
    behind is not sent a copy of everything every minute on top of its backlog."""
    actor = RoleActor()
    io = Captured(actor, "order-actor")
    actor.peers = Peers(recorder="recorder-1")
    actor.hand_over(Record([event(uuid.uuid4())]))
    io.sent.clear()
    waits = []
    for _ in range(6):
        patience = actor.handed_over[1].patience_s
        go_back(actor, 1, patience - 1)
        actor.handover_wakeup(SimpleNamespace(payload=HANDOVER))
        assert io.sent == []  # not yet
        go_back(actor, 1, 1)
        actor.handover_wakeup(SimpleNamespace(payload=HANDOVER))
        assert [m.ack for _, m in io.sent] == [1]
        io.sent.clear()
        waits.append(patience)
    assert waits == [RESEND_AFTER_S, 120, 240, RESEND_PATIENCE_MAX_S, RESEND_PATIENCE_MAX_S, RESEND_PATIENCE_MAX_S]
    actor.receiveMsg_Peers(Peers(recorder="recorder-2"), "supervisor")  # a new recorder: at once all the same
    assert io.sent == [("recorder-2", actor.handed_over[1].message)]


def test_a_recorder_that_answers_late_is_given_twice_as_long_before_a_copy() -> None:
    """One that took 100 s to answer lately is working through a backlog that deep: a copy of
    whatever it has not answered after a minute would only deepen it."""
    actor = RoleActor()
    io = Captured(actor, "order-actor")
    actor.peers = Peers(recorder="recorder-1")
    actor.hand_over(Record([event(uuid.uuid4())]))
    actor.hand_over(Record([event(uuid.uuid4())]))
    go_back(actor, 1, 100)
    go_back(actor, 2, 100)
    actor.receiveMsg_Recorded(Recorded([1]), "recorder-1")  # answered after 100 s
    assert actor.answer_time_s == pytest.approx(100, abs=1)
    io.sent.clear()
    go_back(actor, 2, 90)  # 190 s unanswered
    actor.handover_wakeup(SimpleNamespace(payload=HANDOVER))
    assert io.sent == []
    go_back(actor, 2, 15)  # 205 s
    actor.handover_wakeup(SimpleNamespace(payload=HANDOVER))
    assert [m.ack for _, m in io.sent] == [2]
    go_back(actor, 2, 5)
    actor.receiveMsg_Recorded(Recorded([2]), "recorder-1")  # the copy's answer: no measure of the delay
    assert actor.answer_time_s == pytest.approx(100, abs=1) and not actor.handed_over


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


def test_a_parked_hand_over_shows_the_ones_before_it_lost_and_is_not_sent_again_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender whose later hand-over the recorder holds back learns at once that the earlier
    one is missing (no later one may be acknowledged for a long while: the actor may be idle),
    and does not resend the parked one each time a later number is acknowledged."""
    actor = RoleActor()
    io = Captured(actor, "order-actor")
    actor.peers = Peers(recorder="recorder-1")
    monkeypatch.setattr(base, "LOST_AFTER_S", 0.0)
    created, submitted, filled = history(uuid.uuid4(), model.Placed(555))
    actor.hand_over(Record([created, submitted]))  # lost on the way
    actor.hand_over(Record([filled]))
    io.sent.clear()
    actor.receiveMsg_Recorded(Recorded([], parked=[2]), "recorder-1")
    assert [m.ack for _, m in io.sent] == [1]
    actor.hand_over(Record([event(uuid.uuid4())]))
    io.sent.clear()
    actor.receiveMsg_Recorded(Recorded([3]), "recorder-1")  # 1 still missing; 2 parked: not again
    assert [m.ack for _, m in io.sent] == [1]
    actor.receiveMsg_Recorded(Recorded([1, 2]), "recorder-1")
    assert not actor.handed_over


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
    successor.taken.add(Outbox(tmp_path / "outbox").leftovers()[1].events)
    successor.settings, successor.peers, successor.opened = recorder.settings, recorder.peers, object()
    successor.outbox = Outbox(tmp_path / "outbox")
    successor.receiveMsg_Record(Record([b], ack=2, reply_to="actor-1"), "actor-1")
    assert not successor.held.events and successor.duplicates == 1


def test_an_orders_hand_over_that_comes_before_the_one_before_it_waits_for_it(tmp_path: Path) -> None:
    """The actor that released an order may lose a hand-over the actor holding it since does not:
    taken first, the later one would leave a hole in the order's history if the first sender died."""
    recorder = Recorder()
    io = Captured(recorder, "recorder")
    recorder.settings = Settings(run_dir=str(tmp_path))
    recorder.peers = Peers(ingress="ingress")
    recorder.opened = object()
    recorder.outbox = Outbox(tmp_path / "outbox")
    created, submitted, placed = history(uuid.uuid4(), model.Placed(555))
    recorder.receiveMsg_Record(Record([placed], ack=1, reply_to="actor-2"), "actor-2")  # before the first, lost on the way
    assert not recorder.held.events and recorder.parked  # waiting, unacknowledged
    recorder.receiveMsg_WakeupMessage(SimpleNamespace(payload=ACKNOWLEDGE), "recorder")
    assert io.sent == [("actor-2", Recorded([], parked=[1]))]  # its sender is told: what it sent before may be lost
    io.sent.clear()
    recorder.receiveMsg_Record(Record([placed], ack=1, reply_to="actor-2"), "actor-2")  # sent again: still waiting
    recorder.receiveMsg_Record(Record([created, submitted], ack=4, reply_to="actor-1"), "actor-1")  # the first, again
    assert [e.seq for e in recorder.held.events] == [1, 2, 3] and not recorder.parked
    recorder.receiveMsg_WakeupMessage(SimpleNamespace(payload=ACKNOWLEDGE), "recorder")
    assert sorted((t, m.acks) for t, m in io.sent if isinstance(m, Recorded)) == [("actor-1", [4]), ("actor-2", [1])]
    # An order from before this recorder may have history it never saw: taken as it comes.
    older = msgspec.structs.replace(placed, order=msgspec.structs.replace(placed.order, created_at=datetime(2026, 1, 1, tzinfo=UTC)),
                                    order_id=uuid.uuid4(), event_id="older:3")  # fmt: skip
    recorder.receiveMsg_Record(Record([older], ack=2, reply_to="actor-2"), "actor-2")
    assert recorder.held.events[-1] == older


def test_a_batch_with_fills_leaves_the_outbox_only_once_the_position_keeper_has_applied_them(tmp_path: Path) -> None:
    """The sinks may confirm a batch while its FillsRecorded is still queued in the recorder's
    process for a busy keeper (Thespian's transmits each wait for the receiver's acknowledgement):
    a recorder killed then must not have deleted the batch, or the keeper never hears of those fills."""
    recorder = Recorder()
    io = Captured(recorder, "recorder")
    recorder.settings = Settings(run_dir=str(tmp_path))
    recorder.peers = Peers(ingress="ingress", archiver="archiver", status_publisher="status", positions="keeper")
    recorder.opened = object()
    recorder.outbox = Outbox(tmp_path / "outbox")
    recorder._write = lambda batch: None  # (ClickHouse took it)
    order_id = uuid.uuid4()
    order = history(order_id, model.Placed(555))[-1].order
    events = history(order_id, model.Placed(555), mt5.report_of(deal_news(order, 1001)))
    recorder.receiveMsg_Record(Record(events, ack=1, reply_to="actor"), "actor")
    recorder._flush()
    told = [m for target, m in io.sent if target == "keeper" and isinstance(m, FillsRecorded)]
    assert [e.fill.deal for e in told[0].events if e.fill] == [1001]
    for role in ("archiver", "status_publisher"):
        recorder.receiveMsg_Delivered(Delivered(role, told[0].batch_id), role)
    assert list((tmp_path / "outbox").glob("*.batch"))  # the keeper has not said it applied them
    # Killed now: the next recorder tells the keeper again (it applies a deal once).
    successor = Recorder()
    replayed = Captured(successor, "recorder-2")
    successor.settings, successor.peers = recorder.settings, recorder.peers
    successor.opened = SimpleNamespace(record_events=lambda events: None)
    successor.outbox = Outbox(tmp_path / "outbox")
    successor._take_over_leftovers()
    again = [m for target, m in replayed.sent if target == "keeper" and isinstance(m, FillsRecorded)]
    assert [e.fill.deal for e in again[0].events if e.fill] == [1001]
    successor.receiveMsg_Delivered(Delivered("positions", again[0].batch_id), "keeper")
    successor.receiveMsg_Peers(Peers(ingress="ingress", archiver="archiver-2", status_publisher="status-2", positions="keeper"), "supervisor")
    for role in ("archiver", "status_publisher"):
        successor.receiveMsg_Delivered(Delivered(role, again[0].batch_id), role)
    assert not list((tmp_path / "outbox").glob("*.batch")) and not successor.unconfirmed


def test_batch_numbers_are_never_reused_by_a_successor(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    used = outbox.seal()
    outbox.done(used)
    assert Outbox(tmp_path).next_batch > used


def test_what_a_recorder_appends_after_a_line_cut_short_by_a_kill_is_replayed(tmp_path: Path) -> None:
    """The recorder before was killed part way through an append; the next one appended and
    acknowledged hand-overs after it, then was killed too (the writers_killed scenario kills
    recorders 0.1-0.4 s apart): the one after that replays all of them but the cut line."""
    before, cut, after, last = (event(uuid.uuid4()) for _ in range(4))
    first = Outbox(tmp_path)
    first.append(Batch(events=[before]))
    first._open.write(msgspec.json.encode(Batch(events=[cut]))[:150])  # the append the kill stopped
    first._open.flush()
    second = Outbox(tmp_path)
    second.append(Batch(events=[after]))
    second.seal()
    second.append(Batch(events=[last]))
    sealed, unflushed = Outbox(tmp_path).leftovers()
    assert [e.event_id for _, batch in sealed for e in batch.events] == [before.event_id, after.event_id]
    assert [e.event_id for e in unflushed.events] == [last.event_id]


def test_an_outbox_is_replayed_by_the_last_owner_only(tmp_path: Path) -> None:
    """Another instance that served the partition since has rebuilt its orders without what the
    outbox holds and gone on from there: replayed, the old events would overwrite its own. The
    outbox is set aside instead, and the new owner marks the partition before reading anything."""
    with clickhouse_front(tmp_path / "clickhouse") as address:  # (a server: chdb stays out of this process)
        settings = Settings(run_dir=str(tmp_path), partitions=3, instance_id="b", clickhouse_dsn=f"http://default:@{address}/handover", clickhouse_database="handover")
        outbox_replayed_by_the_last_owner_only(settings, tmp_path)


def outbox_replayed_by_the_last_owner_only(settings: Settings, tmp_path: Path) -> None:
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


def test_news_for_an_order_no_actor_holds_revives_it_once_however_much_comes() -> None:
    """Two deals of one order reported missing at once gave it two actors, each writing its own
    history under the same event ids: one revival at a time, the news goes to its actor."""
    supervisor = Supervisor()
    io = Captured(supervisor, "supervisor")
    supervisor.peers = Peers(recorder="recorder")
    supervisor.idle = ["actor-1", "actor-2"]
    order = event(uuid.uuid4()).order
    first, second = (Orphan(BrokerUpdate(order.order_id, deal_news(order, deal))) for deal in (1, 2))
    supervisor.receiveMsg_Orphan(first, "positions")
    supervisor.receiveMsg_Orphan(second, "positions")
    assert [type(m) for _, m in io.sent] == [Rehydrate]  # asked once
    supervisor.receiveMsg_Rehydrated(Rehydrated(order.order_id, order, first.update.news), "recorder")
    supervisor.receiveMsg_Rehydrated(Rehydrated(order.order_id, order, second.update.news), "recorder")  # (a late answer)
    assigned = [(t, m) for t, m in io.sent if isinstance(m, Assign)]
    assert [t for t, _ in assigned] == ["actor-2"] and supervisor.active == {order.order_id: "actor-2"}
    assert (("actor-2", BrokerUpdate(order.order_id, second.update.news))) in io.sent  # the other news: to its actor


def test_a_revival_not_answered_is_asked_again_with_its_news_and_at_once_of_a_new_recorder() -> None:
    """The Rehydrate, or its answer, dies with a recorder: no news may come to ask again."""
    supervisor = Supervisor()
    io = Captured(supervisor, "supervisor")
    supervisor.settings = Settings()
    supervisor.peers = Peers(recorder="recorder-1")
    supervisor.createActor = lambda kind: "recorder-2"  # type: ignore[method-assign]
    supervisor._configure = supervisor._broadcast_peers = lambda *args: None  # type: ignore[method-assign]
    order = event(uuid.uuid4()).order
    news = deal_news(order, 1)
    supervisor._rehydrate(order.order_id, news)
    supervisor._rehydrate_again(REHYDRATE_TIMEOUT)  # answered within the timeout, maybe: not asked yet
    supervisor._child_died("recorder-1")
    asked = [(t, m) for t, m in io.sent if isinstance(m, Rehydrate)]
    assert asked == [("recorder-1", Rehydrate(order.order_id, news)), ("recorder-2", Rehydrate(order.order_id, news))]
    supervisor.rehydrating[order.order_id] = (datetime.now(UTC) - REHYDRATE_TIMEOUT, news)  # lost on the way
    supervisor._rehydrate_again(REHYDRATE_TIMEOUT)
    assert io.sent[-1] == ("recorder-2", Rehydrate(order.order_id, news))
    supervisor.receiveMsg_Rehydrated(Rehydrated(order.order_id, order, news), "recorder-2")
    assert order.order_id not in supervisor.rehydrating


def test_an_order_forgotten_by_the_recorder_is_taken_as_it_comes() -> None:
    """The recorder remembers a bounded number of orders: one it forgot is not held back for
    events it took long ago."""
    first, second = history(uuid.uuid4()), history(uuid.uuid4())
    taken = Taken(datetime(2026, 1, 1, tzinfo=UTC), bound=1)
    taken.add(first[:1])
    taken.add(second[:1])  # the first order is forgotten
    assert taken.follows(first[1]) and not taken.follows(msgspec.structs.replace(second[1], seq=3))


def test_a_released_orders_last_events_are_handed_over_again_when_the_actor_that_released_it_dies() -> None:
    """Its last hand-over may have been lost on the way, while another actor took the order over:
    that one's events wait for these (service/taken.py), which only the supervisor still has."""
    supervisor = Supervisor()
    io = Captured(supervisor, "supervisor")
    supervisor.settings = Settings()
    supervisor.peers = Peers(recorder="recorder")
    supervisor._new_order_actor = lambda: "actor-new"  # type: ignore[method-assign]
    supervisor.pool_size = 1
    created, submitted, placed = history(uuid.uuid4(), model.Placed(555))
    supervisor.receiveMsg_Released(Released(placed.order, [placed]), "actor-1")  # resting; PLACED not acknowledged
    supervisor._child_died("actor-1")
    records = [(t, m.events) for t, m in io.sent if isinstance(m, Record)]
    assert records == [("recorder", [placed])]
    assert supervisor.handed_over  # kept until the recorder acknowledges it


def test_an_order_revived_while_its_last_events_are_not_recorded_goes_on_from_them() -> None:
    """Late news for an order an actor gave back ended: reviving it from what was recorded
    would write a second version of the events still on their way, under other event ids."""
    supervisor = Supervisor()
    io = Captured(supervisor, "supervisor")
    supervisor.peers = Peers(recorder="recorder")
    supervisor.idle = ["actor-1"]
    created, submitted, placed, cancelled = history(uuid.uuid4(), model.Placed(555), model.Ended(model.EndCause.CANCELLED, 0.1))
    supervisor.receiveMsg_Released(Released(cancelled.order, [placed, cancelled]), "actor-2")
    news = deal_news(cancelled.order, 1)
    supervisor.receiveMsg_Orphan(Orphan(BrokerUpdate(cancelled.order.order_id, news)), "positions")
    supervisor.receiveMsg_Rehydrated(Rehydrated(cancelled.order.order_id, submitted.order, news), "recorder")
    assigned = [m for _, m in io.sent if isinstance(m, Assign)]
    assert [a.order for a in assigned] == [cancelled.order] and assigned[0].news == news


def test_an_order_waiting_for_a_free_actor_is_queued_once() -> None:
    """With every actor busy, two pieces of news for a resting order queued two assignments:
    the order got two actors. The second joins the first, which then asks the broker."""
    supervisor = Supervisor()
    Captured(supervisor, "supervisor")
    supervisor.settings = Settings(order_actor_max=0)
    supervisor.peers = Peers(recorder="recorder")
    placed = history(uuid.uuid4(), model.Placed(555))[-1]
    supervisor.resting[placed.order_id] = placed.order
    first, second = (Orphan(BrokerUpdate(placed.order_id, deal_news(placed.order, deal))) for deal in (1, 2))
    supervisor.receiveMsg_Orphan(first, "gateway")
    supervisor.receiveMsg_Orphan(second, "gateway")
    assert [(a.order.order_id, a.reconcile, a.news) for a in supervisor.waiting] == [(placed.order_id, True, second.update.news)]


def test_a_reconciliation_asked_for_once_more_does_not_start_another_periodic_one() -> None:
    """Each round that recovered a deal used to add a reconciliation chain of its own: the
    keeper's load grew with every recovery until its messages queued for a minute."""
    keeper = PositionKeeper()
    io = Captured(keeper, "positions")
    keeper.settings = Settings()
    keeper.peers = Peers(gateway="gateway")
    keeper.receiveMsg_WakeupMessage(SimpleNamespace(payload=COMPARE_AGAIN), "positions")
    assert [t for t, m in io.sent if isinstance(m, QueryPositions)] == ["gateway"] and io.timers == []
    keeper.receiveMsg_WakeupMessage(SimpleNamespace(payload=None), "positions")  # the periodic one goes on
    assert len([m for _, m in io.sent if isinstance(m, QueryPositions)]) == 2 and io.timers == [None]
