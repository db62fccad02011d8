"""OrderActor: owns one active order's state machine; every decision about it happens here.

An order is *active* while something is expected to happen soon: from creation until the
broker accepts it as a resting pending order (placed) or it ends. A resting order is handed
back to the supervisor (Released) and this warm process takes the next order; news for a
resting order makes the supervisor assign it to an actor again.

Events produced while handling one message are recorded together (one Record message).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from thespian.actors import WakeupMessage

from actors.base import RoleActor
from actors.lifecycle import (
    IN_FLIGHT,
    TERMINAL,
    IllegalTransition,
    advance,
    apply_deal,
    fill_of,
    is_resting,
)
from actors.gateway import REQUEST_TIMEOUT_S
from messages import broker as wire
from messages.actor import (
    Assign,
    BrokerNews,
    BrokerUpdate,
    CancelAtBroker,
    CancelOrder,
    Configure,
    GetState,
    ModifyAtBroker,
    ModifyOrder,
    ModifyResult,
    OrderState,
    Orphan,
    Peers,
    QueryBroker,
    Ready,
    Record,
    RecordDeals,
    Released,
    Route,
    Submit,
)
from messages.enums import (
    Filling,
    Mt5OrderType,
    Mt5TimeType,
    OrderStatus,
    OrderType,
    Retcode,
    Side,
    TimeInForce,
    TradeAction,
)
from messages.control import GetQuotes, Quotes
from messages.order import EventKind, Order, OrderChange, OrderEvent, OrderStatusMessage, changed_fields
from messages.signal import SignalRefused
from messages.symbols import SYMBOLS
from model.pretrade import check_change
from service import metrics
from service.config import Settings
from service.logs import Log

log = Log(__name__)

MT5_TYPES = {
    (OrderType.MARKET, Side.BUY): Mt5OrderType.BUY,
    (OrderType.MARKET, Side.SELL): Mt5OrderType.SELL,
    (OrderType.LIMIT, Side.BUY): Mt5OrderType.BUY_LIMIT,
    (OrderType.LIMIT, Side.SELL): Mt5OrderType.SELL_LIMIT,
    (OrderType.STOP, Side.BUY): Mt5OrderType.BUY_STOP,
    (OrderType.STOP, Side.SELL): Mt5OrderType.SELL_STOP,
    (OrderType.STOP_LIMIT, Side.BUY): Mt5OrderType.BUY_STOP_LIMIT,
    (OrderType.STOP_LIMIT, Side.SELL): Mt5OrderType.SELL_STOP_LIMIT,
}
MT5_TIME = {TimeInForce.GTC: Mt5TimeType.GTC, TimeInForce.DAY: Mt5TimeType.DAY, TimeInForce.GTD: Mt5TimeType.SPECIFIED}
AWAITING_BROKER = (OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED)
# Unanswered status queries before a never-seen order is declared failed.
MAX_UNKNOWN_REPORTS = 3
# A modify the connector does not answer is sent once more (it names absolute values, so a
# second one applied changes nothing), then refused here: the order-status query cannot
# tell whether the broker took it, since it reports no prices.
MODIFY_SENDS = 2
# NO_CHANGES: what a resend finds when the first one was applied.
MODIFY_ACCEPTED = (Retcode.DONE, Retcode.NO_CHANGES)


def order_request(order: Order, settings: Settings, actor_address: str, at: datetime) -> wire.OrderRequest:
    """The submitted status message (``order`` is submitted), which is also MT5's order_send request."""
    pending = order.order_type is not OrderType.MARKET
    if order.order_type is OrderType.STOP_LIMIT:
        price, stoplimit = order.stop_price, order.price
    elif order.order_type is OrderType.STOP:
        price, stoplimit = order.stop_price, None
    else:
        price, stoplimit = (order.price if pending else order.expected_price), None
    return wire.OrderRequest(
        **msgspec.structs.asdict(OrderStatusMessage.of_order(order, actor_address, at)),
        action=TradeAction.PENDING if pending else TradeAction.DEAL,
        type=MT5_TYPES[(order.order_type, order.side)],
        volume=order.quantity,
        price=price,
        stoplimit=stoplimit,
        sl=None if order.closes_position else order.stop_loss,
        tp=None if order.closes_position else order.take_profit,
        deviation=settings.deviation_points,
        type_time=MT5_TIME[order.time_in_force],
        expiration=order.expires_at,
        # A market order takes what the book gives within the deviation and cancels the rest
        # (its remainder would otherwise wait at the broker with nothing to trigger it); a
        # pending order keeps working until it is filled, cancelled or expires.
        type_filling=Filling.RETURN if pending else Filling.IOC,
        magic=settings.magic,
        comment=order.order_id.hex[:31],
        position=order.close_position,
    )


