"""The order model: every decision about one order, and nothing else.

    decide(order, input, now, policy) -> Decision(events, effects)
    apply(order, event) -> order

An order is the fold of its events: each event carries the order after it, and ``apply``
is the only way an order changes, so a revived order (its last snapshot) knows all there is
to know. ``decide`` takes one input — a command (take, cancel, modify), a report from the
broker already translated from MT5's wire format (service/mt5.py), a quote, a timer — and says
what happened (events, to be recorded) and what must be done (effects, for the actor).

The state is the order's ``phase`` (messages.enums.Phase): SENT, OUTCOME_UNKNOWN, WORKING,
TRIGGERED and PENDING_CANCEL are the in-flight states of the real world, mapped onto the seven
public statuses by ``public_status``. A pending modify is a second, orthogonal state: the order
carries the change (``pending_modify``) from the request to the broker's answer, whatever its
phase does meanwhile (a fill may come first). Quantities are compared in lot steps and
prices in points, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum

import msgspec

from messages.enums import OrderStatus, OrderType, Phase, Retcode
from messages.order import EventKind as E
from messages.order import Fill, Order, OrderChange, OrderEvent, changed_fields
from messages.signal import SignalRefused
from messages.symbols import SYMBOLS, SymbolSpec
from model.pretrade import Limits, check_change

P = Phase

# --- the state machine ----------------------------------------------------------------------------

AT_BROKER = frozenset({P.SENT, P.OUTCOME_UNKNOWN, P.WORKING, P.TRIGGERED, P.PENDING_CANCEL})
RESTING = frozenset({P.WORKING, P.TRIGGERED})
ENDED = frozenset({P.FILLED, P.CANCELLED, P.EXPIRED, P.REJECTED, P.FAILED})
TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.FAILED})
IN_FLIGHT = frozenset(OrderStatus) - TERMINAL
# Events the publisher sends on orders.{status}.{symbol}: every change of status, and every fill
# (pending and submitted go out with the order request, from the gateway).
PUBLISHED_KINDS = frozenset({E.PARTIAL_FILL, E.FILL, E.REJECTED, E.FAILED, E.CANCELLED, E.EXPIRED})

# (phase, event) -> phase. What is not here cannot happen to an order: IllegalTransition.
# A fill's phase depends on how much is filled, so fills are decided in _deal, not here.
TRANSITIONS: dict[tuple[Phase, E], Phase] = {
    (P.NEW, E.CREATED): P.NEW,
    (P.NEW, E.SUBMITTED): P.SENT,
    (P.NEW, E.REJECTED): P.REJECTED,  # refused before it went out (a close naming no position)
    (P.NEW, E.CANCELLED): P.CANCELLED,
    # A FAILED order the broker places after all (it was slow to take it) is tracked again;
    # one it refuses after all is rejected: the broker has the last word.
    **{(phase, E.PLACED): P.WORKING for phase in (P.SENT, P.OUTCOME_UNKNOWN, P.FAILED)},
    (P.FAILED, E.REJECTED): P.REJECTED,
    (P.WORKING, E.TRIGGERED): P.TRIGGERED,
    (P.SENT, E.OUTCOME_UNKNOWN): P.OUTCOME_UNKNOWN,
    # The broker knows it after all (a status report): it was executed or is working.
    (P.OUTCOME_UNKNOWN, E.QUERIED): P.SENT,
    **{(phase, E.QUERIED): phase for phase in (P.SENT, P.WORKING, P.TRIGGERED, P.PENDING_CANCEL)},
    **{(phase, E.NOT_AT_BROKER): phase for phase in (P.SENT, P.OUTCOME_UNKNOWN, P.PENDING_CANCEL)},
    # The broker may refuse a pending order when it triggers (no margin then, for one): an
    # order that has fills keeps them and ends cancelled instead (see _rejected).
    **{(phase, E.REJECTED): P.REJECTED for phase in AT_BROKER},
    **{(phase, E.FAILED): P.FAILED for phase in (P.SENT, P.OUTCOME_UNKNOWN, P.PENDING_CANCEL)},
    **{(phase, E.CANCEL_REQUESTED): P.PENDING_CANCEL for phase in (P.SENT, P.OUTCOME_UNKNOWN, P.WORKING, P.TRIGGERED)},
    # A cancel the broker refuses (filled meanwhile, or not cancellable): back to where it was.
    (P.PENDING_CANCEL, E.CANCEL_REFUSED): P.PENDING_CANCEL,  # the phase is restored in _step
    # The broker cancels or expires what it holds, asked or not (the unfilled rest of an IOC
    # order, a GTD order's expiry, an operator at the terminal).
    **{(phase, E.CANCELLED): P.CANCELLED for phase in AT_BROKER},
    **{(phase, E.EXPIRED): P.EXPIRED for phase in AT_BROKER},
    # A modify changes prices, never the phase; a filled order's modify is its position's SL/TP.
    **{(phase, kind): phase for phase in (*AT_BROKER, P.FILLED) for kind in (E.MODIFY_REQUESTED, E.MODIFY_SENT, E.MODIFIED)},
    **{(phase, E.MODIFY_REFUSED): phase for phase in P},
}


def public_status(phase: Phase, filled_steps: int) -> OrderStatus:
    """The seven statuses ClickHouse and NATS know: an order at the broker with some fills is
    partially filled, whatever else is going on with it."""
    match phase:
        case P.NEW:
            return OrderStatus.PENDING
        case P.FILLED:
            return OrderStatus.FILLED
        case P.CANCELLED | P.EXPIRED:
            return OrderStatus.CANCELLED
        case P.REJECTED:
            return OrderStatus.REJECTED
        case P.FAILED:
            return OrderStatus.FAILED
    return OrderStatus.PARTIALLY_FILLED if filled_steps else OrderStatus.SUBMITTED


class IllegalTransition(Exception):
    def __init__(self, order: Order, kind: E) -> None:
        super().__init__(f"order {order.order_id}: no transition from {order.phase.value} on {kind.value}")
        self.order = order
        self.kind = kind


def apply(order: Order, event: OrderEvent) -> Order:
    """The order after ``event``: events apply in sequence, each to the order it was decided on."""
    if event.order_id != order.order_id or event.seq != order.version + 1:
        raise IllegalTransition(order, event.kind)
    return event.order


def fold(events: list[OrderEvent]) -> Order:
    """An order from its whole history (the first event, CREATED, carries the order as created)."""
    order = msgspec.structs.replace(events[0].order, version=0, phase=P.NEW, status=OrderStatus.PENDING)
    for event in events:
        order = apply(order, event)
    return order


def unbroken(events: list[OrderEvent]) -> Order | None:
    """The order as of the last event of its unbroken run from seq 1 (None: seq 1 is not there).
    An actor can die after a later hand-over of its order reached the recorder and an earlier
    one did not: a revival from past the gap would leave it there for good."""
    by_seq = {event.seq: event for event in events}
    seq = 0
    while seq + 1 in by_seq:
        seq += 1
    return by_seq[seq].order if seq else None


def is_resting(order: Order) -> bool:
    """A pending order the broker holds, with nothing expected of it soon: no actor needs it."""
    return order.phase in RESTING and order.order_type is not OrderType.MARKET and order.pending_modify is None


def needs_actor(order: Order) -> bool:
    """Whether something is expected soon (an answer, a fill, a modify): an actor holds it meanwhile."""
    return not (order.phase in ENDED and order.pending_modify is None) and not is_resting(order)


# --- inputs ----------------------------------------------------------------------------------------


class Take(msgspec.Struct, frozen=True):
    """An actor takes the order: a new one goes out; ``reconcile``: revived after a crash or a
    restart, the broker is asked first (it may have the order already)."""

    reconcile: bool = False


class Cancel(msgspec.Struct, frozen=True):
    reason: str


class Modify(msgspec.Struct, frozen=True):
    change: OrderChange


class QuoteArrived(msgspec.Struct, frozen=True):
    """The last (bid, ask) of the order's symbol, for a pending modify's pre-trade check."""

    quote: tuple[float, float] | None


class TimerFired(msgspec.Struct, frozen=True):
    version: int
    attempt: int


# Broker reports: what service/mt5.py makes of the connector's messages.


class Placed(msgspec.Struct, frozen=True):
    ticket: int


class Triggered(msgspec.Struct, frozen=True):
    pass


class Dealt(msgspec.Struct, frozen=True):
    """One deal; the fill has no slippage yet (the model knows the expected price)."""

    fill: Fill


class Refused(msgspec.Struct, frozen=True):
    """The broker refused the request: it was not executed."""

    retcode: int
    comment: str


class Unknown(msgspec.Struct, frozen=True):
    """The request may or may not have been executed (10012 timeout, 10031 no connection)."""

    retcode: int
    comment: str


class EndCause(str, Enum):
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNFILLED = "unfilled"  # the rest of an IOC order, or of a close whose position went meanwhile


class Ended(msgspec.Struct, frozen=True):
    """The broker took the rest of the order off its book; ``remaining`` lots were unfilled."""

    cause: EndCause
    remaining: float


class BrokerState(str, Enum):
    NOT_FOUND = "not_found"
    WORKING = "working"
    TRIGGERED = "triggered"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


class Status(msgspec.Struct, frozen=True):
    """The broker's whole truth about the order, every deal included (a status query's answer)."""

    state: BrokerState
    ticket: int = 0
    fills: tuple[Fill, ...] = ()
    retcode: int = 0
    comment: str = ""


class CancelAnswered(msgspec.Struct, frozen=True):
    accepted: bool
    retcode: int
    comment: str


class ModifyAnswered(msgspec.Struct, frozen=True):
    retcode: int
    comment: str


Command = Take | Cancel | Modify | QuoteArrived | TimerFired
BrokerReport = Placed | Triggered | Dealt | Refused | Unknown | Ended | Status | CancelAnswered | ModifyAnswered
Input = Command | BrokerReport

# --- effects ---------------------------------------------------------------------------------------


class SendOrder(msgspec.Struct, frozen=True):
    """Send the order request (again: the same order_id is one order at the broker)."""


class SendCancel(msgspec.Struct, frozen=True):
    pass


class SendModify(msgspec.Struct, frozen=True):
    change: OrderChange


class AskBroker(msgspec.Struct, frozen=True):
    """Query the broker's order status (answered with a Status)."""


