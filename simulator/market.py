"""Simulated prices: quotes per symbol, a seeded random walk or a CSV replay, the depth ladder.

Pure and synchronous: the connector decides when the market moves (a timer, a replay, or a
test through ``sim.control``), so a seed and a sequence of inputs always give the same prices.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import msgspec

from messages.enums import Side
from messages.symbols import SymbolSpec


class Quote(msgspec.Struct, frozen=True):
    bid: float
    ask: float

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2

    def touch(self, side: Side) -> float:
        """The price a market order of ``side`` trades at: a buy lifts the ask, a sell hits the bid."""
        return self.ask if side is Side.BUY else self.bid

    def closing(self, side: Side) -> float:
        """The price a position of ``side`` closes at (the opposite touch)."""
        return self.bid if side is Side.BUY else self.ask


class Tick(msgspec.Struct, frozen=True):
    time: datetime
    symbol: str
    bid: float
    ask: float


class Market:
    def __init__(
        self,
        specs: dict[str, SymbolSpec],
        rng: random.Random,
        *,
        depth_step_points: int = 2,
        account_currency: str = "USD",
    ) -> None:
        self.specs = specs
        self._rng = rng
        self._depth_step_points = depth_step_points
        self._currency = account_currency
        # The walk moves an unrounded mid so rounding to the tick size adds no drift.
        self._mid = {name: spec.start_price for name, spec in specs.items()}
        self.quotes: dict[str, Quote] = {name: self._quote_at(name, mid) for name, mid in self._mid.items()}

    def _quote_at(self, symbol: str, mid: float) -> Quote:
        spec = self.specs[symbol]
        spread = spec.typical_spread_points * spec.point
        bid = spec.round_price(max(mid - spread / 2, spec.point))
        return Quote(bid, spec.round_price(bid + spread))

    def quote(self, symbol: str) -> Quote:
        return self.quotes[symbol]

    def set_quote(self, symbol: str, bid: float, ask: float) -> None:
        spec = self.specs[symbol]
        self.quotes[symbol] = Quote(spec.round_price(bid), spec.round_price(ask))
        self._mid[symbol] = (bid + ask) / 2

    def restore(self, quotes: dict[str, Quote]) -> None:
        for symbol, quote in quotes.items():
            if symbol in self.specs:
                self.set_quote(symbol, quote.bid, quote.ask)

    def step(self) -> list[str]:
        """One random-walk tick for every symbol; returns the symbols whose quote changed."""
        changed = []
        for symbol in sorted(self.specs):
            spec = self.specs[symbol]
            self._mid[symbol] = max(self._mid[symbol] + self._rng.gauss(0.0, spec.volatility_points) * spec.point, spec.point)
            quote = self._quote_at(symbol, self._mid[symbol])
            if quote != self.quotes[symbol]:
                self.quotes[symbol] = quote
                changed.append(symbol)
        return changed

    def levels(self, symbol: str, side: Side) -> Iterator[tuple[float, float]]:
        """The book a market order of ``side`` walks: (price, lots), best first, each level worse.

        Every level holds ``depth_lots`` and lies ``depth_step_points`` beyond the previous one,
        so an order larger than the touch fills in several deals at successively worse prices.
        """
        spec = self.specs[symbol]
        touch = self.quotes[symbol].touch(side)
        step = self._depth_step_points * spec.point * side.sign
        for level in range(10_000):
            yield spec.round_price(touch + level * step), spec.depth_lots

    def to_account(self, amount: float, symbol: str) -> float:
        """Convert an amount in ``symbol``'s quote currency into the account currency at mid prices."""
        currency = symbol[3:]
        if currency == self._currency:
            return amount
        if (direct := f"{self._currency}{currency}") in self.quotes:
            return amount / self.quotes[direct].mid
        if (inverse := f"{currency}{self._currency}") in self.quotes:
            return amount * self.quotes[inverse].mid
        return amount


class Session:
    """Trading hours, daily, in UTC; ``None`` bounds mean always open. A window may cross midnight."""

    def __init__(self, opens: time | None = None, closes: time | None = None) -> None:
        self.opens = opens
        self.closes = closes

    @classmethod
    def parse(cls, text: str) -> Session:
        """``""`` (always open) or ``"HH:MM-HH:MM"``."""
        if not text:
            return cls()
        start, _, end = text.partition("-")
        return cls(time.fromisoformat(start.strip()), time.fromisoformat(end.strip()))

    def is_open(self, now: datetime) -> bool:
        if self.opens is None or self.closes is None:
            return True
        moment = now.astimezone(UTC).time().replace(tzinfo=None)
        if self.opens <= self.closes:
            return self.opens <= moment < self.closes
        return moment >= self.opens or moment < self.closes


class Clock:
    """Wall-clock UTC plus an offset a test can advance (to reach an expiry without waiting)."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


def read_ticks(path: str | Path, specs: dict[str, SymbolSpec]) -> list[Tick]:
    """Ticks from a CSV of ``time,symbol,bid,ask`` (header optional; time ISO 8601 or epoch s/ms)."""
    ticks = []
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if not row or row[0].strip().lower() == "time" or row[0].startswith("#"):
                continue
            stamp, symbol, bid, ask = (cell.strip() for cell in row[:4])
            if symbol not in specs:
                raise ValueError(f"{path}: unknown symbol {symbol!r}")
            ticks.append(Tick(_parse_time(stamp), symbol, float(bid), float(ask)))
    return ticks


def _parse_time(text: str) -> datetime:
    try:
        seconds = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    # Epoch milliseconds are told apart from seconds by size (1e11 s is the year 5138).
    if seconds > 1e11:
        seconds /= 1000
    return datetime.fromtimestamp(seconds, UTC)


def day_end(now: datetime, day_length_s: float) -> datetime:
    """The end of the simulated trading day containing ``now`` (UTC midnight for 86,400 s days)."""
    stamp = now.timestamp()
    return datetime.fromtimestamp(math.floor(stamp / day_length_s + 1) * day_length_s, UTC)
