"""The execution-quality report: how well signals became fills, from ClickHouse.

One function per question (slippage, latency, fill rate, rejects, realized PnL, exposure),
each one query run by the running service (chdb has one owner: the recorder) and each
returning plain data. The text summary, the JSON, the HTML page and its PNG plots are
renderings of that same data, and the page's tables and the text summary are the same
``Section`` rows, so every figure on the page is printed in the summary too.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import msgspec
from matplotlib.axes import Axes

# A bare Figure draws with Agg when saved: no pyplot, no backend, no display needed.
from matplotlib.figure import Figure

from messages.actor import Query, QueryResult
from messages.enums import Retcode
from service.cli import table
from system import Refused

# Asks the running service one read-only query (the recorder's answer, or None on a timeout).
Ask = Callable[[Query], QueryResult | None]

DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
LATENCY_BUCKETS = 60  # points on a latency plot, whatever the period
STATUSES = ["filled", "partially_filled", "submitted", "pending", "cancelled", "rejected", "failed"]
STATUS_COLOURS = {
    "filled": "#2e7d32", "partially_filled": "#81c784", "submitted": "#1e88e5", "pending": "#fdd835",
    "cancelled": "#9e9e9e", "rejected": "#e53935", "failed": "#8e0000",
}  # fmt: skip
GAIN, LOSS, LONG, SHORT = "#2e7d32", "#c62828", "#1e88e5", "#fb8c00"
BAR = 0.6  # bar thickness, of a row's height


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``24h``, ``30m``, ``7d``... before now, or an ISO time (UTC when it names no zone)."""
    if match := DURATION.fullmatch(text.strip()):
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{UNITS[unit]: float(amount)})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (24h, 30m, 7d) nor an ISO time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# --- the data -----------------------------------------------------------------------------------


class Slippage(msgspec.Struct, frozen=True):
    """Per symbol and side, over the orders that filled anything: each order's slippage is
    that of its volume-weighted fill price, in pips, positive = adverse."""

    symbol: str
    side: str
    orders: int
    average_pips: float
    min_pips: float
    median_pips: float
    max_pips: float


class SlippageCount(msgspec.Struct, frozen=True):
    """How many orders of a symbol and side slipped by ``pips`` (rounded to 0.1 pip)."""

    symbol: str
    side: str
    pips: float
    orders: int


class LatencyBucket(msgspec.Struct, frozen=True):
    start: datetime
    samples: int
    p50_ms: float
    p95_ms: float
    max_ms: float


class Latency(msgspec.Struct, frozen=True):
    samples: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    bucket_s: int
    buckets: list[LatencyBucket]


class OrderTypeFills(msgspec.Struct, frozen=True):
    order_type: str
    orders: int
    filled: int
    fill_rate: float
    statuses: dict[str, int]


class FillRate(msgspec.Struct, frozen=True):
    orders: int
    filled: int
    fill_rate: float | None
    statuses: dict[str, int]
    by_order_type: list[OrderTypeFills]


class Reject(msgspec.Struct, frozen=True):
    """Rejected orders by MT5 retcode and its name (NO_MONEY), with one of their reasons as an
    example; a refusal of the service's own has no retcode and its reason for a name."""

    retcode: int | None
    name: str
    example: str
    orders: int


class Realized(msgspec.Struct, frozen=True):
    """PnL realized on a symbol's positions (in its quote currency, as MT5 books it)."""

    symbol: str
    currency: str
    positions_closed: int
    lots_closed: float
    realized_pnl: float


class Exposure(msgspec.Struct, frozen=True):
    symbol: str
    side: str
    positions: int
    lots: float


class Report(msgspec.Struct, frozen=True):
    since: datetime
    until: datetime
    fill_rate: FillRate
    slippage: list[Slippage]
    slippage_distribution: list[SlippageCount]
    signal_to_broker: Latency
    fill_to_record: Latency
    rejects: list[Reject]
    realized: list[Realized]
    exposure: list[Exposure]


# --- the questions ------------------------------------------------------------------------------