class FetchQuote(msgspec.Struct, frozen=True):
    pass


class RecordStrayFill(msgspec.Struct, frozen=True):
    """A deal the order cannot take (beyond its volume): the positions still need it."""

    fill: Fill


class ArmTimer(msgspec.Struct, frozen=True):
    """Come back with TimerFired(version, attempt) after ``wait``: moot if the order moved on."""

    wait: timedelta
    version: int
    attempt: int


Effect = SendOrder | SendCancel | SendModify | AskBroker | FetchQuote | RecordStrayFill | ArmTimer


@dataclass(frozen=True)
class Policy:
    # The pre-trade limits a modify is checked against.
    limits: Limits
    broker_timeout: timedelta = timedelta(seconds=5)
    # How long the gateway waits for an answer to a request (cancel, modify, query).
    request_timeout: timedelta = timedelta(seconds=2)
    # Status reports in a row that do not know the order before it is declared failed.
    max_not_found: int = 3
    # A modify the connector does not answer is sent once more (it names absolute values, so a
    # second one applied changes nothing), then refused: the order-status query cannot tell
    # whether the broker took it, since it reports no prices.
    modify_sends: int = 2
    # Queries in a row that bring nothing new double the wait, up to 2**5 times the timeout.
    max_backoff_doublings: int = 5


