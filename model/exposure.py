"""Exposure: what is open per symbol, for the checks that need the book (the supervisor's).

Two sources, each the authority for its part:
- the position keeper's open positions (from recorded fills), sent as ``PositionsView``
  with the volume each order's fills added to them;
- the orders the supervisor knows to be working, each counted for what the positions do
  not hold yet: an open order for its whole quantity less what of it the keeper has
  applied, an ended one for its fills until the keeper has applied them all.

So a fill is counted once whatever the order in which the news arrives: on the order
until the keeper has it, then in the position. Pure (no I/O); every step is O(1) per order.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta

import msgspec

from messages.enums import PositionSide, Side
from messages.order import Order
from messages.signal import SignalRefused
from messages.symbols import SYMBOLS

# Ended orders whose fills the keeper never confirms (it was restarted meanwhile and rebuilt
# itself from ClickHouse) stop being counted after this.
SETTLE_TIMEOUT = timedelta(seconds=60)


class OpenPosition(msgspec.Struct, frozen=True, kw_only=True):
    ticket: int
    symbol: str
    side: PositionSide
    # 0 once closed.
    quantity: float
    opened_at: datetime


class PositionsView(msgspec.Struct, frozen=True, kw_only=True):
    """From the keeper: positions that changed (all of them when ``complete``), and the
    volume of each order's fills just applied to them."""

    positions: list[OpenPosition]
    applied: dict[uuid.UUID, float]
    complete: bool = False


class Exposure:
    def __init__(self) -> None:
        self.positions: dict[int, OpenPosition] = {}
        self.held: dict[str, float] = defaultdict(float)
        self.orders: dict[uuid.UUID, Order] = {}
        self.applied: dict[uuid.UUID, float] = defaultdict(float)
        self.ended_at: dict[uuid.UUID, datetime] = {}
        # What each tracked order adds: opening lots per symbol, closing lots per ticket.
        self.counted: dict[uuid.UUID, float] = {}
        self.opening: dict[str, float] = defaultdict(float)
        self.claimed: dict[int, float] = defaultdict(float)

    # --- what happens -------------------------------------------------------------------

    def see(self, view: PositionsView) -> None:
        if view.complete:
            self.positions, self.held = {}, defaultdict(float)
        for position in view.positions:
            if (before := self.positions.pop(position.ticket, None)) is not None:
                self.held[before.symbol] -= before.quantity
            if position.quantity > 0:
                self.positions[position.ticket] = position
                self.held[position.symbol] += position.quantity
        for order_id, volume in view.applied.items():
            if order_id in self.orders:
                self.applied[order_id] += volume
                self._recount(order_id)

    def track(self, order: Order, already_applied: float = 0.0) -> None:
        """A working order; ``already_applied`` is what of it the positions held at start."""
        self.orders[order.order_id] = order
        self.applied[order.order_id] = already_applied
        self._recount(order.order_id)

    def ended(self, order: Order, now: datetime) -> None:
        """The order is terminal: from now on only its fills count, until applied."""
        if order.order_id in self.orders:
            self.orders[order.order_id] = order
            self.ended_at[order.order_id] = now
            self._recount(order.order_id)

    def expire(self, now: datetime) -> None:
        for order_id, at in list(self.ended_at.items()):
            if now - at > SETTLE_TIMEOUT:
                self._forget(order_id)

    # --- the checks ---------------------------------------------------------------------

    def open_lots(self, symbol: str) -> float:
        return round(self.held[symbol] + self.opening[symbol], 8)

    def check_open(self, symbol: str, volume: float, limit: float) -> None:
        lots = self.open_lots(symbol)
        spec = SYMBOLS[symbol]
        if spec.steps(lots) + spec.steps(volume) > spec.steps(limit):
            raise SignalRefused(
                "exposure_limit",
                f"{volume} more lots of {symbol} would make {round(lots + volume, 8)} open; the limit is {limit}",
            )

    def choose_close(self, symbol: str, side: PositionSide, volume: float | None) -> tuple[int, float]:
        """The position a close signal closes and how much of it: the oldest open position of
        that side that can take the whole volume (no volume: all that is left of the oldest)."""
        candidates = sorted(
            (p for p in self.positions.values() if p.symbol == symbol and p.side is side and self.available(p) > 0),
            key=lambda p: (p.opened_at, p.ticket),
        )
        if not candidates:
            raise SignalRefused("no_open_position", f"no open {side.value} position of {symbol} to close")
        if volume is None:
            return candidates[0].ticket, self.available(candidates[0])
        for position in candidates:
            if SYMBOLS[symbol].steps(volume) <= SYMBOLS[symbol].steps(self.available(position)):
                return position.ticket, volume
        largest = max(self.available(p) for p in candidates)
        raise SignalRefused(
            "close_exceeds_position",
            f"close of {volume} lots, but the largest open {side.value} position of {symbol} has {largest} lots not already being closed",
        )

    def awaiting_fills(self, symbol: str, side: PositionSide) -> bool:
        """Whether orders that opened ``side`` of ``symbol`` have ended with fills the keeper has
        not applied yet: the position a close is looking for may be just about to appear."""
        return any(
            order.symbol == symbol and not order.closes_position and closing_side(order.side.opposite) is side
            for order_id, order in self.orders.items()
            if order_id in self.ended_at
        )

    def available(self, position: OpenPosition) -> float:
        return round(position.quantity - self.claimed[position.ticket], 8)

    # --- bookkeeping --------------------------------------------------------------------

    def _recount(self, order_id: uuid.UUID) -> None:
        order = self.orders[order_id]
        base = order.filled_quantity if order_id in self.ended_at else order.quantity
        now_counted = max(0.0, round(base - self.applied[order_id], 8))
        delta = now_counted - self.counted.get(order_id, 0.0)
        if order.closes_position and order.close_position is not None:
            self.claimed[order.close_position] += delta
        elif not order.closes_position:
            self.opening[order.symbol] += delta
        self.counted[order_id] = now_counted
        if now_counted == 0 and order_id in self.ended_at:
            self._forget(order_id)

    def _forget(self, order_id: uuid.UUID) -> None:
        order = self.orders.pop(order_id)
        counted = self.counted.pop(order_id, 0.0)
        if order.closes_position and order.close_position is not None:
            self.claimed[order.close_position] -= counted
            if SYMBOLS[order.symbol].steps(self.claimed[order.close_position]) <= 0:
                del self.claimed[order.close_position]
        elif not order.closes_position:
            self.opening[order.symbol] -= counted
        self.applied.pop(order_id, None)
        self.ended_at.pop(order_id, None)


def closing_side(side: Side) -> PositionSide:
    """The position side an order of ``side`` closes: a sell closes a long."""
    return PositionSide.LONG if side is Side.SELL else PositionSide.SHORT