def rows(ask: Ask, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    result = ask(Query(sql, parameters))
    if result is None:
        raise Refused("the service did not answer a report query in time")
    if result.error:
        raise Refused(f"a report query failed: {result.error.strip().partition(chr(10))[0]}")
    return result.rows


SINCE = "fromUnixTimestamp64Milli({since:Int64}, 'UTC')"


def millis(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def slippage(ask: Ask, since: datetime) -> list[Slippage]:
    found = rows(
        ask,
        "SELECT symbol, toString(side), count(), avg(slippage_pips), min(slippage_pips), quantileExactInclusive(0.5)(slippage_pips), max(slippage_pips) "
        f"FROM orders WHERE created_at >= {SINCE} AND slippage_pips IS NOT NULL GROUP BY symbol, side ORDER BY symbol, side",
        since=millis(since),
    )
    return [Slippage(*row) for row in found]


def slippage_distribution(ask: Ask, since: datetime) -> list[SlippageCount]:
    found = rows(
        ask,
        "SELECT symbol, toString(side), round(slippage_pips, 1) AS pips, count() "
        f"FROM orders WHERE created_at >= {SINCE} AND slippage_pips IS NOT NULL GROUP BY symbol, side, pips ORDER BY symbol, side, pips",
        since=millis(since),
    )
    return [SlippageCount(*row) for row in found]


# (table, when it happened, milliseconds it took, which rows have it) of each latency measured.
LATENCIES = {
    "signal_to_broker": ("orders", "created_at", "toUnixTimestamp64Milli(submitted_at) - toUnixTimestamp64Milli(created_at)", "submitted_at IS NOT NULL"),
    "fill_to_record": ("executions", "execution_timestamp", "toUnixTimestamp64Milli(recorded_at) - toUnixTimestamp64Milli(execution_timestamp)", "1"),
}  # fmt: skip


def latency(ask: Ask, since: datetime, which: str) -> Latency:
    """Percentiles over the period, and over time in LATENCY_BUCKETS buckets of the span the
    samples cover (whole seconds, at least one)."""
    source, at, ms, present = LATENCIES[which]
    where = f"FROM {source} WHERE {at} >= {SINCE} AND {present}"
    ((samples, p50, p95, p99, longest, first, last),) = rows(
        ask,
        f"SELECT count(), quantileExactInclusive(0.5)({ms}), quantileExactInclusive(0.95)({ms}), quantileExactInclusive(0.99)({ms}), max({ms}), "
        f"toUnixTimestamp64Milli(min({at})), toUnixTimestamp64Milli(max({at})) {where}",
        since=millis(since),
    )
    if not samples:
        return Latency(0, None, None, None, None, 1, [])
    bucket_s = max(1, math.ceil((last - first) / 1000 / LATENCY_BUCKETS))
    buckets = rows(
        ask,
        f"SELECT toStartOfInterval({at}, INTERVAL {{bucket:UInt32}} SECOND) AS bucket, count(), "
        f"quantileExactInclusive(0.5)({ms}), quantileExactInclusive(0.95)({ms}), max({ms}) {where} GROUP BY bucket ORDER BY bucket",
        since=millis(since),
        bucket=bucket_s,
    )
    return Latency(
        samples, float(p50), float(p95), float(p99), float(longest), bucket_s,
        [LatencyBucket(start.replace(tzinfo=start.tzinfo or UTC), n, float(a), float(b), float(c)) for start, n, a, b, c in buckets],
    )  # fmt: skip


def fill_rate(ask: Ask, since: datetime) -> FillRate:
    """Orders that ended filled, of all orders created in the period (resting ones included)."""
    found = rows(
        ask,
        f"SELECT toString(order_type), toString(order_status), count() FROM orders WHERE created_at >= {SINCE} "
        "GROUP BY order_type, order_status ORDER BY order_type, order_status",
        since=millis(since),
    )
    by_type: dict[str, dict[str, int]] = {}
    for order_type, status, count in found:
        by_type.setdefault(order_type, {})[status] = count
    kinds = [
        OrderTypeFills(kind, sum(counts.values()), counts.get("filled", 0), counts.get("filled", 0) / sum(counts.values()), counts)
        for kind, counts in by_type.items()
    ]
    statuses = {status: total for status in STATUSES if (total := sum(k.statuses.get(status, 0) for k in kinds))}
    orders, filled = sum(k.orders for k in kinds), statuses.get("filled", 0)
    return FillRate(orders, filled, filled / orders if orders else None, statuses, kinds)


def rejects(ask: Ask, since: datetime) -> list[Reject]:
    """By the retcode that starts the broker's rejection_reason ("10019 No money")."""
    found = rows(
        ask,
        # A reason without a retcode is a group of its own; a retcode's comment is one of its reasons.
        "SELECT extract(ifNull(rejection_reason, ''), '^[0-9]+') AS retcode, if(retcode = '', ifNull(rejection_reason, '(no reason)'), '') AS own, "
        f"any(rejection_reason), count() FROM orders WHERE order_status = 'rejected' AND created_at >= {SINCE} "
        "GROUP BY retcode, own ORDER BY count() DESC, retcode, own",
        since=millis(since),
    )
    return [Reject(int(code) if code else None, own or retcode_name(int(code)), example, count) for code, own, example, count in found]


def retcode_name(code: int) -> str:
    return Retcode(code).name if code in Retcode._value2member_map_ else "unknown retcode"


def realized(ask: Ask, since: datetime) -> list[Realized]:
    """Per symbol, over positions that closed some of their lots in the period."""
    found = rows(
        ask,
        "SELECT symbol, countIf(position_status = 'closed'), sum(closed_quantity), sum(realized_pnl) "
        f"FROM positions WHERE closed_quantity > 0 AND updated_at >= {SINCE} GROUP BY symbol ORDER BY symbol",
        since=millis(since),
    )
    return [Realized(symbol, symbol[3:], closed, round(lots, 8), round(pnl, 2)) for symbol, closed, lots, pnl in found]


def exposure(ask: Ask) -> list[Exposure]:
    """What is open now, whatever the period."""
    found = rows(
        ask,
        "SELECT symbol, toString(side), count(), sum(quantity) FROM positions WHERE position_status = 'open' "
        "GROUP BY symbol, side ORDER BY symbol, side",
    )
    return [Exposure(symbol, side, count, round(lots, 8)) for symbol, side, count, lots in found]


def build(ask: Ask, since: datetime) -> Report:
    return Report(
        since=since,
        until=datetime.now(UTC),
        fill_rate=fill_rate(ask, since),
        slippage=slippage(ask, since),
        slippage_distribution=slippage_distribution(ask, since),
        signal_to_broker=latency(ask, since, "signal_to_broker"),
        fill_to_record=latency(ask, since, "fill_to_record"),
        rejects=rejects(ask, since),
        realized=realized(ask, since),
        exposure=exposure(ask),
    )


def to_json(report: Report) -> str:
    return msgspec.json.format(msgspec.json.encode(report), indent=2).decode()


# --- the same figures as tables: the text summary and the page ---------------------------------


class Section(msgspec.Struct, frozen=True):
    key: str  # also the name of its plot, when it has one
    title: str
    note: str
    columns: list[str]
    rows: list[tuple[str, ...]]
    empty: str  # what is said instead of an empty table


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def pips(value: float) -> str:
    return f"{round(value, 2) + 0.0:+.2f}"  # + 0.0: float noise rounds to -0.0, shown as +0.00


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def lots(value: float) -> str:
    return f"{value:.2f}"


def money(value: float, currency: str) -> str:
    return f"{value:+,.2f} {currency}"


def latency_row(name: str, measured: Latency) -> tuple[str, ...]:
    return (name, str(measured.samples), ms(measured.p50_ms), ms(measured.p95_ms), ms(measured.p99_ms), ms(measured.max_ms))


def sections(report: Report) -> list[Section]:
    fills, period = report.fill_rate, f"since {when(report.since)}"
    pnl_by_currency: dict[str, float] = {}
    for r in report.realized:
        pnl_by_currency[r.currency] = pnl_by_currency.get(r.currency, 0.0) + r.realized_pnl
    summary = [
        ("orders", str(fills.orders)),
        ("filled", f"{fills.filled} ({pct(fills.fill_rate)})"),
        ("rejected", str(sum(r.orders for r in report.rejects))),
        ("average slippage (orders with fills)", _average_slippage(report.slippage)),
        ("signal → broker p50 / p95", f"{ms(report.signal_to_broker.p50_ms)} / {ms(report.signal_to_broker.p95_ms)} ms"),
        ("fill → record p50 / p95", f"{ms(report.fill_to_record.p50_ms)} / {ms(report.fill_to_record.p95_ms)} ms"),
        ("realized PnL", ", ".join(money(v, c) for c, v in sorted(pnl_by_currency.items())) or "-"),
        ("open lots (long / short)", f"{lots(sum(e.lots for e in report.exposure if e.side == 'long'))} / {lots(sum(e.lots for e in report.exposure if e.side == 'short'))}"),
    ]  # fmt: skip
    statuses = [s for s in STATUSES if s in fills.statuses and s != "filled"]  # the other ways orders ended
    return [
        Section("summary", "Summary", f"{period} until {when(report.until)}", ["measure", "value"], summary, ""),
        Section(
            "fill_rate", "Fill rate", f"orders that ended filled, of all orders created {period} (resting ones included)",
            ["order type", "orders", "filled", "fill rate", *statuses],
            [(k.order_type, str(k.orders), str(k.filled), pct(k.fill_rate), *(str(k.statuses.get(s, 0)) for s in statuses)) for k in fills.by_order_type]
            + ([("all", str(fills.orders), str(fills.filled), pct(fills.fill_rate), *(str(fills.statuses[s]) for s in statuses))] if fills.orders else []),
            f"no orders {period}",
        ),
        Section(
            "slippage", "Slippage per order, pips",
            "each order's volume-weighted fill price against its signal's entry price; positive = adverse (a buy above, a sell below)",
            ["symbol", "side", "orders", "average", "min", "median", "max"],
            [(s.symbol, s.side, str(s.orders), pips(s.average_pips), pips(s.min_pips), pips(s.median_pips), pips(s.max_pips)) for s in report.slippage],
            f"no fills {period}",
        ),
        Section(
            "signal_to_broker", "Latency: signal → broker, ms",
            "from the order's creation (its signal taken in) to its submission to the broker",
            ["", "orders", "p50", "p95", "p99", "max"], [latency_row("signal → broker", report.signal_to_broker)] if report.signal_to_broker.samples else [],
            f"no orders submitted {period}",
        ),
        Section(
            "fill_to_record", "Latency: fill → record, ms",
            "from the broker's execution time of a deal to its row in ClickHouse",
            ["", "deals", "p50", "p95", "p99", "max"], [latency_row("fill → record", report.fill_to_record)] if report.fill_to_record.samples else [],
            f"no deals {period}",
        ),
        Section(
            "rejects", "Rejects by retcode", "orders the broker (or the service, no retcode) rejected",
            ["retcode", "name", "orders", "example"], [(str(r.retcode or "-"), r.name, str(r.orders), r.example) for r in report.rejects],
            f"no rejects {period}",
        ),
        Section(
            "realized_pnl", "Realized PnL per symbol", f"positions that closed lots {period}; in each symbol's quote currency",
            ["symbol", "positions closed", "lots closed", "realized PnL"],
            [(r.symbol, str(r.positions_closed), lots(r.lots_closed), money(r.realized_pnl, r.currency)) for r in report.realized],
            f"nothing closed {period}",
        ),
        Section(
            "exposure", "Open exposure", "open positions now, in lots",
            ["symbol", "side", "positions", "lots"], [(e.symbol, e.side, str(e.positions), lots(e.lots)) for e in report.exposure],
            "no open positions",
        ),
    ]  # fmt: skip


def _average_slippage(found: list[Slippage]) -> str:
    orders = sum(s.orders for s in found)
    if not orders:
        return "-"
    return f"{pips(sum(s.average_pips * s.orders for s in found) / orders)} pips over {orders} orders"


def when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def text(report: Report) -> str:
    parts = []
    for section in sections(report):
        body = table(section.columns, section.rows) if section.rows else f"({section.empty})"
        parts.append(f"{section.title} — {section.note}\n{body}")
    return "\n\n".join(parts)


# --- the plots ---------------------------------------------------------------------------------


def _figure(height: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(10, height), dpi=110, layout="constrained")
    axes = figure.subplots()
    axes.grid(True, axis="x", color="#dddddd")
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return figure, axes


def _rows_height(count: int) -> float:
    return 1.6 + 0.45 * count


def plot_slippage(report: Report) -> Figure | None:
    if not report.slippage:
        return None
    labels = [f"{s.symbol} {s.side}" for s in report.slippage]
    row = {(s.symbol, s.side): i for i, s in enumerate(report.slippage)}
    figure, axes = _figure(_rows_height(len(labels)))
    counts = report.slippage_distribution
    axes.scatter(
        [c.pips for c in counts], [row[c.symbol, c.side] for c in counts], s=[40 + 25 * c.orders for c in counts],
        color=[LOSS if c.pips > 0 else GAIN for c in counts], alpha=0.55, label="orders at that slippage (size = how many)",
    )  # fmt: skip
    axes.scatter([s.average_pips for s in report.slippage], range(len(labels)), marker="D", color="black", s=36, label="average", zorder=3)
    axes.axvline(0, color="#555555", linewidth=1)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_ylim(len(labels) - 0.5, -0.5)
    axes.set_xlabel("slippage, pips (positive = adverse: a buy above, a sell below the signal's entry)")
    axes.set_title("Slippage per order, by symbol and side")
    figure.legend(loc="outside lower center", fontsize="small", ncols=4, frameon=False)
    return figure


def plot_latency(measured: Latency, title: str) -> Figure | None:
    if not measured.samples:
        return None
    figure, axes = _figure(3.6)
    axes.grid(True, axis="y", color="#dddddd")
    starts = [b.start for b in measured.buckets]
    axes.plot(starts, [b.max_ms for b in measured.buckets], "v", color="#9e9e9e", label="max")
    axes.plot(starts, [b.p95_ms for b in measured.buckets], "o-", color=SHORT, label="p95")
    axes.plot(starts, [b.p50_ms for b in measured.buckets], "o-", color=LONG, label="p50")
    axes.set_ylim(bottom=0)
    axes.set_ylabel("ms")
    # minticks=2: a run of a few seconds gets whole-second ticks, not fractions of one.
    locator = mdates.AutoDateLocator(tz=UTC, minticks=2)
    axes.xaxis.set_major_locator(locator)
    clock = ["%Y", "%b", "%d", "%H:%M", "%H:%M", "%H:%M:%S"]
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC, formats=clock))
    axes.set_xlabel(f"time (UTC), {measured.bucket_s} s buckets")
    axes.set_title(f"{title}: p50 {ms(measured.p50_ms)} ms, p95 {ms(measured.p95_ms)} ms over {measured.samples}")
    figure.legend(loc="outside lower center", fontsize="small", ncols=3, frameon=False)
    return figure