UNKNOWN_OUTCOME = frozenset({Retcode.TIMEOUT, Retcode.CONNECTION})
# NO_CHANGES: what a resend finds when the first one was applied.
MODIFY_ACCEPTED = frozenset({Retcode.DONE, Retcode.NO_CHANGES})


@dataclass
class Decision:
    """What one input did: the events (each applied to the order in turn) and the effects."""

    order: Order
    events: list[OrderEvent] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    # What did not apply, for the log (an input the order's state has no use for).
    notes: list[str] = field(default_factory=list)


# --- decide ----------------------------------------------------------------------------------------


def decide(order: Order, given: Input, now: datetime, policy: Policy, actor_address: str = "") -> Decision:
    """The events and effects of ``given`` for ``order``; the order itself is never changed."""
    d = _Deciding(Decision(order), now, policy, actor_address or order.actor_address)
    before = order.version
    match given:
        case Take(reconcile):
            d.take(reconcile)
        case Cancel(reason):
            d.cancel(reason)
        case Modify(change):
            d.modify(change)
        case QuoteArrived(quote):
            d.quote_arrived(quote)
        case TimerFired(version, attempt):
            d.timer_fired(version, attempt)
        case Placed(ticket):
            d.placed(ticket)
        case Triggered():
            d.triggered()
        case Dealt(fill):
            d.deal(fill)
        case Refused(retcode, comment):
            d.refused(retcode, comment)
        case Unknown(retcode, comment):
            d.unknown(retcode, comment)
        case Ended(cause, remaining):
            d.ended(cause, remaining)
        case Status():
            d.status(given)
        case CancelAnswered(accepted, retcode, comment):
            d.cancel_answered(accepted, retcode, comment)
        case ModifyAnswered(retcode, comment):
            d.modify_answered(retcode, comment)
    d.arm_timer(moved=d.decision.order.version != before or isinstance(given, Take))
    return d.decision


