"""Positions as the service keeps them (hedging: one position per broker position ticket)."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from messages.enums import ExitReason, PositionSide, PositionStatus

POSITION_NAMESPACE = uuid.UUID("6c3f0f6e-8f0b-4c64-a9a6-0e6d2b7a1f03")
ALERT_SUBJECT = "positions.alert"


def position_id_for(ticket: int) -> uuid.UUID:
    return uuid.uuid5(POSITION_NAMESPACE, str(ticket))


class Position(msgspec.Struct, frozen=True, kw_only=True):
    position_id: uuid.UUID
    ticket: int
    opened_at: datetime
    symbol: str
    side: PositionSide
    quantity: float
    entry_price: float
    entry_order_id: uuid.UUID | None
    stop_loss: float | None = None
    take_profit: float | None = None
    position_status: PositionStatus = PositionStatus.OPEN
    current_price: float | None = None
    unrealized_pnl: float = 0.0
    realized_pnl: float = 0.0
    commission_total: float = 0.0
    exit_price: float | None = None
    exit_reason: ExitReason | None = None
    closed_at: datetime | None = None
    r_multiple: float | None = None
    holding_period_hours: float | None = None
    exit_order_id: uuid.UUID | None = None
    # Volume closed so far; exit_price is its volume-weighted price.
    closed_quantity: float = 0.0
    deals: tuple[int, ...] = ()
    # When the keeper last changed it: the latest write of a position wins in ClickHouse.
    updated_at: datetime | None = None


class PositionAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A disagreement between our positions and the broker's, found by reconciliation."""

    ticket: int
    symbol: str
    kind: str
    ours: float | None
    broker: float | None
    detail: str
    corrected: bool
    at: datetime