def plot_fill_rate(report: Report) -> Figure | None:
    fills = report.fill_rate
    if not fills.orders:
        return None
    kinds = fills.by_order_type
    figure, axes = _figure(_rows_height(len(kinds)))
    left = [0] * len(kinds)
    for status in STATUSES:
        counts = [k.statuses.get(status, 0) for k in kinds]
        if any(counts):
            axes.barh(range(len(kinds)), counts, left=left, height=BAR, color=STATUS_COLOURS[status], label=status.replace("_", " "))
            left = [a + b for a, b in zip(left, counts, strict=True)]
    for i, k in enumerate(kinds):
        axes.text(k.orders, i, f"  {k.filled}/{k.orders} filled ({pct(k.fill_rate)})", va="center")
    axes.set_yticks(range(len(kinds)), [k.order_type for k in kinds])
    axes.set_ylim(len(kinds) - 0.5, -0.5)
    axes.set_xlim(0, max(k.orders for k in kinds) * 1.35)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("orders, by how they ended (submitted = still working at the broker)")
    axes.set_title(f"Fill rate {pct(fills.fill_rate)}: {fills.filled} of {fills.orders} orders filled")
    figure.legend(loc="outside lower center", fontsize="small", ncols=4, frameon=False)
    return figure


def plot_rejects(report: Report) -> Figure | None:
    if not report.rejects:
        return None
    figure, axes = _figure(_rows_height(len(report.rejects)))
    labels = [f"{r.retcode} {r.name}" if r.retcode else r.name for r in report.rejects]
    axes.barh(range(len(labels)), [r.orders for r in report.rejects], height=BAR, color=LOSS)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_ylim(len(labels) - 0.5, -0.5)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("rejected orders")
    axes.set_title("Rejects by MT5 retcode")
    return figure


