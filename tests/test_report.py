"""The execution-quality report tells what the service executed.

A real service trades a known set of orders (quotes are set, so every fill price and
slippage is known): fills on both sides of three symbols, a broker reject (no money), a
resting limit order, a gold position opened and closed at known prices. Then
``execution-service report`` runs as an operator runs it, and every figure of its summary
(JSON and text) is checked against those orders, and its page against its plots.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import RunningSystem, signal, wait_until

from simulator.control import SetQuote

# (symbol, side, volume, entry, bid, ask) of each market order; the slippage, in pips, follows.
FILLS = [
    ("EURUSD", "buy", 0.1, 1.08500, 1.08495, 1.08505),  # +0.5: a buy filled above its entry
    ("EURUSD", "buy", 0.1, 1.08500, 1.08500, 1.08510),  # +1.0
    ("EURUSD", "sell", 0.1, 1.08500, 1.08490, 1.08500),  # +1.0: a sell filled below its entry
    ("USDJPY", "sell", 0.2, 151.505, 151.485, 151.500),  # +2.0
    ("XAUUSD", "buy", 0.05, 2650.00, 2649.80, 2650.00),  # 0.0
]
GOLD_EXIT = 2655.00  # the close sells at this bid: (2655 - 2650) * 0.05 lots * 100 oz = +25 USD


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[tuple[dict[str, Any], str, Path]]:
    # Limits wide enough for an order the broker refuses for want of margin.
    system = RunningSystem(
        tmp_path_factory.mktemp("report"), kafka_bootstrap, reconcile_interval_s=3600, max_order_volume=100.0, max_symbol_exposure=1000.0
    )
    try:
        for symbol, side, volume, entry, bid, ask in FILLS:
            system.control(set_quote=SetQuote(symbol=symbol, bid=bid, ask=ask))
            order_id = system.send(signal(symbol, side, volume, entry))
            assert order_id is not None
            system.wait_status(order_id, "filled")

        rejected = system.send(signal("XAUUSD", "buy", 100.0, 2650.00))  # more margin than the account has
        assert rejected is not None
        assert system.wait_status(rejected, "rejected")["rejection_reason"].startswith("10019 ")

        system.control(set_quote=SetQuote(symbol="EURJPY", bid=163.790, ask=163.800))
        resting = system.send(signal("EURJPY", "buy", 0.1, 160.0, order_type="limit", limit_price=160.0))
        assert resting is not None
        wait_until(lambda: (e := system.show(resting)) and e.order is not None and not e.active, what="the limit order resting")

        wait_until(lambda: any(p.symbol == "XAUUSD" for p in system.positions().positions), what="the gold position")
        system.control(set_quote=SetQuote(symbol="XAUUSD", bid=GOLD_EXIT, ask=GOLD_EXIT + 0.20))
        close = system.send(signal("XAUUSD", "close_long", 0.05, GOLD_EXIT))
        assert close is not None
        system.wait_status(close, "filled")
        wait_until(
            lambda: system.query("SELECT countIf(position_status = 'closed'), count() FROM positions") == [(1, 5)],
            what="the positions recorded, gold closed",
        )

        out = system.tmp / "report"
        as_json = system.cli("report", "--since", "1h", "--out", str(out), "--json")
        assert as_json.returncode == 0, as_json.stderr
        as_text = system.cli("report", "--since", "1h", "--out", str(out))
        assert as_text.returncode == 0, as_text.stderr
        yield json.loads(as_json.stdout), as_text.stdout, out
    finally:
        system.close()


def test_counts_and_fill_rate(reported: tuple[dict[str, Any], str, Path]) -> None:
    figures, _, _ = reported
    fills = figures["fill_rate"]
    # Six filled (five opening, one close), one rejected, one resting.
    assert (fills["orders"], fills["filled"], fills["statuses"]) == (8, 6, {"filled": 6, "submitted": 1, "rejected": 1})
    assert fills["fill_rate"] == pytest.approx(6 / 8)
    by_type = {k["order_type"]: (k["orders"], k["filled"], k["fill_rate"]) for k in fills["by_order_type"]}
    assert by_type == {"market": (7, 6, pytest.approx(6 / 7)), "limit": (1, 0, 0.0)}


def test_slippage_per_symbol_and_side(reported: tuple[dict[str, Any], str, Path]) -> None:
    figures, _, _ = reported
    got = {(s["symbol"], s["side"]): (s["orders"], s["average_pips"], s["min_pips"], s["max_pips"]) for s in figures["slippage"]}
    assert got == {
        ("EURUSD", "buy"): (2, pytest.approx(0.75), pytest.approx(0.5), pytest.approx(1.0)),
        ("EURUSD", "sell"): (1, pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0)),
        ("USDJPY", "sell"): (1, pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0)),
        ("XAUUSD", "buy"): (1, pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9)),
        ("XAUUSD", "sell"): (1, pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9)),
    }
    distribution = {(c["symbol"], c["side"], c["pips"]): c["orders"] for c in figures["slippage_distribution"]}
    assert distribution == {
        ("EURUSD", "buy", 0.5): 1, ("EURUSD", "buy", 1.0): 1, ("EURUSD", "sell", 1.0): 1,
        ("USDJPY", "sell", 2.0): 1, ("XAUUSD", "buy", 0.0): 1, ("XAUUSD", "sell", 0.0): 1,
    }  # fmt: skip


def test_latencies_cover_every_submission_and_deal(reported: tuple[dict[str, Any], str, Path]) -> None:
    figures, _, _ = reported
    to_broker, to_record = figures["signal_to_broker"], figures["fill_to_record"]
    assert to_broker["samples"] == 8  # the rejected and the resting order were submitted too
    assert to_record["samples"] == 6  # one deal per fill
    for measured in (to_broker, to_record):
        assert 0 <= measured["p50_ms"] <= measured["p95_ms"] <= measured["p99_ms"] <= measured["max_ms"]
        assert sum(b["samples"] for b in measured["buckets"]) == measured["samples"]


def test_rejects_pnl_and_exposure(reported: tuple[dict[str, Any], str, Path]) -> None:
    figures, _, _ = reported
    (reject,) = figures["rejects"]
    assert (reject["retcode"], reject["name"], reject["orders"]) == (10019, "NO_MONEY", 1)
    assert reject["example"].startswith("10019 No money")
    assert figures["realized"] == [
        {"symbol": "XAUUSD", "currency": "USD", "positions_closed": 1, "lots_closed": 0.05, "realized_pnl": pytest.approx(25.0)}
    ]
    assert figures["exposure"] == [
        {"symbol": "EURUSD", "side": "long", "positions": 2, "lots": pytest.approx(0.2)},
        {"symbol": "EURUSD", "side": "short", "positions": 1, "lots": pytest.approx(0.1)},
        {"symbol": "USDJPY", "side": "short", "positions": 1, "lots": pytest.approx(0.2)},
    ]


def test_the_text_summary_prints_the_same_figures(reported: tuple[dict[str, Any], str, Path]) -> None:
    _, text, out = reported
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for expected in (
        "orders 8", "filled 6 (75.0%)", "rejected 1", "realized PnL +25.00 USD", "open lots (long / short) 0.20 / 0.30",
        "market 7 6 85.7% 0 1", "limit 1 0 0.0% 1 0", "all 8 6 75.0% 1 1",
        "EURUSD buy 2 +0.75 +0.50 +0.75 +1.00", "USDJPY sell 1 +2.00 +2.00 +2.00 +2.00",
        "XAUUSD 1 0.05 +25.00 USD", "EURUSD long 2 0.20", "EURUSD short 1 0.10", "USDJPY short 1 0.20",
    ):  # fmt: skip
        assert expected in lines, expected
    assert any(line.startswith("10019 NO_MONEY 1 10019 No money") for line in lines)
    assert lines[-1] == f"report: {out / 'report.html'}"


def test_the_page_shows_its_plots(reported: tuple[dict[str, Any], str, Path]) -> None:
    _, _, out = reported
    page = (out / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    expected = {"fill_rate", "slippage", "signal_to_broker", "fill_to_record", "rejects", "realized_pnl", "exposure"}
    assert sorted(images) == sorted(f"{name}.png" for name in expected)
    for image in images:
        assert (out / image).read_bytes().startswith(b"\x89PNG"), image
    assert "+25.00 USD" in page and "10019" in page and "75.0%" in page
