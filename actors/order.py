"""OrderActor: holds one active order and carries out what the order model decides about it.

Every decision is model.order's: this actor turns messages into the model's inputs (broker
news through service/mt5.py), records the events it returns and carries out its effects
(requests to the gateway, timers). It keeps nothing about the order but the order itself.

An order is *active* while something is expected to happen soon: from creation until the
broker accepts it as a resting pending order or it ends (model.order.needs_actor). A resting
order is handed back to the supervisor (Released) and this warm process takes the next one;
news for a resting order makes the supervisor assign it to an actor again.

Events produced while handling one message are recorded together (one Record message).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import RoleActor
from actors.gateway import REQUEST_TIMEOUT_S
from messages.actor import (
    Assign,
    BrokerUpdate,
    CancelAtBroker,
    CancelOrder,
    Configure,
    GetState,
    ModifyAtBroker,
    ModifyOrder,
    OrderState,
    Orphan,
    QueryBroker,
    Ready,
    Record,
    RecordDeals,
    Released,
    Route,
    Submit,
)
from messages.control import GetQuotes, Quotes
from messages.enums import Phase
from messages.order import EventKind, Order, OrderEvent, OrderStatusMessage
from model import order as model
from service import metrics, mt5
from service.config import Settings
from service.logs import Log

log = Log(__name__)

# Events that may wait for the broker's first answer before they go to the recorder.
MAY_WAIT = frozenset({EventKind.CREATED, EventKind.SUBMITTED})
RECORD_HELD = "hand over the events held"


class OrderActor(RoleActor):
    def __init__(self) -> None:
        super().__init__()
        self.order: Order | None = None
        # Decided, not handed over yet (see _finish).
        self.pending_events: list[OrderEvent] = []
        self.record_timer = False

    @property
    def address(self) -> str:
        return str(self.myAddress)

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers = message.peers
        self.policy = model.Policy(
            broker_timeout=timedelta(seconds=self.settings.broker_timeout_s),
            request_timeout=timedelta(seconds=REQUEST_TIMEOUT_S),
            limits=self.settings.limits,
        )
        self.send(sender, Ready("order"))

    def receiveMsg_Assign(self, message: Assign, sender: Any) -> None:
        self.order = message.order
        if message.reconcile:
            self._log("info", "revived at version %d: asking the broker", self.order.version)
        if self.order.version:
            self.send(self.peers.gateway, Route(self.order.order_id))
        self._decide(model.Take(message.reconcile))
        if message.news is not None:
            self._decide(mt5.report_of(message.news))
        if message.cancel is not None:
            self._decide(model.Cancel(message.cancel.reason))
        if message.modify is not None:
            self._decide(model.Modify(message.modify.change))
        self._finish()

    def receiveMsg_BrokerUpdate(self, message: BrokerUpdate, sender: Any) -> None:
        order = self.order
        if order is None or order.order_id != message.order_id:
            # This process holds another order now: the supervisor finds the right one.
            self.send(self.peers.supervisor, Orphan(message))
            return
        report = mt5.report_of(message.news)
        if order.phase is Phase.SENT and order.broker_order_id is None and not order.deals:
            metrics.broker_answered(message.news, order.submitted_at)  # nothing heard of it before
        if isinstance(report, model.Refused):
            metrics.BROKER_REJECTS.labels(str(report.retcode)).inc()
        self._decide(report)
        self._finish()

    def receiveMsg_CancelOrder(self, message: CancelOrder, sender: Any) -> None:
        if not self._holds(message.order_id):
            self.send(self.peers.supervisor, message)  # released meanwhile: the supervisor holds it as resting
            return
        self._decide(model.Cancel(message.reason))
        self._finish()

    def receiveMsg_ModifyOrder(self, message: ModifyOrder, sender: Any) -> None:
        if not self._holds(message.order_id):
            self.send(self.peers.supervisor, message)  # released meanwhile
            return
        self._decide(model.Modify(message.change))
        self._finish()

    def receiveMsg_Quotes(self, message: Quotes, sender: Any) -> None:
        if self.order is not None:
            self._decide(model.QuoteArrived(message.quotes.get(self.order.symbol)))
            self._finish()

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == RECORD_HELD:
            self.record_timer = False
            if self.pending_events:
                self._hand_over_events()
            return
        if self.handover_wakeup(message) or self.order is None:
            return
        order_id, version, attempt = message.payload
        if order_id == self.order.order_id:
            self._decide(model.TimerFired(version, attempt))
            self._finish()

    def receiveMsg_GetState(self, message: GetState, sender: Any) -> None:
        held = self.order if self._holds(message.order_id) else None
        self.send(sender, OrderState(held, os.getpid(), self.address))

    def doing(self) -> str:
        return f"order {self.order.order_id} ({self.order.phase.value})" if self.order else "idle"

    # --- the model's decisions, carried out -------------------------------------------------------

    def _holds(self, order_id: object) -> bool:
        return self.order is not None and self.order.order_id == order_id

    def _decide(self, given: model.Input) -> None:
        if self.order is None:
            return
        before = self.order
        try:
            decision = model.decide(before, given, datetime.now(UTC), self.policy, self.address)
        except model.IllegalTransition as refused:
            self._log("error", "refused: %s", refused)
            return
        self.order = decision.order
        self.pending_events.extend(decision.events)
        for note in decision.notes:
            self._log("info", "%s", note)
        for effect in decision.effects:
            self._carry_out(effect, decision.order, before, decision.events)

    def _carry_out(self, effect: model.Effect, order: Order, before: Order, events: list[OrderEvent]) -> None:
        gateway = self.peers.gateway
        match effect:
            case model.SendOrder():
                now = datetime.now(UTC)
                request = mt5.order_request(order, self.settings, self.address, now)
                first = next((i for i, e in enumerate(events) if e.kind is EventKind.SUBMITTED), None)
                if first is None:
                    self.send(gateway, Submit(request))  # a resend
                else:  # a new order's pending status goes out just before it
                    pending = events[first - 1].order if first else before
                    self.send(gateway, Submit(request, OrderStatusMessage.of_order(pending, self.address, now), order.created_at))
            case model.SendCancel():
                self.send(gateway, CancelAtBroker(order.order_id))
            case model.SendModify(change):
                self.send(gateway, ModifyAtBroker(mt5.modify_request(order, change)))
            case model.AskBroker():
                self.send(gateway, QueryBroker([order.order_id]))
            case model.FetchQuote():
                self.send(self.peers.ingress, GetQuotes([order.symbol]))
            case model.RecordStrayFill(fill):
                self._log("error", "deal %s recorded as a deal no order takes", fill.deal)
                self.hand_over(RecordDeals([fill]))
            case model.ArmTimer(wait, version, attempt):
                self.wakeupAfter(wait, payload=(order.order_id, version, attempt))

    def _finish(self) -> None:
        """Hand the events over and give the order back when no actor needs to hold it.

        While an order waits for the broker's first answer its CREATED and SUBMITTED wait too,
        for the batch window at most: the answer mostly comes within milliseconds, and the
        order's events then reach the recorder in one hand-over instead of two. Nothing is
        lost if this process dies meanwhile: the supervisor revives the order from what it
        handed out, the revived order asks the broker first, and the model decides the same
        events again (same numbers, same ids)."""
        order = self.order
        release = order is not None and not model.needs_actor(order)
        if self.pending_events and (release or any(e.kind not in MAY_WAIT for e in self.pending_events)):
            self._hand_over_events()
        elif self.pending_events and not self.record_timer:
            self.record_timer = True
            self.wakeupAfter(timedelta(milliseconds=self.settings.batch_window_ms), payload=RECORD_HELD)
        if order is not None and release:
            unacknowledged = [e for kept in self.handed_over.values() if isinstance(kept.message, Record) for e in kept.message.events if e.order_id == order.order_id]
            self.send(self.peers.supervisor, Released(order, unacknowledged))
            self.order = None

    def _hand_over_events(self) -> None:
        # One log line for what one message did (each line is a message to Thespian's logger).
        steps = "; ".join(f"{e.kind.value} -> {e.order.phase.value}{f' ({e.detail})' if e.detail else ''}" for e in self.pending_events)
        self._log("info", "%s", steps)
        # Kept (per process, across orders) until the recorder acknowledges it: see actors/base.py.
        self.hand_over(Record(self.pending_events))
        self.pending_events = []

    def _log(self, level: str, text: str, *args: object) -> None:
        order_id = self.order.order_id if self.order is not None else "-"
        getattr(log, level)(f"order {order_id} @ {self.address}: {text}", *args)
