"""Fault switches: what the paper broker does wrong on purpose, deterministically under a seed.

Each concern draws from its own ``random.Random`` derived from the seed, so turning one switch
on does not shift the random choices of another, and a failing test replays exactly.
"""

from __future__ import annotations

import logging
import random
import time
from typing import NamedTuple

import msgspec

from messages.enums import Retcode, TradeAction

log = logging.getLogger("simulator")


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """The switches; rates are fractions in [0, 1]."""

    # Added before an order is taken (executed, placed or rejected); the price may move
    # meanwhile (slippage). mt5.order_status reports it unknown until then.
    latency_ms: float = 0.0
    # Uniform extra latency in [0, jitter_ms).
    jitter_ms: float = 0.0
    # Broker events (fills, errors, placements, cancels) not published; the state keeps them,
    # so mt5.order_status tells the truth and reconciliation can find them.
    drop_rate: float = 0.0
    # Events published twice, the copy under its own Nats-Msg-Id so it really reaches consumers.
    duplicate_rate: float = 0.0
    # Events held back and published after the next one.
    reorder_rate: float = 0.0
    # Orders refused with ``error_retcode`` (a broker.error) instead of executed.
    error_rate: float = 0.0
    error_retcode: int = Retcode.REJECT
    # Market orders refused with 10004 requote / 10021 price off.
    requote_rate: float = 0.0
    price_off_rate: float = 0.0
    # Orders answered with ``unknown_outcome_retcode`` (10012 timeout, 10031 no connection) on
    # broker.error; of those, a fraction ``unknown_outcome_executed`` was executed all the same
    # (its own news lost with the answer; mt5.order_status tells the truth), the rest never was.
    unknown_outcome_rate: float = 0.0
    unknown_outcome_executed: float = 0.5
    unknown_outcome_retcode: int = Retcode.TIMEOUT


class FaultInjector:
    """The decisions the switches call for; the connector acts on them."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.faults = faults
        self._latency = random.Random(f"{seed}:latency")
        self._orders = random.Random(f"{seed}:orders")
        self._wire = random.Random(f"{seed}:wire")
        self._silent_until = 0.0

    def update(self, **changes: object) -> None:
        self.faults = msgspec.structs.replace(self.faults, **changes)

    def latency_s(self) -> float:
        jitter = self._latency.random() * self.faults.jitter_ms if self.faults.jitter_ms else 0.0
        return (self.faults.latency_ms + jitter) / 1000

    def injected(self, action: TradeAction) -> tuple[int, str] | None:
        """A rejection forced on an order, or None. Requotes and price-offs hit market orders only."""
        faults = self.faults
        if faults.error_rate and self._orders.random() < faults.error_rate:
            return faults.error_retcode, f"Injected fault: retcode {faults.error_retcode}"
        if action is TradeAction.DEAL:
            if faults.requote_rate and self._orders.random() < faults.requote_rate:
                return Retcode.REQUOTE, "Requote"
            if faults.price_off_rate and self._orders.random() < faults.price_off_rate:
                return Retcode.PRICE_OFF, "Price off: no quotes to process the request"
        return None

    def unknown_outcome(self) -> bool | None:
        """None: answer truthfully; else whether the order is executed behind an unknown outcome."""
        faults = self.faults
        if not faults.unknown_outcome_rate or self._orders.random() >= faults.unknown_outcome_rate:
            return None
        return self._orders.random() < faults.unknown_outcome_executed

    # --- silence: consume and trade, but publish nothing and answer nothing --------------------

    def silence(self, seconds: float) -> None:
        self._silent_until = time.monotonic() + seconds

    def silent(self) -> bool:
        return time.monotonic() < self._silent_until

    def silent_for_s(self) -> float:
        return max(0.0, self._silent_until - time.monotonic())

    # --- the wire: drop, duplicate, reorder ---------------------------------------------------

    def draw(self, rate: float) -> bool:
        return bool(rate) and self._wire.random() < rate


class Envelope(NamedTuple):
    subject: str
    msg_id: str
    payload: bytes
    label: str


class Wire:
    """Turns the envelopes the broker wants to send into the ones it does send, in order."""

    # A held event goes out at the latest after this long, even if no next event comes.
    HOLD_LIMIT_S = 0.5

    def __init__(self, injector: FaultInjector) -> None:
        self._injector = injector
        self._held: list[tuple[float, Envelope]] = []

    def route(self, envelope: Envelope) -> list[Envelope]:
        faults = self._injector.faults
        if self._injector.draw(faults.drop_rate):
            log.warning("fault: dropped %s", envelope.label)
            return []
        out = [envelope]
        if self._injector.draw(faults.duplicate_rate):
            log.warning("fault: duplicated %s", envelope.label)
            out.append(envelope._replace(msg_id=f"{envelope.msg_id}-dup"))
        if self._held:
            # Something was held back: it goes out right after this newer event.
            out += self.release(0.0)
        elif self._injector.draw(faults.reorder_rate):
            log.warning("fault: holding back %s", envelope.label)
            self._held = [(time.monotonic(), item) for item in out]
            return []
        return out

    def release(self, older_than_s: float = HOLD_LIMIT_S) -> list[Envelope]:
        """The held envelopes, if the oldest has waited ``older_than_s``."""
        if not self._held or time.monotonic() - self._held[0][0] < older_than_s:
            return []
        held, self._held = [envelope for _, envelope in self._held], []
        return held
