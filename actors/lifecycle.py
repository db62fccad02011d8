"""The order state machine as data, and the pure functions that move an order along it.

Read TRANSITIONS and you know the lifecycle. An event with no entry for the order's
current status is refused with IllegalTransition: the caller logs it, never applies it.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from messages.broker import BrokerFill
from messages.enums import OrderStatus as S
from messages.enums import OrderType
from messages.order import EventKind as E
from messages.order import Fill, Order, OrderChange, OrderEvent, execution_id_for
from messages.symbols import SymbolSpec

TRANSITIONS: dict[tuple[S, E], S] = {
    (S.PENDING, E.CREATED): S.PENDING,
    (S.PENDING, E.SUBMITTED): S.SUBMITTED,
    (S.PENDING, E.REJECTED): S.REJECTED,
    (S.PENDING, E.CANCELLED): S.CANCELLED,
    (S.PENDING, E.FAILED): S.FAILED,
    (S.SUBMITTED, E.PLACED): S.SUBMITTED,
    (S.SUBMITTED, E.QUERIED): S.SUBMITTED,
    (S.SUBMITTED, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.SUBMITTED, E.FILL): S.FILLED,
    (S.SUBMITTED, E.REJECTED): S.REJECTED,
    (S.SUBMITTED, E.FAILED): S.FAILED,
    (S.SUBMITTED, E.CANCEL_REQUESTED): S.SUBMITTED,
    (S.SUBMITTED, E.CANCELLED): S.CANCELLED,
    (S.SUBMITTED, E.EXPIRED): S.CANCELLED,
    (S.PARTIALLY_FILLED, E.PLACED): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.QUERIED): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.PARTIAL_FILL): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.FILL): S.FILLED,
    (S.PARTIALLY_FILLED, E.CANCEL_REQUESTED): S.PARTIALLY_FILLED,
    # The unfilled rest is cancelled (IOC remainder, operator, expiry); the fills stand.
    (S.PARTIALLY_FILLED, E.CANCELLED): S.CANCELLED,
    (S.PARTIALLY_FILLED, E.EXPIRED): S.CANCELLED,
    # An operator's modify (MT5's TRADE_ACTION_MODIFY) of a working order changes its prices,
    # never its status. A fill that arrives while a modify is pending is applied as usual: the
    # broker then answers the modify of what the order has become (and may refuse it).
    (S.SUBMITTED, E.MODIFY_REQUESTED): S.SUBMITTED,
    (S.SUBMITTED, E.MODIFIED): S.SUBMITTED,
    (S.SUBMITTED, E.MODIFY_REFUSED): S.SUBMITTED,
    (S.PARTIALLY_FILLED, E.MODIFY_REQUESTED): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.MODIFIED): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, E.MODIFY_REFUSED): S.PARTIALLY_FILLED,
    # Filled is final for the order, but the position it opened lives on at the broker, which
    # names it by that order (MT5's TRADE_ACTION_SLTP): its SL/TP change is the order's event.
    (S.FILLED, E.MODIFY_REQUESTED): S.FILLED,
    (S.FILLED, E.MODIFIED): S.FILLED,
    (S.FILLED, E.MODIFY_REFUSED): S.FILLED,
    # Not at the broker yet: nothing to modify, refused on the spot.
    (S.PENDING, E.MODIFY_REFUSED): S.PENDING,
}

TERMINAL = frozenset({S.FILLED, S.CANCELLED, S.REJECTED, S.FAILED})
IN_FLIGHT = frozenset({S.PENDING, S.SUBMITTED, S.PARTIALLY_FILLED})


def is_resting(order: Order) -> bool:
    """A pending order (limit, stop, stop-limit) the broker has accepted and holds: nothing is
    expected of it soon, so no actor needs to hold it."""
    return (
        order.order_type is not OrderType.MARKET
        and order.status in (S.SUBMITTED, S.PARTIALLY_FILLED)
        and order.broker_order_id is not None
        and order.pending_modify is None
    )


class IllegalTransition(Exception):
    def __init__(self, order: Order, kind: E) -> None:
        super().__init__(f"order {order.order_id}: no transition from {order.status.value} on {kind.value}")
        self.order = order
        self.kind = kind


def advance(
    order: Order,
    kind: E,
    at: datetime,
    actor_address: str,
    fill: Fill | None = None,
    detail: str | None = None,
    change: OrderChange | None = None,
    **changes: object,
) -> OrderEvent:
    """The event of ``kind`` happening to ``order``, carrying the order after it (``change``:
    the operator's modify a modify event is about)."""
    status = TRANSITIONS.get((order.status, kind))
    if status is None:
        raise IllegalTransition(order, kind)
    version = order.version + 1
    if status is S.CANCELLED and order.cancelled_at is None:
        changes.setdefault("cancelled_at", at)
    if status in TERMINAL and status is not S.FILLED:
        changes.setdefault("pending_modify", None)  # nothing is left at the broker to modify
    after = msgspec.structs.replace(order, status=status, version=version, actor_address=actor_address, **changes)
    return OrderEvent(
        event_id=f"{order.order_id}:{version}",
        order_id=order.order_id,
        seq=version,
        kind=kind,
        status=status,
        at=at,
        actor_address=actor_address,
        order=after,
        fill=fill,
        change=change,
        detail=detail,
    )


def slippage(side_sign: int, fill_price: float, expected_price: float, spec: SymbolSpec) -> tuple[float, float]:
    """(price units, pips), positive when adverse: a buy above or a sell below the expected price."""
    price_units = round((fill_price - expected_price) * side_sign, spec.digits + 2)
    return price_units, round(price_units / spec.pip, 2)


def fill_of(deal: BrokerFill, expected_price: float | None, spec: SymbolSpec) -> Fill:
    """The execution record of one broker deal."""
    slip, slip_pips = (None, None)
    if expected_price is not None:
        slip, slip_pips = slippage(deal.side.sign, deal.price, expected_price, spec)
    return Fill(
        execution_id=execution_id_for(deal.deal),
        order_id=deal.order_id,
        deal=deal.deal,
        ticket=deal.ticket,
        position_ticket=deal.position,
        symbol=deal.symbol,
        side=deal.side,
        fill_price=deal.price,
        fill_quantity=deal.volume,
        expected_price=expected_price,
        slippage=slip,
        slippage_pips=slip_pips,
        commission=deal.commission,
        swap=deal.swap,
        entry=deal.entry,
        reason=deal.reason,
        execution_timestamp=deal.timestamp,
    )


def apply_deal(order: Order, deal: BrokerFill, spec: SymbolSpec, actor_address: str) -> OrderEvent | None:
    """The fill event for a new deal; None for a deal already applied (a duplicate)."""
    if deal.deal in order.deals:
        return None
    fill = fill_of(deal, order.expected_price, spec)
    filled = round(order.filled_quantity + deal.volume, 8)
    average = ((order.average_fill_price or 0.0) * order.filled_quantity + deal.price * deal.volume) / filled
    complete = filled >= order.quantity - 1e-9
    return advance(
        order,
        E.FILL if complete else E.PARTIAL_FILL,
        deal.timestamp,
        actor_address,
        fill=fill,
        detail=f"deal {deal.deal}: {deal.volume} @ {deal.price} (slippage {fill.slippage_pips} pips)",
        filled_quantity=filled,
        average_fill_price=round(average, spec.digits + 3),
        commission=round(order.commission + deal.commission, 8),
        deals=(*order.deals, deal.deal),
        broker_order_id=order.broker_order_id or str(deal.ticket),
        filled_at=deal.timestamp if complete else order.filled_at,
    )