def plot_realized(report: Report) -> Figure | None:
    if not report.realized:
        return None
    figure, axes = _figure(_rows_height(len(report.realized)))
    values = [r.realized_pnl for r in report.realized]
    axes.barh(range(len(values)), values, height=BAR, color=[GAIN if v >= 0 else LOSS for v in values])
    for i, r in enumerate(report.realized):
        axes.text(r.realized_pnl, i, f" {money(r.realized_pnl, r.currency)} ", va="center", ha="left" if r.realized_pnl >= 0 else "right")
    axes.axvline(0, color="#555555", linewidth=1)
    reach = max(abs(v) for v in values) or 1.0
    axes.set_xlim(-reach * 1.5, reach * 1.5)
    axes.set_yticks(range(len(values)), [r.symbol for r in report.realized])
    axes.set_ylim(len(values) - 0.5, -0.5)
    axes.set_xlabel("realized PnL, quote currency (labelled on each bar)")
    axes.set_title("Realized PnL per symbol")
    return figure


def plot_exposure(report: Report) -> Figure | None:
    if not report.exposure:
        return None
    symbols = sorted({e.symbol for e in report.exposure})
    held = {(e.symbol, e.side): e.lots for e in report.exposure}
    figure, axes = _figure(_rows_height(len(symbols)))
    longs = [held.get((s, "long"), 0.0) for s in symbols]
    shorts = [-held.get((s, "short"), 0.0) for s in symbols]
    axes.barh(range(len(symbols)), longs, height=BAR, color=LONG, label="long")
    axes.barh(range(len(symbols)), shorts, height=BAR, color=SHORT, label="short")
    for i, (up, down) in enumerate(zip(longs, shorts, strict=True)):
        if up:
            axes.text(up, i, f" {lots(up)}", va="center")
        if down:
            axes.text(down, i, f"{lots(-down)} ", va="center", ha="right")
    reach = max(max(longs), -min(shorts)) or 1.0
    axes.set_xlim(-reach * 1.4, reach * 1.4)
    axes.xaxis.set_major_formatter(lambda value, _: f"{abs(value):g}")
    axes.axvline(0, color="#555555", linewidth=1)
    axes.set_yticks(range(len(symbols)), symbols)
    axes.set_ylim(len(symbols) - 0.5, -0.5)
    axes.set_xlabel("open lots (short ← | → long)")
    axes.set_title("Open exposure per symbol and side")
    figure.legend(loc="outside lower center", fontsize="small", ncols=4, frameon=False)
    return figure