class _Deciding:
    """One decision under way: ``step`` records an event and moves the order on."""

    def __init__(self, decision: Decision, now: datetime, policy: Policy, actor_address: str) -> None:
        self.decision = decision
        self.now = now
        self.policy = policy
        self.actor_address = actor_address

    @property
    def order(self) -> Order:
        return self.decision.order

    def effect(self, effect: Effect) -> None:
        self.decision.effects.append(effect)

    def note(self, text: str) -> None:
        self.decision.notes.append(text)

    def step(self, kind: E, detail: str | None = None, *, fill: Fill | None = None, change: OrderChange | None = None, phase: Phase | None = None, **changes: object) -> None:
        order = self.order
        after_phase = phase or TRANSITIONS.get((order.phase, kind))
        if after_phase is None:
            raise IllegalTransition(order, kind)
        if kind is E.CANCEL_REFUSED:
            after_phase = _working_phase(order)
        filled_steps = _spec(order).steps(changes.get("filled_quantity", order.filled_quantity))  # type: ignore[arg-type]
        status = public_status(after_phase, filled_steps)
        if status is OrderStatus.CANCELLED and order.cancelled_at is None:
            changes.setdefault("cancelled_at", self.now)
        if after_phase in ENDED - {P.FILLED}:
            changes.setdefault("pending_modify", None)  # nothing is left at the broker to modify
        if after_phase is not order.phase or kind is E.QUERIED:
            changes.setdefault("not_found", 0)
        version = order.version + 1
        after = msgspec.structs.replace(order, phase=after_phase, status=status, version=version, actor_address=self.actor_address, **changes)
        self.decision.order = after
        self.decision.events.append(
            OrderEvent(
                event_id=f"{order.order_id}:{version}",
                order_id=order.order_id,
                seq=version,
                kind=kind,
                status=status,
                at=self.now,
                actor_address=self.actor_address,
                order=after,
                fill=fill,
                change=change,
                detail=detail,
            )
        )

    # --- commands -----------------------------------------------------------------------------

    def take(self, reconcile: bool) -> None:
        order = self.order
        if order.version == 0:
            self.step(E.CREATED, "from signal")
            if reconcile:
                self.effect(AskBroker())  # revived before anything was recorded: it may be out already
            else:
                self.send()
            return
        if reconcile and (order.phase in AT_BROKER or order.phase is P.NEW):
            self.effect(AskBroker())  # (NEW: its CREATED was recorded alone; it may be out already)
        if order.pending_modify is not None:
            self.check_modify()  # revived or recovered: its request or its answer was lost

    def send(self) -> None:
        """Send a new order out. A close names its position (the supervisor chose it): without
        one it would open an opposite position instead."""
        if self.order.closes_position and self.order.close_position is None:
            reason = "no position named to close"
            self.step(E.REJECTED, reason, rejection_reason=reason)
        else:
            self.step(E.SUBMITTED, submitted_at=self.now)
            self.effect(SendOrder())

    def cancel(self, reason: str) -> None:
        order = self.order
        if order.phase is P.NEW:
            self.step(E.CANCELLED, reason)
        elif order.phase is P.PENDING_CANCEL:
            self.note("a cancel is already under way")
        elif (order.phase, E.CANCEL_REQUESTED) in TRANSITIONS:
            self.step(E.CANCEL_REQUESTED, reason)
            self.effect(SendCancel())
        else:
            self.note(f"cancel refused: the order is {order.phase.value}")

    def modify(self, change: OrderChange) -> None:
        """Record the request (the order carries it from now on), then check it against the quote."""
        order = self.order
        working = order.phase in RESTING and order.order_type is not OrderType.MARKET
        if order.pending_modify is not None:
            reason = f"modify {order.pending_modify.request_id} is still waiting for the broker's answer"
        elif order.phase is P.PENDING_CANCEL:
            reason = "a cancel of the order is under way"
        elif not working and order.phase is not P.FILLED:
            reason = f"a {order.phase.value} {order.order_type.value} order is not working at the broker: nothing to modify"
        else:
            self.step(E.MODIFY_REQUESTED, _describe(change), change=change, pending_modify=change, modify_sends=0)
            self.check_modify()
            return
        self.step(E.MODIFY_REFUSED, reason, change=change)

    def check_modify(self) -> None:
        """The pre-trade rules need the last quote (answered with QuoteArrived)."""
        if self.order.modify_sends:
            # Sent before the revival: send once more (an absolute change applied twice is one).
            self.send_modify()
        else:
            self.effect(FetchQuote())

    def quote_arrived(self, quote: tuple[float, float] | None) -> None:
        order, change = self.order, self.order.pending_modify
        if change is None or order.modify_sends:
            return  # not (or no longer) waiting for a quote
        try:
            check_change(order, change, quote, self.policy.limits, self.now)
        except SignalRefused as refused:
            self.step(E.MODIFY_REFUSED, f"{refused.reason}: {refused.detail}", change=change, pending_modify=None)
        else:
            self.send_modify()

    def send_modify(self) -> None:
        change = self.order.pending_modify
        if change is None:
            return
        self.step(E.MODIFY_SENT, f"to the broker ({self.order.modify_sends + 1} of {self.policy.modify_sends})", change=change, modify_sends=self.order.modify_sends + 1)
        self.effect(SendModify(change))

    def timer_fired(self, version: int, attempt: int) -> None:
        order = self.order
        if version != order.version:
            return  # something happened since the timer was set
        if (change := order.pending_modify) is not None:
            if 0 < order.modify_sends < self.policy.modify_sends:
                self.send_modify()
            else:
                if order.modify_sends:
                    reason = f"no answer from the connector to {order.modify_sends} requests: the broker may or may not have applied it"
                else:
                    reason = "no quote came back to check it against"
                self.step(E.MODIFY_REFUSED, reason, change=change, pending_modify=None)
            return
        if _awaits_broker(order):
            self.note(f"no news from the broker since version {version}: asking")
            self.effect(AskBroker())
            self.arm(attempt + 1)

    # --- broker reports -------------------------------------------------------------------------

    def placed(self, ticket: int) -> None:
        if self.order.phase in (P.SENT, P.OUTCOME_UNKNOWN, P.FAILED):
            self.step(E.PLACED, f"resting as ticket {ticket}", broker_order_id=str(ticket))
        else:
            self.note(f"placement of ticket {ticket} ignored: the order is {self.order.phase.value}")

    def triggered(self) -> None:
        if self.order.phase is P.WORKING:
            self.step(E.TRIGGERED, "the stop was reached: the limit order works", triggered_at=self.now)

    def deal(self, fill: Fill) -> None:
        """Apply one deal. The broker's deals are facts, whatever we believed: a fill after a
        cancel request, or for an order we had given up (failed, rejected, outcome unknown),
        is applied; only a deal already applied or one beyond the order's volume is not."""
        order = self.order
        if fill.deal in order.deals:
            self.note(f"duplicate deal {fill.deal} ignored")
            return
        if order.phase is P.NEW:  # revived before its SUBMITTED was recorded: it was out
            self.step(E.SUBMITTED, "the broker has it: it was sent before this actor took over", submitted_at=self.now)
            order = self.order
        spec = _spec(order)
        filled = spec.steps(order.filled_quantity) + spec.steps(fill.fill_quantity)
        if filled > spec.steps(order.quantity):
            self.note(f"deal {fill.deal} of {fill.fill_quantity} lots cannot be this {order.phase.value} order's: recorded for the positions only")
            self.effect(RecordStrayFill(priced(fill, order.expected_price, spec)))
            return
        complete = filled == spec.steps(order.quantity)
        if complete:
            kind, phase = E.FILL, P.FILLED
        elif order.phase in (P.FAILED, P.REJECTED, P.OUTCOME_UNKNOWN):
            kind, phase = E.PARTIAL_FILL, P.SENT  # the broker has it after all
        else:
            kind, phase = E.PARTIAL_FILL, order.phase  # a cancelled order keeps the fills it had
        if order.phase in (P.FAILED, P.REJECTED):
            self.note(f"deal {fill.deal} for an order we had declared {order.phase.value}: the broker executed it")
        self.step(
            kind,
            f"deal {fill.deal}: {fill.fill_quantity} @ {fill.fill_price}",
            fill=priced(fill, order.expected_price, spec),
            phase=phase,
            filled_quantity=spec.volume_of(filled),
            average_fill_price=spec.average_price(order.average_fill_price, order.filled_quantity, fill.fill_price, fill.fill_quantity),
            commission=float(Decimal(repr(order.commission)) + Decimal(repr(fill.commission))),
            deals=(*order.deals, fill.deal),
            broker_order_id=order.broker_order_id or str(fill.ticket),
            filled_at=fill.execution_timestamp if complete else order.filled_at,
        )

    def refused(self, retcode: int, comment: str) -> None:
        if retcode in UNKNOWN_OUTCOME:
            self.unknown(retcode, comment)
        elif self.order.phase in (P.SENT, P.OUTCOME_UNKNOWN, P.PENDING_CANCEL, P.FAILED) and self.order.broker_order_id is None:
            self._rejected(retcode, comment)  # (FAILED: declared never received, the request was only late)
        elif self.order.phase in AT_BROKER:
            self.effect(AskBroker())  # a refusal of a working order (when it triggered): the broker's status says
        else:
            self.note(f"refusal {retcode} {comment} ignored: the order is {self.order.phase.value}")

    def unknown(self, retcode: int, comment: str) -> None:
        """Never assume rejected: ask the broker what became of it."""
        if self.order.phase is P.SENT:
            self.step(E.OUTCOME_UNKNOWN, f"{retcode} {comment}: the request may or may not have been executed")
        self.effect(AskBroker())

    def ended(self, cause: EndCause, remaining: float) -> None:
        order = self.order
        spec = _spec(order)
        if spec.steps(remaining) < spec.steps(order.quantity) - spec.steps(order.filled_quantity):
            self.effect(AskBroker())  # the broker filled more than we have heard of: its deals first
        elif order.phase in AT_BROKER:
            self.step(E.EXPIRED if cause is EndCause.EXPIRED else E.CANCELLED, f"{cause.value}, {remaining} unfilled")

    def status(self, report: Status) -> None:
        """Fold the broker's whole truth about the order (state and every deal) into ours."""
        order = self.order
        state = report.state
        if state is BrokerState.NOT_FOUND:
            self.not_found()
            return
        if order.phase is P.NEW:
            self.step(E.SUBMITTED, "the broker has it: it was sent before this actor took over", submitted_at=self.now)
        if self.order.phase in AT_BROKER and _news_in(self.order, report):
            fills = sum(f.fill_quantity for f in report.fills)
            self.step(E.QUERIED, f"broker reports {state.value}, {fills} lots in {len(report.fills)} deals")
        for fill in report.fills:
            self.deal(fill)
        phase = self.order.phase
        # A pending order partly filled and still working is reported partially_filled.
        resting = state in (BrokerState.WORKING, BrokerState.TRIGGERED) or (
            state is BrokerState.PARTIALLY_FILLED and self.order.order_type is not OrderType.MARKET
        )
        if resting and phase in (P.SENT, P.OUTCOME_UNKNOWN, P.FAILED):
            self.step(E.PLACED, f"resting as ticket {report.ticket}", broker_order_id=str(report.ticket))
        if state is BrokerState.TRIGGERED and self.order.phase is P.WORKING:
            self.triggered()
        elif resting and phase is P.PENDING_CANCEL:
            self.effect(SendCancel())  # still resting although we asked to cancel: the request or its answer was lost
        elif state in (BrokerState.CANCELLED, BrokerState.EXPIRED) and phase in AT_BROKER:
            self.step(E.EXPIRED if state is BrokerState.EXPIRED else E.CANCELLED, f"broker reports {state.value}")
        elif state is BrokerState.REJECTED and phase in AT_BROKER:
            self._rejected(report.retcode, report.comment)

    def _rejected(self, retcode: int, comment: str) -> None:
        """The broker refused the order; one that has fills keeps them: its rest is cancelled."""
        reason = f"{retcode} {comment}"
        if _spec(self.order).steps(self.order.filled_quantity):
            self.step(E.CANCELLED, f"the rest refused by the broker: {reason}")
        else:
            self.step(E.REJECTED, reason, rejection_reason=reason)

    def not_found(self) -> None:
        """The broker does not know the order. Sent but never received: it is sent again (the
        same order_id is one order at the broker and in JetStream), then failed. After an
        unknown outcome nothing is resent: the broker may still show it, so it is only asked."""
        order = self.order
        if order.phase is P.NEW:
            self.send()
            return
        if order.phase not in (P.SENT, P.OUTCOME_UNKNOWN, P.PENDING_CANCEL):
            self.note(f"the broker does not know this {order.phase.value} order")
            return
        if order.deals or order.broker_order_id is not None:
            # It was executed in part or placed: a report that does not know it is wrong, never
            # a reason to send it again or to fail it. Asked again by the timer.
            self.note("the broker's report does not know an order it has dealt or placed: asking again")
            return
        count = order.not_found + 1
        if count >= self.policy.max_not_found:
            why = "the broker never received the order" if order.phase is P.SENT else "the broker never executed the order"
            self.step(E.FAILED, f"{why} ({count} status reports)", error_message="unknown at broker", not_found=count)
            return
        self.step(E.NOT_AT_BROKER, f"the broker does not know the order ({count} of {self.policy.max_not_found})", not_found=count)
        if order.phase is P.SENT:
            self.effect(SendOrder())

    def cancel_answered(self, accepted: bool, retcode: int, comment: str) -> None:
        if self.order.phase is not P.PENDING_CANCEL:
            return
        if accepted:
            return  # the broker's cancelled message (Ended) ends it
        if retcode in UNKNOWN_OUTCOME:
            self.effect(AskBroker())  # it may have been cancelled: the status says (and a cancel goes again if not)
            return
        self.step(E.CANCEL_REFUSED, f"{retcode} {comment}")

    def modify_answered(self, retcode: int, comment: str) -> None:
        order, change = self.order, self.order.pending_modify
        if change is None:
            self.note(f"late answer to a modify, ignored: {retcode} {comment}")
        elif retcode in MODIFY_ACCEPTED:
            self.step(E.MODIFIED, f"{retcode} {comment}", change=change, pending_modify=None, modify_sends=0, **changed_fields(order, change))
        else:
            self.step(E.MODIFY_REFUSED, f"{retcode} {comment}", change=change, pending_modify=None, modify_sends=0)

    # --- timers -------------------------------------------------------------------------------

    def arm_timer(self, moved: bool) -> None:
        """After the order moved on: a timer bound to its new version asks the broker if nothing
        more is heard (a later event makes it moot)."""
        effects = self.decision.effects
        asked = any(isinstance(e, AskBroker) for e in effects)
        if (moved or asked) and not any(isinstance(e, ArmTimer) for e in effects) and _awaits_broker(self.order):
            self.arm(0)

    def arm(self, attempt: int) -> None:
        order = self.order
        if order.pending_modify is not None:
            wait = self.policy.broker_timeout + self.policy.request_timeout  # the gateway's wait, at least
        else:
            wait = self.policy.broker_timeout * 2 ** min(attempt, self.policy.max_backoff_doublings)
        self.effect(ArmTimer(wait, order.version, attempt))


