"""Recorder: the ClickHouse writer, and the only holder of the store (chdb is single-process).

Batches by size and time. What it is handed goes to its outbox on disk at once (so a killed
recorder loses nothing), and nothing is acknowledged or passed on until it is in ClickHouse:
after each successful flush it forwards the events to the archiver and the status publisher
and the fills to the position keeper (which all confirm them), and tells ingress which
signals' orders are now recorded. A failing write is retried with backoff; the batch is kept.

What it is handed is acknowledged (``Recorded``) once it is in the outbox, in one message per
sender per ACK_WINDOW_S; senders keep it until then and send it again to a successor (see
actors/base.py), so an event already taken (by its event_id) is dropped, not held twice. An
order's events are taken in sequence: one that comes before the one before it waits for it,
unacknowledged (service/taken.py).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import RoleActor
from messages.actor import (
    Backpressure,
    Configure,
    CrossCheck,
    CrossChecked,
    Delivered,
    Drain,
    Drained,
    FillsLoaded,
    FillsRecorded,
    GetHistory,
    History,
    LoadFills,
    LoadState,
    Peers,
    Publish,
    Query,
    QueryResult,
    Ready,
    Record,
    RecordDeals,
    Recorded,
    RecordPositions,
    Rehydrate,
    Rehydrated,
    SignalsDurable,
    StateLoaded,
    StoreOutage,
)
from messages.control import (
    CheckServers,
    ControlRecorded,
    GetLag,
    RecordControl,
    ServersChecked,
    SinkLag,
)
from messages.order import EventKind, Fill, OrderEvent
from messages.position import Position
from model.order import TERMINAL, unbroken
from service import metrics
from service.config import Settings
from service.failures import UNCLASSIFIED_ATTEMPTS, DeadLetters, Failure, classify
from service.health import check_clickhouse
from service.logs import Log
from service.outbox import Batch, Outbox
from service.store import Store
from service.taken import Taken

log = Log(__name__)

MAX_BACKOFF_S = 5.0
# The sinks that confirm each batch of events; a batch leaves the outbox when both have it,
# and the position keeper has applied its fills (KEEPER): a FillsRecorded still queued in this
# process for a busy keeper dies with it, while the sinks' confirmations may have come.
SINKS = ("archiver", "status_publisher")
KEEPER = "positions"
REATTACH = "reattach order_events"
CHECKPOINT = "checkpoint the partition"
# A partition's tree writes how far its events are confirmed by the sinks this often; its
# next owner publishes again what was recorded after that, from this much earlier (an event
# may wait in an actor that long before it is handed over: RESEND_AFTER_S).
CHECKPOINT_INTERVAL = timedelta(seconds=2)
REPLAY_MARGIN = timedelta(seconds=60)
ACKNOWLEDGE = "acknowledge hand-overs"
# Acknowledgements wait this long to go out together: one Recorded per sender per window
# (well under RESEND_AFTER_S, after which a sender sends again).
ACK_WINDOW_S = 0.5
# A hand-over out of its order's sequence waits this long for the one before it at most; then
# it is taken all the same, with the hole (its sender sends it again every RESEND_AFTER_S).
PARKED_MAX_S = 90.0


class Recorder(RoleActor):
    def __init__(self) -> None:
        super().__init__()
        self.opened: Store | None = None
        self.held = Batch()
        # Sealed batches (in ClickHouse) -> the sinks (and KEEPER) that have not confirmed them yet.
        self.unconfirmed: dict[int, tuple[list[OrderEvent], set[str]]] = {}
        self.flush_scheduled = False
        self.backoff_s = 0.0
        self.drain_asker: Any = None
        # The batches a drain waits for (None: until what was held then is written).
        self.drain_barrier: set[int] | None = None
        self.pressing = False
        # str(sender) -> (sender, acks to send it at the end of the ack window)
        # Per sender, until the ack window ends: (its address, the numbers taken, those parked).
        self.acks: dict[str, tuple[Any, list[int], list[int]]] = {}
        self.taken = Taken(datetime.now(UTC))
        # Hand-overs out of their order's sequence, unacknowledged until the one before them is
        # taken (service/taken.py): order_id -> (sender, ack) -> (the Record, its sender, since).
        self.parked: dict[uuid.UUID, dict[tuple[str, int], tuple[Record, Any, float]]] = {}
        self.duplicates = 0
        # Unclassified write failures in a row (service/failures.py).
        self.unclassified_failures = 0
        # Hand-overs that came before Configure (a successor is told of before it is set up).
        self.early: list[tuple[Any, Any]] = []

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        if self.opened is None:
            self.opened = Store(self.settings.dsn, self.settings.clickhouse_database, self.settings.clickhouse_auth)
            # A partition's own: the tree that serves it here next replays what this one left.
            self.outbox = Outbox(Path(self.settings.run_dir) / f"outbox{message.share.name}")
            self.dead_letters = DeadLetters(self.settings.run_dir, "recorder")
            self.share = message.share
            last = None if self.share.whole else self.store.checkpoint(self.share.partition)
            if last is not None and last.instance != self.settings.instance:
                # Another instance served the partition since this outbox was written: it rebuilt
                # the orders without what is in it, went on from there, and replayed what it had
                # from ClickHouse. Replayed now, these events would overwrite its own.
                if (aside := self.outbox.set_aside()) is not None:
                    log.warning("%s: outbox superseded (served by %s since): kept aside in %s", self.share, last.instance, aside)
            if not self.share.whole:
                # This owner's mark, before anything of the partition is read; it confirms no more than the last one did.
                self._record_checkpoint(last.confirmed_before if last is not None else datetime.now(UTC))
                self.wakeupAfter(CHECKPOINT_INTERVAL, payload=CHECKPOINT)
            self._take_over_leftovers()
            if last is not None:
                self._publish_unconfirmed(last.confirmed_before)
            early, self.early = self.early, []
            for letter, letter_sender in early:
                self.receiveMessage(letter, letter_sender)
        self.send(sender, Ready("recorder"))

    def _publish_unconfirmed(self, confirmed_before: datetime) -> None:
        """A partition taken over: what its last owner recorded but may not have had confirmed
        by the sinks goes out again (written again too: copies, as ClickHouse keeps them)."""
        events = [e for e in self.store.events_since(confirmed_before - REPLAY_MARGIN) if self.share.owns(e.order.symbol)]
        if events:
            log.warning("%s: %d events recorded since %s published again (the last owner may not have)", self.share, len(events), confirmed_before)
            self._hold(Batch(events=events))

    def _checkpoint(self) -> None:
        """How far this partition's events are confirmed by every sink: before the oldest held
        or unconfirmed one (now, when there is none)."""
        pending = [e.at for e in self.held.events] + [e.at for events, _ in self.unconfirmed.values() for e in events]
        self._record_checkpoint(min(pending, default=datetime.now(UTC)))
        self.wakeupAfter(CHECKPOINT_INTERVAL, payload=CHECKPOINT)

    def _record_checkpoint(self, confirmed_before: datetime) -> None:
        try:
            self.store.record_checkpoint(self.share.partition, confirmed_before, self.settings.instance)
        except Exception as exc:  # the next one, in CHECKPOINT_INTERVAL, says the same or more
            log.warning("%s: checkpoint not written: %s", self.share, exc)

    def _take_over_leftovers(self) -> None:
        """Replay what a recorder before this one was handed but had not passed on."""
        sealed, unflushed = self.outbox.leftovers()
        self.taken.add([e for _, batch in sealed for e in batch.events] + unflushed.events)
        for batch_id, batch in sealed:
            self.store.record_events(batch.events)
            # (a keeper started with the tree loads the fills from ClickHouse instead)
            keeper = self._tell_keeper(batch, batch_id) if self.peers.positions is not None else set()
            self.unconfirmed[batch_id] = (batch.events, set(SINKS) | keeper)
        self.held = unflushed
        if sealed or unflushed:
            log.warning("outbox: replaying %d sealed batches and %d unflushed items", len(sealed), len(unflushed))
            self._republish({role for role in SINKS if getattr(self.peers, role) is not None})
            self._schedule()

    def receiveMsg_Peers(self, message: Peers, sender: Any) -> None:
        """A sink was (re)started: what it had not confirmed goes to its successor. A new
        position keeper loads every recorded fill from ClickHouse: nothing to confirm to it."""
        moved = {role for role in (*SINKS, KEEPER) if getattr(message, role) != getattr(self.peers, role)}
        self.peers = message
        self._republish(moved - {KEEPER})
        if KEEPER in moved:
            for batch_id in list(self.unconfirmed):
                self._confirmed(batch_id, KEEPER)

    def _republish(self, roles: set[str]) -> None:
        for batch_id, (events, waiting) in sorted(self.unconfirmed.items()):
            for role in waiting & roles:
                self.send(getattr(self.peers, role), Publish(events, batch_id))

    def receiveMsg_Record(self, message: Record, sender: Any) -> None:
        if self._early(message, sender):
            return
        events = [e for e in message.events if not self.taken.has(e)]
        if len(events) < len(message.events):
            self.duplicates += len(message.events) - len(events)
            log.debug("%d events handed over again dropped: already taken", len(message.events) - len(events))
        if (gap := self._out_of_sequence(message)) is not None and self._park(message, sender, gap):
            return
        if events:
            self.taken.add(events)
            self._hold(Batch(events=events))
        self._acknowledge(message, sender)
        if events and events[0].order_id in self.parked:
            self._unpark(events[0].order_id)

    def _park(self, message: Record, sender: Any, first: OrderEvent) -> bool:
        """Whether the hand-over waits for the one before it (not once it has waited PARKED_MAX_S)."""
        waiting = self.parked.setdefault(first.order_id, {})
        key = (str(message.reply_to if message.reply_to is not None else sender), message.ack)
        since = waiting[key][2] if key in waiting else time.monotonic()
        if time.monotonic() - since > PARKED_MAX_S:
            del waiting[key]
            log.error("order %s: seq %d taken with the events before it still missing after %.0fs", first.order_id, first.seq, PARKED_MAX_S)
            return False
        if key not in waiting:
            log.warning("order %s: seq %d waits for the events before it (a hand-over lost on the way)", first.order_id, first.seq)
        waiting[key] = (message, sender, since)
        self._acknowledge(message, sender, parked=True)
        return True

    def _unpark(self, order_id: uuid.UUID) -> None:
        """The order's hand-overs that follow now are taken, one by one (each may let the next follow)."""
        while waiting := self.parked.get(order_id):
            follows = [key for key, (message, _, _) in waiting.items() if self._out_of_sequence(message) is None]
            if not follows:
                return
            message, sender, _ = waiting.pop(follows[0])
            if not waiting:
                del self.parked[order_id]
            self.receiveMsg_Record(message, sender)
        self.parked.pop(order_id, None)

    def _out_of_sequence(self, message: Record) -> OrderEvent | None:
        """Its first event not taken yet, if that does not follow the last one taken of its order."""
        first = next((e for e in message.events if not self.taken.has(e)), None)
        return first if first is not None and not self.taken.follows(first) else None

    def receiveMsg_RecordDeals(self, message: RecordDeals, sender: Any) -> None:
        # (a deal is one row per execution_id however often it is written)
        if self._early(message, sender):
            return
        self._hold(Batch(deals=message.fills))
        self._acknowledge(message, sender)

    def receiveMsg_RecordPositions(self, message: RecordPositions, sender: Any) -> None:
        if self._early(message, sender):
            return
        self._hold(Batch(positions=message.positions))
        self._acknowledge(message, sender)

    @property
    def store(self) -> Store:
        if self.opened is None:
            raise RuntimeError("the recorder is not configured yet: its store is not open")
        return self.opened

    def _early(self, message: Any, sender: Any) -> bool:
        if self.opened is not None:
            return False
        self.early.append((message, sender))
        return True

    def _acknowledge(self, message: Record | RecordDeals | RecordPositions, sender: Any, parked: bool = False) -> None:
        """It is in the outbox (or parked): answered with whatever else this sender hands over in the window."""
        if not message.ack:
            return
        to = message.reply_to if message.reply_to is not None else sender
        if not self.acks:
            self.wakeupAfter(timedelta(seconds=ACK_WINDOW_S), payload=ACKNOWLEDGE)
        _, taken, waiting = self.acks.setdefault(str(to), (to, [], []))
        (waiting if parked else taken).append(message.ack)

    def _send_acks(self) -> None:
        acks, self.acks = self.acks, {}
        for to, taken, parked in acks.values():
            self.send(to, Recorded(taken, parked))

    def _hold(self, batch: Batch) -> None:
        self.outbox.append(batch)
        self.held.extend(batch)
        self._schedule()
        self._check_pressure()

    def _check_pressure(self) -> None:
        """Past the bound, ingress stops taking signals until half of it is worked off."""
        held = len(self.held.events) + sum(len(events) for events, _ in self.unconfirmed.values())
        bound = self.settings.max_held_events
        if held > bound and not self.pressing or held < bound // 2 and self.pressing:
            self.pressing = not self.pressing
            reason = f"{held} events held (bound {bound}): ClickHouse, Kafka or NATS is behind"
            log.warning("backpressure %s: %s", "on" if self.pressing else "off", reason)
            self.send(self.peers.ingress, Backpressure(self.pressing, reason))

    def set_gauges(self) -> None:
        metrics.backlog(len(self.held), self.unconfirmed_by_sink())

    def unconfirmed_by_sink(self) -> dict[str, int]:
        """Per sink, the recorded events it has not confirmed yet."""
        return {role: sum(len(events) for events, roles in self.unconfirmed.values() if role in roles) for role in SINKS}

    def doing(self) -> str:
        unconfirmed = sum(len(events) for events, _ in self.unconfirmed.values())
        return f"{len(self.held)} to write, {unconfirmed} to confirm, {self.duplicates} copies dropped{' (backpressure)' if self.pressing else ''}"

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == REATTACH:
            self.store.client.command(f"ATTACH TABLE {self.settings.clickhouse_database}.order_events")
            log.warning("fault injection: order_events attached again")
            return
        if message.payload == ACKNOWLEDGE:
            self._send_acks()
            return
        if message.payload == CHECKPOINT:
            self._checkpoint()
            return
        self.flush_scheduled = False
        self._flush()

    def receiveMsg_StoreOutage(self, message: StoreOutage, sender: Any) -> None:
        self.store.client.command(f"DETACH TABLE {self.settings.clickhouse_database}.order_events")
        log.warning("fault injection: order_events detached for %.1fs", message.seconds)
        self.wakeupAfter(timedelta(seconds=message.seconds), payload=REATTACH)

    def receiveMsg_Delivered(self, message: Delivered, sender: Any) -> None:
        self._confirmed(message.batch_id, message.role)

    def _confirmed(self, batch_id: int, role: str) -> None:
        entry = self.unconfirmed.get(batch_id)
        if entry is None:
            return
        entry[1].discard(role)
        if not entry[1]:
            del self.unconfirmed[batch_id]
            self.outbox.done(batch_id)
            self._check_pressure()
        self._answer_drain()

    def receiveMsg_Drain(self, message: Drain, sender: Any) -> None:
        """Answered once what was handed over before it is in ClickHouse and confirmed by
        every sink: a barrier, not "nothing held", which a tree still at work may never reach."""
        self.drain_asker = sender
        self.drain_barrier = None
        self._flush()
        self._answer_drain()

    def _answer_drain(self) -> None:
        if self.drain_asker is None:
            return
        if self.drain_barrier is None and not len(self.held):
            self.drain_barrier = set(self.unconfirmed)  # what the drain waits for
        if self.drain_barrier is not None and not self.drain_barrier & self.unconfirmed.keys():
            self.send(self.drain_asker, Drained("recorder"))
            self.drain_asker = None

    def _schedule(self) -> None:
        if len(self.held) >= self.settings.batch_size and self.backoff_s == 0:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.wakeupAfter(timedelta(milliseconds=self.settings.batch_window_ms))

    def _flush(self) -> None:
        if not len(self.held):
            return
        if any(getattr(self.peers, role) is None for role in (*SINKS, "positions", "ingress")):
            # Replaying a predecessor's outbox while the tree is still being built: the
            # batch goes once everyone it is handed to exists.
            self.flush_scheduled = True
            self.wakeupAfter(timedelta(milliseconds=self.settings.batch_window_ms))
            return
        batch = self.held
        try:
            self._write(batch)
        except Exception as exc:  # the server may be down: keep everything, try again later
            self.backoff_s = min(MAX_BACKOFF_S, max(0.1, self.backoff_s * 2))
            log.warning("ClickHouse write failed (%s); holding %d items, retry in %.1fs", exc, len(batch), self.backoff_s)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.wakeupAfter(timedelta(seconds=self.backoff_s))
            return
        metrics.recorded(batch.events, batch.deals)
        self.backoff_s = 0.0
        self.held = Batch()
        batch_id = self.outbox.seal()
        waiting: set[str] = set()
        if batch.events:
            waiting |= set(SINKS)
            for role in SINKS:
                self.send(getattr(self.peers, role), Publish(batch.events, batch_id))
        if created := [e.order.signal_id for e in batch.events if e.kind is EventKind.CREATED]:
            self.send(self.peers.ingress, SignalsDurable(created))
        waiting |= self._tell_keeper(batch, batch_id)
        if waiting:
            self.unconfirmed[batch_id] = (batch.events, waiting)
        else:
            self.outbox.done(batch_id)
        if self.drain_asker is not None and self.drain_barrier is None:
            self.drain_barrier = set(self.unconfirmed)  # what was held when the drain came is written

    def _tell_keeper(self, batch: Batch, batch_id: int) -> set[str]:
        """The batch's fills and new SL/TPs to the position keeper; {KEEPER} if there were any."""
        events = [e for e in batch.events if e.fill is not None or e.kind is EventKind.MODIFIED]
        if not events and not batch.deals:
            return set()
        self.send(self.peers.positions, FillsRecorded(events, batch.deals, batch_id))
        return {KEEPER}

    def _write(self, batch: Batch) -> None:
        """Write the batch; one ClickHouse refuses for good is written item by item, and the
        item it refuses is dead-lettered (service/failures.py): nothing behind it waits. A
        transient failure raises, and the whole batch is held for a retry."""
        try:
            self._write_items(batch.events, batch.deals, batch.positions)
            self.unclassified_failures = 0
            return
        except Exception as exc:
            if not self._gives_up(exc):
                raise
            log.warning("ClickHouse refused a batch of %d (%s): writing it item by item", len(batch), exc)
        for events, deals, positions in [*(([e], [], []) for e in batch.events), *(([], [d], []) for d in batch.deals), *(([], [], [p]) for p in batch.positions)]:
            try:
                self._write_items(events, deals, positions)
            except Exception as exc:
                if not self._gives_up(exc):
                    raise
                self.dead_letters.add([*events, *deals, *positions][0], exc)
        self.unclassified_failures = 0

    def _write_items(self, events: list[OrderEvent], deals: list[Fill], positions: list[Position]) -> None:
        self.store.record_events(events)
        self.store.record_fills(deals, str(self.myAddress))
        self.store.record_positions(positions)

    def _gives_up(self, exc: Exception) -> bool:
        """Whether retrying cannot help: a permanent refusal, or an unclassified error seen too often."""
        failure = classify(exc)
        self.unclassified_failures += failure is Failure.UNCLASSIFIED
        return failure is Failure.PERMANENT or self.unclassified_failures >= UNCLASSIFIED_ATTEMPTS

    # --- questions only the store can answer -------------------------------------------

    def receiveMsg_LoadState(self, message: LoadState, sender: Any) -> None:
        """What ClickHouse has, and over it what is held (a predecessor's outbox replayed but not
        written yet): an order only the outbox knows is rebuilt and reconciled too, and its
        signal is known (a redelivery of it is a duplicate)."""
        window = timedelta(hours=message.idempotency_window_hours)
        latest = {e.order_id: e.order for e in self.store.latest_snapshots(open_only=True)}
        known = self.store.signal_orders(window)
        for event in self.held.events:
            if event.order_id not in latest or latest[event.order_id].version < event.seq:
                latest[event.order_id] = event.order
            known.setdefault(event.order.signal_id, (event.order_id, event.order.signal_fingerprint))
        open_orders = [o for o in latest.values() if o.status not in TERMINAL and message.share.owns(o.symbol)]
        self.send(sender, StateLoaded(known, open_orders, self.store.control()))

    def receiveMsg_RecordControl(self, message: RecordControl, sender: Any) -> None:
        """Written at once, not batched: the operator waits for it, and it is rare."""
        try:
            self.store.record_control(message.record)
        except Exception as exc:  # the supervisor tells the operator; the control is in force anyway
            log.error("trading control version %d not recorded: %s", message.record.version, exc)
            self.send(sender, ControlRecorded(message.record.version, str(exc)))
            return
        self.send(sender, ControlRecorded(message.record.version))

    def receiveMsg_GetLag(self, message: GetLag, sender: Any) -> None:
        self.send(sender, SinkLag(len(self.held), self.unconfirmed_by_sink()))

    def receiveMsg_CheckServers(self, message: CheckServers, sender: Any) -> None:
        client = self.opened.client if self.opened is not None else None
        self.send(sender, ServersChecked(type(self).__name__, [check_clickhouse(client, self.settings)]))

    def receiveMsg_LoadFills(self, message: LoadFills, sender: Any) -> None:
        self.send(sender, FillsLoaded(self.store.fills_with_stops()))

    def receiveMsg_Rehydrate(self, message: Rehydrate, sender: Any) -> None:
        if self.parked.pop(message.order_id, None):
            # Its revival decides them again from the last event in sequence (same ids): taken
            # later, a dead actor's would mix two histories.
            log.warning("order %s: hand-overs waiting for the events before them dropped: it is revived", message.order_id)
        known = self.store.history(message.order_id) + [e for e in self.held.events if e.order_id == message.order_id]
        order = unbroken(known)
        if known and (order is None or order.version < max(e.seq for e in known)):
            log.warning("order %s: events up to seq %d known, seq %d missing: revived from before the gap",
                        message.order_id, max(e.seq for e in known), order.version + 1 if order else 1)
        self.send(sender, Rehydrated(message.order_id, order, message.news))

    def receiveMsg_GetHistory(self, message: GetHistory, sender: Any) -> None:
        held = [e for e in self.held.events if e.order_id == message.order_id]
        recorded = self.store.history(message.order_id)
        seen = {e.seq for e in recorded}
        self.send(sender, History(message.order_id, recorded + [e for e in held if e.seq not in seen]))

    def receiveMsg_Query(self, message: Query, sender: Any) -> None:
        try:
            columns, rows = self.store.read_only(message.sql, message.parameters)
        except Exception as exc:  # ClickHouse's refusal (readonly, several statements, syntax) is the answer
            self.send(sender, QueryResult([], [], error=str(exc)))
            return
        self.send(sender, QueryResult(columns, rows))

    def receiveMsg_CrossCheck(self, message: CrossCheck, sender: Any) -> None:
        self.send(sender, CrossChecked(message.signal_ids, sorted(self.store.signals_in_trading_signals(message.signal_ids))))
