"""The instruments the service trades, with MT5's symbol properties.

Both the service (validation, pip size for slippage) and the simulated connector
(prices, volume rules) read this catalogue, so they cannot disagree about a symbol.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import msgspec


class SymbolSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    digits: int
    contract_size: float = 100_000.0
    volume_min: float = 0.01
    volume_max: float = 100.0
    volume_step: float = 0.01
    typical_spread_points: int = 10
    start_price: float = 1.0
    # Per-step volatility of the simulated random walk, in points.
    volatility_points: float = 3.0
    # Lots available at the touch before the next price level in the simulated book.
    depth_lots: float = 5.0

    @property
    def point(self) -> float:
        return 10.0**-self.digits

    @property
    def pip(self) -> float:
        """One pip is ten points on 5-, 3- and 2-digit symbols (0.0001 EURUSD, 0.01 USDJPY, 0.1 XAUUSD)."""
        return 10 * self.point

    # Exact arithmetic: a volume is a whole number of lot steps and a price a whole number of
    # points; floats are only how they travel. repr() gives the shortest decimal of a float.
    def steps(self, volume: float) -> int:
        return int((Decimal(repr(volume)) / Decimal(repr(self.volume_step))).to_integral_value(ROUND_HALF_EVEN))

    def volume_of(self, steps: int) -> float:
        return float(steps * Decimal(repr(self.volume_step)))

    def points(self, price: float) -> int:
        return int(Decimal(repr(price)).scaleb(self.digits).to_integral_value(ROUND_HALF_EVEN))

    def price_of(self, points: int | Decimal) -> float:
        return float(Decimal(points).scaleb(-self.digits))

    def average_price(self, price: float | None, volume: float, added_price: float, added_volume: float) -> float:
        """The volume-weighted average of ``price`` held for ``volume`` and ``added_price`` for
        ``added_volume``, exactly, to a ten-thousandth of a point (an average falls between points)."""
        held, added = self.steps(volume), self.steps(added_volume)
        if held + added == 0:
            return added_price
        total = Decimal(repr(price or 0.0)) * held + Decimal(repr(added_price)) * added
        return float((total / (held + added)).quantize(Decimal(1).scaleb(-self.digits - 4)))

    def round_price(self, price: float) -> float:
        return round(price, self.digits)

    def volume_is_valid(self, volume: float) -> bool:
        if not self.volume_min <= volume <= self.volume_max:  # (also refuses NaN)
            return False
        return (Decimal(repr(volume)) - Decimal(repr(self.volume_min))) % Decimal(repr(self.volume_step)) == 0


SYMBOLS: dict[str, SymbolSpec] = {
    spec.name: spec
    for spec in (
        SymbolSpec(name="EURUSD", digits=5, start_price=1.08500, typical_spread_points=8),
        SymbolSpec(name="GBPUSD", digits=5, start_price=1.26500, typical_spread_points=12),
        SymbolSpec(name="AUDUSD", digits=5, start_price=0.65500, typical_spread_points=10),
        SymbolSpec(name="USDCHF", digits=5, start_price=0.88500, typical_spread_points=12),
        SymbolSpec(name="USDJPY", digits=3, start_price=151.500, typical_spread_points=10),
        SymbolSpec(name="EURJPY", digits=3, start_price=163.800, typical_spread_points=15),
        SymbolSpec(
            name="XAUUSD",
            digits=2,
            contract_size=100.0,
            start_price=2650.00,
            typical_spread_points=25,
            volatility_points=20.0,
            depth_lots=2.0,
        ),
    )
}
