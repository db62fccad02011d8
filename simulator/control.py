"""The simulator's own control subject (not part of the mt5-connector contract).

A core NATS request of ``SimControl`` on ``sim.control`` changes the fault switches at run time,
drives the market (set a quote, step the random walk, advance the clock) and plants
discrepancies for reconciliation tests; the reply is ``SimStatus``. ``{}`` only asks for the
status. Control requests are answered even while the broker is silent.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from simulator.faults import Faults
from simulator.market import Quote

CONTROL_SUBJECT = "sim.control"


class SetQuote(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    bid: float
    ask: float


class AdjustPosition(msgspec.Struct, frozen=True, kw_only=True):
    """Set a position's volume without a deal (0 closes it silently): the broker's books now
    disagree with the service's, which reconciliation must report."""

    ticket: int
    volume: float


class SimControl(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Fault switches (see Faults); None leaves a switch as it is.
    latency_ms: float | None = None
    jitter_ms: float | None = None
    drop_rate: float | None = None
    duplicate_rate: float | None = None
    reorder_rate: float | None = None
    error_rate: float | None = None
    error_retcode: int | None = None
    requote_rate: float | None = None
    price_off_rate: float | None = None
    unknown_outcome_rate: float | None = None
    unknown_outcome_executed: float | None = None
    unknown_outcome_retcode: int | None = None
    # Consume and trade but publish nothing and answer no mt5.* request for this long.
    silent_for_s: float | None = None
    # Close the NATS connection (after replying) and reconnect after this long.
    disconnect_for_s: float | None = None
    # Market driving, applied in this order; each runs the matching (fills, SL/TP, expiry).
    set_quote: SetQuote | None = None
    step: int = 0
    advance_s: float = 0.0
    adjust_position: AdjustPosition | None = None

    def fault_changes(self) -> dict[str, object]:
        names = {field.name for field in msgspec.structs.fields(Faults)}
        return {name: value for name in names if (value := getattr(self, name)) is not None}


class SimStatus(msgspec.Struct, frozen=True, kw_only=True):
    faults: Faults
    silent_for_s: float
    now: datetime
    quotes: dict[str, Quote]
    # For adjust_position: whether the ticket was found.
    adjusted: bool | None = None