class OrderActor(RoleActor):
    def __init__(self) -> None:
        super().__init__()
        self.order: Order | None = None
        self.pending_events: list[OrderEvent] = []
        self.unknown_reports = 0
        # A cancel sent to the broker keeps the order active until the broker answers it.
        self.cancelling = False
        # Status queries in a row that brought nothing new.
        self.quiet_queries = 0
        # How often the pending modify went to the broker (0: its quote is awaited). A revived
        # actor starts again at 0: the modify is checked and sent again.
        self.modify_sends = 0

    @property
    def address(self) -> str:
        return str(self.myAddress)

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        self.send(sender, Ready("order"))

    # --- taking an order --------------------------------------------------------------------

    def receiveMsg_Assign(self, message: Assign, sender: Any) -> None:
        self.order = message.order
        self.unknown_reports = 0
        self.cancelling = False
        self.quiet_queries = 0
        self.modify_sends = 0
        if message.reconcile:
            self._log("info", "revived at version %d: asking the broker", self.order.version)
        if self.order.version == 0:
            self._emit(EventKind.CREATED, detail="from signal")
            if message.reconcile:
                self._query_broker()  # revived before anything was recorded: it may be out already
            else:
                self._start()
        else:
            self.send(self.peers.gateway, Route(self.order.order_id))
            if message.news is not None:
                self._on_news(message.news)
            if message.reconcile and self.order is not None and self.order.status in IN_FLIGHT:
                self._query_broker()
            if message.cancel is not None:
                self._cancel(message.cancel.reason)
            if self.order is not None and self.order.pending_modify is not None:
                self._check_modify(self.order)  # revived or recovered: its request or answer was lost
            if self.order is not None and message.modify is not None:
                self._modify(self.order, message.modify.change)
        self._finish()

    def _start(self) -> None:
        """Send a pending order out. A close names its position (the supervisor chose it):
        without one it would open an opposite position instead."""
        assert self.order is not None
        if self.order.closes_position and self.order.close_position is None:
            reason = "no position named to close"
            self._emit(EventKind.REJECTED, detail=reason, rejection_reason=reason)
        else:
            self._submit()

    def _submit(self, **changes: object) -> None:
        assert self.order is not None
        now = datetime.now(UTC)
        pending = OrderStatusMessage.of_order(self.order, self.address, now)
        self._emit(EventKind.SUBMITTED, submitted_at=now, **changes)
        self.send(self.peers.gateway, Submit(order_request(self.order, self.settings, self.address, now), pending, self.order.created_at))

    # --- news from the broker -------------------------------------------------------------------

    def receiveMsg_BrokerUpdate(self, message: BrokerUpdate, sender: Any) -> None:
        if self.order is None or self.order.order_id != message.order_id:
            # This process holds another order now: the supervisor finds the right one.
            self.send(self.peers.supervisor, Orphan(message))
            return
        self._on_news(message.news)
        self._finish()

    def _on_news(self, news: BrokerNews) -> None:
        assert self.order is not None
        if self.order.status is OrderStatus.SUBMITTED and self.order.broker_order_id is None and not self.order.deals:
            metrics.broker_answered(news, self.order.submitted_at)  # nothing heard of it before
        try:
            match news:
                case wire.BrokerFill():
                    self._on_deal(news)
                case wire.BrokerPlaced():
                    if self.order.broker_order_id is None or self.order.status is OrderStatus.SUBMITTED:
                        self._emit(EventKind.PLACED, detail=f"resting as ticket {news.ticket}", broker_order_id=str(news.ticket))
                case wire.BrokerError():
                    metrics.BROKER_REJECTS.labels(str(news.retcode)).inc()
                    reason = f"{news.retcode} {news.comment}"
                    self._emit(EventKind.REJECTED, detail=reason, rejection_reason=reason)
                case wire.BrokerCancelled() if news.remaining < self.order.remaining - 1e-9:
                    # The broker filled more than we have heard of: fetch those deals first.
                    self._query_broker()
                case wire.BrokerCancelled():
                    kind = EventKind.EXPIRED if news.cause is wire.CancelCause.EXPIRED else EventKind.CANCELLED
                    self._emit(kind, detail=f"{news.cause.value}, {news.remaining} unfilled")
                case wire.BrokerOrderReport():
                    self._on_report(news)
                case ModifyResult():
                    self._on_modify_result(self.order, news.result)
                case wire.RequestResult():
                    if news.retcode != Retcode.DONE:
                        self.cancelling = False
                        self._log("warning", "broker refused the cancel: %s %s", news.retcode, news.comment)
        except IllegalTransition as refused:
            self._log("error", "refused: %s", refused)

    def _on_deal(self, deal: wire.BrokerFill) -> None:
        assert self.order is not None
        if self.order.status in TERMINAL:
            if deal.deal not in self.order.deals:
                # The deal happened at the broker whatever our state says: it is recorded for the
                # positions, and the order is not silently changed.
                self._log("error", "deal %s arrived for a %s order; recorded as a refused deal", deal.deal, self.order.status.value)
                self.hand_over(RecordDeals([fill_of(deal, self.order.expected_price, SYMBOLS[deal.symbol])]))
            return
        event = apply_deal(self.order, deal, SYMBOLS[self.order.symbol], self.address)
        if event is None:
            self._log("warning", "duplicate deal %s ignored", deal.deal)
            return
        self._apply(event)

    def _on_report(self, report: wire.BrokerOrderReport) -> None:
        """Fold the broker's whole truth about the order (state and every deal) into ours."""
        assert self.order is not None
        if self.order.status is OrderStatus.PENDING and report.state is not wire.BrokerOrderState.UNKNOWN:
            self._emit(EventKind.SUBMITTED, detail="the broker has it: it was sent before this actor took over")
        if self.order.status in AWAITING_BROKER and self._news_in(report):
            self._emit(
                EventKind.QUERIED,
                detail=f"broker reports {report.state.value}, {report.filled_volume}/{report.volume} in {len(report.deals)} deals",
            )
        for deal in report.deals:
            self._on_deal(deal)
        state = report.state
        if state is wire.BrokerOrderState.UNKNOWN:
            self._on_unknown_at_broker()
        elif state is wire.BrokerOrderState.PLACED and self.order.broker_order_id is None:
            self._emit(EventKind.PLACED, detail=f"resting as ticket {report.ticket}", broker_order_id=str(report.ticket))
        elif state is wire.BrokerOrderState.PLACED and self.cancelling:
            # Still resting although we asked to cancel: the request or its answer was lost.
            self.send(self.peers.gateway, CancelAtBroker(self.order.order_id))
        elif state in (wire.BrokerOrderState.CANCELLED, wire.BrokerOrderState.EXPIRED) and self.order.status in IN_FLIGHT:
            kind = EventKind.EXPIRED if state is wire.BrokerOrderState.EXPIRED else EventKind.CANCELLED
            self._emit(kind, detail=f"broker reports {state.value}")
        elif state is wire.BrokerOrderState.REJECTED and self.order.status in IN_FLIGHT:
            metrics.BROKER_REJECTS.labels(str(report.retcode)).inc()
            reason = f"{report.retcode} {report.comment}"
            self._emit(EventKind.REJECTED, detail=reason, rejection_reason=reason)

    def _news_in(self, report: wire.BrokerOrderReport) -> bool:
        """Whether the report tells more than we know (a query that changes nothing is not an event)."""
        assert self.order is not None
        if any(deal.deal not in self.order.deals for deal in report.deals):
            return True
        if report.state is wire.BrokerOrderState.PLACED:
            return self.order.broker_order_id is None
        return report.state is not wire.BrokerOrderState.PARTIALLY_FILLED

    def _on_unknown_at_broker(self) -> None:
        assert self.order is not None
        self.unknown_reports += 1
        if self.order.status is OrderStatus.PENDING:
            self._start()
        elif self.unknown_reports >= MAX_UNKNOWN_REPORTS:
            self._emit(EventKind.FAILED, detail="the broker never received the order", error_message="unknown at broker")
        else:
            # Resending is safe: the same order_id is one order at the broker and in JetStream.
            self.send(self.peers.gateway, Submit(order_request(self.order, self.settings, self.address, datetime.now(UTC))))

    # --- timers and operator commands -------------------------------------------------------------

    def _arm_timer(self) -> None:
        """A timer bound to the order's current version: any later event makes it moot. Asking
        again and hearing nothing new doubles the wait, up to 32 times the timeout."""
        assert self.order is not None
        wait = self.settings.broker_timeout_s * 2 ** min(self.quiet_queries, 5)
        self.wakeupAfter(timedelta(seconds=wait), payload=(self.order.order_id, self.order.version))

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if self.handover_wakeup(message) or self.order is None:
            return
        if (change := self.order.pending_modify) is not None and message.payload == self._modify_timer():
            self._modify_unanswered(self.order, change)
            self._finish()
            return
        if message.payload != (self.order.order_id, self.order.version):
            return  # something happened since the timer was set
        if self.order.status in AWAITING_BROKER and not self._resting():
            self._log("warning", "no news from the broker since version %d: asking", self.order.version)
            self.quiet_queries += 1
            self._query_broker()
            self._arm_timer()

    def _query_broker(self) -> None:
        assert self.order is not None
        self.send(self.peers.gateway, QueryBroker([self.order.order_id]))

    def receiveMsg_CancelOrder(self, message: CancelOrder, sender: Any) -> None:
        if self.order is None or self.order.order_id != message.order_id:
            # Released meanwhile: the supervisor holds it as resting now.
            self.send(self.peers.supervisor, message)
            return
        self._cancel(message.reason)
        self._finish()

    def _cancel(self, reason: str) -> None:
        assert self.order is not None
        try:
            if self.order.status is OrderStatus.PENDING:
                self._emit(EventKind.CANCELLED, detail=reason)
            else:
                self._emit(EventKind.CANCEL_REQUESTED, detail=reason)
                self.cancelling = True
                self.send(self.peers.gateway, CancelAtBroker(self.order.order_id))
        except IllegalTransition as refused:
            self._log("warning", "cancel refused: %s", refused)

    # --- an operator's modify -----------------------------------------------------------------

    def receiveMsg_ModifyOrder(self, message: ModifyOrder, sender: Any) -> None:
        if self.order is None or self.order.order_id != message.order_id:
            self.send(self.peers.supervisor, message)  # released meanwhile
            return
        self._modify(self.order, message.change)
        self._finish()

    def _modify(self, order: Order, change: OrderChange) -> None:
        """Record the request (the order carries it from now on), then check it against the quote."""
        working = order.status in AWAITING_BROKER and order.order_type is not OrderType.MARKET and order.broker_order_id is not None
        try:
            if order.pending_modify is not None:
                reason = f"modify {order.pending_modify.request_id} is still waiting for the broker's answer"
                self._emit(EventKind.MODIFY_REFUSED, detail=reason, change=change)
            elif self.cancelling:
                self._emit(EventKind.MODIFY_REFUSED, detail="a cancel of the order is under way", change=change)
            elif not working and order.status is not OrderStatus.FILLED:
                reason = f"a {order.status.value} {order.order_type.value} order is not working at the broker: nothing to modify"
                self._emit(EventKind.MODIFY_REFUSED, detail=reason, change=change)
            else:
                self._emit(EventKind.MODIFY_REQUESTED, detail=_describe(change), change=change, pending_modify=change)
                self._check_modify(order)
        except IllegalTransition as refused:  # it ended just now (the news it was assigned with)
            self._log("warning", "modify refused: %s", refused)

    def _check_modify(self, order: Order) -> None:
        """The pre-trade rules need the last quote: ingress has it (answered with Quotes)."""
        self.modify_sends = 0
        self.send(self.peers.ingress, GetQuotes([order.symbol]))
        self._arm_modify_timer()

    def receiveMsg_Quotes(self, message: Quotes, sender: Any) -> None:
        if self.order is None or (change := self.order.pending_modify) is None or self.modify_sends:
            return  # not (or no longer) waiting for a quote
        try:
            check_change(self.order, change, message.quotes.get(self.order.symbol), self.settings.limits, datetime.now(UTC))
        except SignalRefused as refused:
            self._emit(EventKind.MODIFY_REFUSED, detail=f"{refused.reason}: {refused.detail}", change=change, pending_modify=None)
        else:
            self._send_modify(self.order, change)
        self._finish()

    def _send_modify(self, order: Order, change: OrderChange) -> None:
        self.modify_sends += 1
        fields = msgspec.structs.asdict(change)
        del fields["request_id"]
        self.send(self.peers.gateway, ModifyAtBroker(wire.ModifyRequest(order_id=order.order_id, **fields)))
        self._arm_modify_timer()

    def _on_modify_result(self, order: Order, result: wire.RequestResult) -> None:
        change = order.pending_modify
        if change is None:
            self._log("info", "late answer to a modify, ignored: %s %s", result.retcode, result.comment)
        elif result.retcode in MODIFY_ACCEPTED:
            detail = f"{result.retcode} {result.comment}"
            self._emit(EventKind.MODIFIED, detail=detail, change=change, pending_modify=None, **changed_fields(order, change))
        else:
            self._emit(EventKind.MODIFY_REFUSED, detail=f"{result.retcode} {result.comment}", change=change, pending_modify=None)

    def _modify_timer(self) -> tuple[object, ...] | None:
        """The payload of the pending modify's timer: a timer of an earlier request or send is moot."""
        if self.order is None or self.order.pending_modify is None:
            return None
        return (self.order.order_id, self.order.pending_modify.request_id, self.modify_sends)

    def _arm_modify_timer(self) -> None:
        # The gateway gives up on a request after REQUEST_TIMEOUT_S: wait at least that long.
        wait = self.settings.broker_timeout_s + REQUEST_TIMEOUT_S
        self.wakeupAfter(timedelta(seconds=wait), payload=self._modify_timer())

    def _modify_unanswered(self, order: Order, change: OrderChange) -> None:
        if 0 < self.modify_sends < MODIFY_SENDS:
            self._log("warning", "no answer to modify %s: sending it again", change.request_id)
            self._send_modify(order, change)
            return
        if self.modify_sends:
            reason = f"no answer from the connector to {self.modify_sends} requests: the broker may or may not have applied it"
        else:
            reason = "no quote came back to check it against"
        self._emit(EventKind.MODIFY_REFUSED, detail=reason, change=change, pending_modify=None)

    def doing(self) -> str:
        return f"order {self.order.order_id} ({self.order.status.value})" if self.order else "idle"

    def receiveMsg_GetState(self, message: GetState, sender: Any) -> None:
        held = self.order if self.order is not None and self.order.order_id == message.order_id else None
        self.send(sender, OrderState(held, os.getpid(), self.address))

    # --- bookkeeping ---------------------------------------------------------------------------

    def _emit(self, kind: EventKind, detail: str | None = None, change: OrderChange | None = None, **changes: object) -> None:
        assert self.order is not None
        self._apply(advance(self.order, kind, datetime.now(UTC), self.address, detail=detail, change=change, **changes))

    def _apply(self, event: OrderEvent) -> None:
        self.order = event.order
        self.pending_events.append(event)
        self.quiet_queries = 0

    def _resting(self) -> bool:
        return self.order is not None and not self.cancelling and is_resting(self.order)

    def _finish(self) -> None:
        """Record what happened; give the order back when it is terminal or resting, else
        make sure a timer will ask the broker if nothing more is heard."""
        if self.pending_events:
            # One log line for what one message did (each line is a message to Thespian's logger).
            steps = "; ".join(f"{e.kind.value} -> {e.status.value}{f' ({e.detail})' if e.detail else ''}" for e in self.pending_events)
            self._log("info", "%s", steps)
            # Kept (per process, across orders) until the recorder acknowledges it: see actors/base.py.
            self.hand_over(Record(self.pending_events))
            self.pending_events = []
        if self.order is None:
            return
        # A filled order is held while the SL/TP change of its position is pending.
        if (self.order.status in TERMINAL and self.order.pending_modify is None) or self._resting():
            self.send(self.peers.supervisor, Released(self.order))
            self.order = None
        elif self.order.status in AWAITING_BROKER:
            self._arm_timer()

    def _log(self, level: str, text: str, *args: object) -> None:
        order_id = self.order.order_id if self.order is not None else "-"
        getattr(log, level)(f"order {order_id} @ {self.address}: {text}", *args)


def _describe(change: OrderChange) -> str:
    fields = msgspec.structs.asdict(change)
    del fields["request_id"]
    return f"modify {change.request_id}: " + ", ".join(f"{name} {value}" for name, value in fields.items() if value is not None)