def plots(report: Report) -> dict[str, Figure | None]:
    """Each section's plot (None when there is nothing to draw)."""
    return {
        "fill_rate": plot_fill_rate(report),
        "slippage": plot_slippage(report),
        "signal_to_broker": plot_latency(report.signal_to_broker, "Signal → broker"),
        "fill_to_record": plot_latency(report.fill_to_record, "Fill → record"),
        "rejects": plot_rejects(report),
        "realized_pnl": plot_realized(report),
        "exposure": plot_exposure(report),
    }


# --- the page ----------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1140px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 2px; } h2 { font-size: 19px; margin: 34px 0 2px; border-top: 1px solid #ddd; padding-top: 18px; }
.note { color: #666; margin: 0 0 10px; } .empty { color: #888; font-style: italic; }
table { border-collapse: collapse; margin: 6px 0 12px; } th, td { padding: 4px 14px 4px 0; text-align: left; }
th { border-bottom: 2px solid #444; font-weight: 600; } td { border-bottom: 1px solid #e4e4e4; font-variant-numeric: tabular-nums; }
table.summary td:first-child { color: #555; } table.summary td:last-child { font-weight: 600; font-size: 16px; }
img { max-width: 100%; display: block; }
"""


def page(report: Report, images: dict[str, str]) -> str:
    """The HTML: the summary table first, then each section's table and plot (``images``: the
    sections' PNG file names, relative to the page)."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Execution quality</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Execution quality</h1>",
        f"<p class='note'>{html.escape(when(report.since))} → {html.escape(when(report.until))}, from ClickHouse</p>",
    ]
    for section in sections(report):
        if section.key != "summary":
            out.append(f"<h2>{html.escape(section.title)}</h2><p class='note'>{html.escape(section.note)}</p>")
        if not section.rows:
            out.append(f"<p class='empty'>{html.escape(section.empty[0].upper() + section.empty[1:])}.</p>")
            continue
        kind = " class='summary'" if section.key == "summary" else ""
        head = "" if section.key == "summary" else "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in section.columns) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in section.rows)
        out.append(f"<table{kind}>{head}{body}</table>")
        if section.key in images:
            out.append(f"<img src='{html.escape(images[section.key])}' alt='{html.escape(section.title)}'>")
    out.append("</body></html>")
    return "\n".join(out)


def write(report: Report, out_dir: Path) -> Path:
    """DIR/report.html and its PNGs (a previous report's PNGs are replaced or removed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    images = {}
    for key, figure in plots(report).items():
        if figure is not None:
            figure.savefig(out_dir / f"{key}.png")
            images[key] = f"{key}.png"
    path = out_dir / "report.html"
    path.write_text(page(report, images))
    return path
