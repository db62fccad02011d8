"""Recorder: the ClickHouse writer, and the only holder of the store (chdb is single-process).

Batches by size and time. Nothing handed to it is acknowledged or passed on until it is
durably written: after each successful flush it forwards the events to the archiver and
the status publisher, the fills to the position keeper, and tells ingress which signals'
orders are now recorded. A failing write is retried with backoff; the batch is kept.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from thespian.actors import ActorTypeDispatcher, WakeupMessage

from messages.actor import (
    Configure,
    CrossCheck,
    CrossChecked,
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
    RecordPositions,
    Rehydrate,
    Rehydrated,
    SignalsDurable,
    StateLoaded,
)
from messages.order import EventKind, Fill, OrderEvent
from messages.position import Position
from service.config import Settings
from service.store import Store
from service.logs import Log

log = Log(__name__)

MAX_BACKOFF_S = 5.0
READ_ONLY = re.compile(r"\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS)\b", re.IGNORECASE)


class Recorder(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.store: Store | None = None
        self.events: list[OrderEvent] = []
        self.deals: list[Fill] = []
        self.positions: list[Position] = []
        self.flush_scheduled = False
        self.backoff_s = 0.0

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        if self.store is None:
            self.store = Store(self.settings.dsn, self.settings.clickhouse_database)
        self.send(sender, Ready("recorder"))

    def receiveMsg_Peers(self, message: Peers, sender: Any) -> None:
        self.peers = message

    def receiveMsg_Record(self, message: Record, sender: Any) -> None:
        self.events.extend(message.events)
        self._schedule()

    def receiveMsg_RecordDeals(self, message: RecordDeals, sender: Any) -> None:
        self.deals.extend(message.fills)
        self._schedule()

    def receiveMsg_RecordPositions(self, message: RecordPositions, sender: Any) -> None:
        self.positions.extend(message.positions)
        self._schedule()

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        self.flush_scheduled = False
        self._flush()

    def receiveMsg_Drain(self, message: Drain, sender: Any) -> None:
        self._flush()
        self.send(sender, Drained("recorder"))

    def _held(self) -> int:
        return len(self.events) + len(self.deals) + len(self.positions)

    def _schedule(self) -> None:
        if self._held() >= self.settings.batch_size and self.backoff_s == 0:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.wakeupAfter(timedelta(milliseconds=self.settings.batch_window_ms))

    def _flush(self) -> None:
        if not self._held():
            return
        assert self.store is not None
        events, deals, positions = self.events, self.deals, self.positions
        try:
            self.store.record_events(events)
            self.store.record_fills(deals, str(self.myAddress))
            self.store.record_positions(positions)
        except Exception as exc:  # the server may be down: keep everything, try again later
            self.backoff_s = min(MAX_BACKOFF_S, max(0.1, self.backoff_s * 2))
            log.warning("ClickHouse write failed (%s); holding %d items, retry in %.1fs", exc, self._held(), self.backoff_s)
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.wakeupAfter(timedelta(seconds=self.backoff_s))
            return
        self.backoff_s = 0.0
        self.events, self.deals, self.positions = [], [], []
        if events:
            self.send(self.peers.archiver, Publish(events))
            self.send(self.peers.status_publisher, Publish(events))
            created = [e.order.signal_id for e in events if e.kind is EventKind.CREATED]
            if created:
                self.send(self.peers.ingress, SignalsDurable(created))
        fill_events = [e for e in events if e.fill is not None]
        if fill_events or deals:
            self.send(self.peers.positions, FillsRecorded(fill_events, deals))

    # --- questions only the store can answer -------------------------------------------

    def receiveMsg_LoadState(self, message: LoadState, sender: Any) -> None:
        assert self.store is not None
        window = timedelta(hours=message.idempotency_window_hours)
        self.send(sender, StateLoaded(self.store.signal_orders(window), [e.order for e in self.store.latest_snapshots(open_only=True)]))

    def receiveMsg_LoadFills(self, message: LoadFills, sender: Any) -> None:
        assert self.store is not None
        self.send(sender, FillsLoaded(self.store.fills_with_stops()))

    def receiveMsg_Rehydrate(self, message: Rehydrate, sender: Any) -> None:
        held = [e for e in self.events if e.order_id == message.order_id]
        if held:
            order = max(held, key=lambda e: e.seq).order
        else:
            assert self.store is not None
            history = self.store.history(message.order_id)
            order = history[-1].order if history else None
        self.send(sender, Rehydrated(order, message.news))

    def receiveMsg_GetHistory(self, message: GetHistory, sender: Any) -> None:
        assert self.store is not None
        held = [e for e in self.events if e.order_id == message.order_id]
        recorded = self.store.history(message.order_id)
        seen = {e.seq for e in recorded}
        self.send(sender, History(recorded + [e for e in held if e.seq not in seen]))

    def receiveMsg_Query(self, message: Query, sender: Any) -> None:
        assert self.store is not None
        if not READ_ONLY.match(message.sql):
            self.send(sender, QueryResult([], [], error="only SELECT, WITH, SHOW, DESCRIBE and EXISTS are answered"))
            return
        try:
            result = self.store.client.query(message.sql, parameters=message.parameters)
        except Exception as exc:
            self.send(sender, QueryResult([], [], error=str(exc)))
            return
        self.send(sender, QueryResult(list(result.column_names), [tuple(row) for row in result.result_rows]))

    def receiveMsg_CrossCheck(self, message: CrossCheck, sender: Any) -> None:
        assert self.store is not None
        self.send(sender, CrossChecked(message.signal_ids, sorted(self.store.signals_in_trading_signals(message.signal_ids))))