def _awaits_broker(order: Order) -> bool:
    """An answer is due: from a revived NEW order's query too (it may be out already)."""
    return order.pending_modify is not None or order.phase is P.NEW or (order.phase in AT_BROKER and not is_resting(order))


def _working_phase(order: Order) -> Phase:
    """Where a refused cancel leaves the order."""
    if order.triggered_at is not None:
        return P.TRIGGERED
    return P.WORKING if order.broker_order_id is not None and order.order_type is not OrderType.MARKET else P.SENT


def _news_in(order: Order, report: Status) -> bool:
    """Whether a status report tells more than we know (a query that changes nothing is not an event)."""
    if any(fill.deal not in order.deals for fill in report.fills):
        return True
    if order.phase is P.OUTCOME_UNKNOWN:
        return True
    if report.state in (BrokerState.WORKING, BrokerState.TRIGGERED):
        return False
    return report.state is not BrokerState.PARTIALLY_FILLED


def _spec(order: Order) -> SymbolSpec:
    return SYMBOLS[order.symbol]


def priced(fill: Fill, expected_price: float | None, spec: SymbolSpec) -> Fill:
    """The fill with its slippage against the expected price."""
    if expected_price is None:
        return fill
    points = slippage_points(fill.side.sign, fill.fill_price, expected_price, spec)
    return msgspec.structs.replace(fill, expected_price=expected_price, slippage=spec.price_of(points), slippage_pips=float(points / 10))


def slippage_points(side_sign: int, price: float, expected_price: float, spec: SymbolSpec) -> Decimal:
    """Exactly, positive when adverse: a buy above, or a sell below, the expected price (an
    average price may fall between two points). A pip is ten points on every symbol traded."""
    return (Decimal(repr(price)) - Decimal(repr(expected_price))).scaleb(spec.digits) * side_sign


def _describe(change: OrderChange) -> str:
    fields = msgspec.structs.asdict(change)
    del fields["request_id"]
    return f"modify {change.request_id}: " + ", ".join(f"{name} {value}" for name, value in fields.items() if value is not None)
