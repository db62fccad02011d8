"""An operator's modify (``execution-service modify``): a resting order's price and SL/TP, an
open position's SL/TP, as the broker takes or refuses them; against the service running as in
production beside the simulated connector.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from harness import RunningSystem, wait_until
from test_operator import filled_market_order, quote, refused, resting_limit_order

from messages.enums import PositionStatus


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    running = RunningSystem(tmp_path_factory.mktemp("modify"), kafka_bootstrap, order_actor_pool=2, reconcile_interval_s=3600)
    yield running
    running.close()


def modified(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result
    return result.stdout


def refused_after_asking(result: subprocess.CompletedProcess[str], reason: str) -> None:
    """Accepted by the service, then refused: exit 1, the reason on one line of stderr."""
    assert result.returncode == 1, result
    assert len(result.stderr.strip().splitlines()) == 1 and reason in result.stderr, result.stderr


def kinds(system: RunningSystem, order_id: uuid.UUID) -> list[str]:
    rows = system.query("SELECT kind FROM suho_analytics.order_events WHERE order_id = {id:UUID} ORDER BY seq", id=order_id)
    return [kind for (kind,) in rows]


def archived(system: RunningSystem, order_id: uuid.UUID) -> list[str]:
    return [e.kind.value for e in system.archive() if e.order_id == order_id]


def position_of(system: RunningSystem, order_id: uuid.UUID) -> object:
    return next(p for p in system.positions().positions if p.entry_order_id == order_id)


def sent_to_the_broker(system: RunningSystem, order_id: uuid.UUID) -> bool:
    return f"modify {order_id}" in (system.logs / "simulator.log").read_text()


def test_a_resting_limit_orders_price_is_moved_and_it_fills_at_the_new_price(system: RunningSystem) -> None:
    order_id, _ = resting_limit_order(system)  # buy limit 1.26400, market 1.26490/1.26500
    out = modified(system.cli("modify", str(order_id)[:8], "--price", "1.26450"))
    assert f"order {order_id} modified (10009" in out
    assert system.order_row(order_id)["price"] == pytest.approx(1.26450)  # type: ignore[index]
    assert wait_until(lambda: (e := system.show(order_id)) and not e.active and e, what="resting again").order.pending_modify is None
    quote(system, "GBPUSD", 1.26440, 1.26450)  # the old limit would not fill here
    row = system.wait_status(order_id, "filled")
    assert row["average_fill_price"] == pytest.approx(1.26450)
    assert kinds(system, order_id) == ["created", "submitted", "placed", "modify_requested", "modify_sent", "modified", "fill"]
    assert wait_until(lambda: (a := archived(system, order_id))[-1:] == ["fill"] and a, what="the archive")[3:6] == ["modify_requested", "modify_sent", "modified"]
    # The status does not change with a modify: nothing of it on orders.{status}.
    assert system.statuses_on_nats(order_id) == ["pending", "submitted", "filled"]


def test_a_resting_orders_sl_and_tp_are_changed(system: RunningSystem) -> None:
    order_id, signal_id = resting_limit_order(system)
    modified(system.cli("modify", str(signal_id), "--sl", "1.26300", "--tp", "1.26600"))
    row = system.order_row(order_id)
    assert row is not None and (row["stop_loss"], row["take_profit"], row["price"]) == (1.26300, 1.26600, 1.26400)
    assert system.cli("cancel", str(order_id)).returncode == 0


def test_an_open_positions_sl_and_tp_are_changed_and_the_new_sl_closes_it(system: RunningSystem) -> None:
    order_id = filled_market_order(system)  # buy at 1.08500, market 1.08490/1.08500
    modified(system.cli("modify", str(order_id), "--sl", "1.08450", "--tp", "1.08700"))
    position = wait_until(lambda: (p := position_of(system, order_id)).stop_loss == 1.08450 and p, what="the position's new SL")
    assert position.take_profit == 1.08700  # type: ignore[attr-defined]
    in_clickhouse = "SELECT stop_loss, take_profit FROM suho_analytics.positions WHERE entry_order_id = {id:UUID}"
    wait_until(lambda: system.query(in_clickhouse, id=order_id) == [(1.08450, 1.08700)], what="the new SL/TP in ClickHouse")
    assert system.order_row(order_id)["order_status"] == "filled"  # type: ignore[index]
    quote(system, "EURUSD", 1.08440, 1.08450)  # through the new SL (the old position had none)
    closed = wait_until(lambda: (p := position_of(system, order_id)).position_status is PositionStatus.CLOSED and p, what="closed by its SL")
    assert closed.exit_price == pytest.approx(1.08440) and closed.exit_reason.value == "stop_loss"  # type: ignore[attr-defined]
    assert kinds(system, order_id)[-3:] == ["modify_requested", "modify_sent", "modified"]


def test_a_modify_the_broker_refuses_ends_refused_with_its_retcode_and_changes_nothing(system: RunningSystem) -> None:
    order_id, _ = resting_limit_order(system)
    # A buy limit above the ask is the broker's to refuse (MT5: 10015 invalid price).
    refused_after_asking(system.cli("modify", str(order_id), "--price", "1.26550"), "10015")
    assert sent_to_the_broker(system, order_id)
    row = system.order_row(order_id)
    assert row is not None and row["price"] == pytest.approx(1.26400) and row["order_status"] == "submitted"
    assert kinds(system, order_id)[-3:] == ["modify_requested", "modify_sent", "modify_refused"]
    refused_event = wait_until(lambda: [e for e in system.archive() if e.order_id == order_id and e.kind.value == "modify_refused"], what="archived")
    assert refused_event[0].detail is not None and refused_event[0].detail.startswith("10015")
    assert refused_event[0].order.pending_modify is None
    assert system.cli("cancel", str(order_id)).returncode == 0


def test_a_modify_against_the_pretrade_rules_is_refused_without_asking_the_broker(system: RunningSystem) -> None:
    order_id = filled_market_order(system)
    # A buy's SL above the price its position would close at now (the bid 1.08490).
    refused_after_asking(system.cli("modify", str(order_id), "--sl", "1.08495"), "invalid_stops")
    refused_after_asking(system.cli("modify", str(order_id), "--tp", "1.08400"), "invalid_stops")
    refused_after_asking(system.cli("modify", str(order_id), "--price", "1.08"), "position_takes_sl_tp")
    assert not sent_to_the_broker(system, order_id)
    assert position_of(system, order_id).stop_loss is None  # type: ignore[attr-defined]
    resting_id, _ = resting_limit_order(system)
    refused_after_asking(system.cli("modify", str(resting_id), "--price", "1.5"), "price_out_of_band")
    assert not sent_to_the_broker(system, resting_id)
    assert system.cli("cancel", str(resting_id)).returncode == 0


def test_a_modify_of_an_unknown_or_cancelled_order_is_refused(system: RunningSystem) -> None:
    unknown = uuid.uuid4()
    refused(system.cli("modify", str(unknown), "--sl", "1.0"), f"no order {unknown} is known")
    order_id, _ = resting_limit_order(system)
    assert system.cli("cancel", str(order_id)).returncode == 0
    refused(system.cli("modify", str(order_id), "--price", "1.26300"), "is already cancelled: nothing to modify")
