"""The trading halt and the service's health, as an operator drives them: ``halt``, ``resume``
and ``status`` (and the other read commands' ``--json``) run as their own processes against the
service running as in production, beside the simulated connector.

One service for the module; the tests run in order and each leaves trading resumed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from harness import RunningSystem, signal, wait_until
from ports import free_port
from test_operator import cli, filled_market_order, refused, resting_limit_order

from messages.control import flatten_signal_id
from messages.order import order_id_for


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    running = RunningSystem(tmp_path_factory.mktemp("halt"), kafka_bootstrap, order_actor_pool=2, reconcile_interval_s=3600)
    yield running
    running.close()


def ok(result: Any) -> str:
    assert result.returncode == 0, result
    return result.stdout


def status(system: RunningSystem) -> dict[str, Any]:
    return json.loads(ok(system.cli("status", "--json")))


def alerts(system: RunningSystem, kind: str) -> list[dict[str, Any]]:
    return [alert for _, data in system.probe.seen["signals.alert"] if (alert := msgspec.json.decode(data))["kind"] == kind]


def dead_letter(system: RunningSystem, signal_id: str) -> dict[str, Any]:
    return wait_until(
        lambda: next((d for d in system.dead_letters() if d.get("signal_id") == signal_id), None), 15, what=f"the dead letter of {signal_id}"
    )


def refused_while_halted(system: RunningSystem) -> None:
    """A new signal is dead-lettered trading_halted, and nothing of it reaches the broker."""
    payload = signal("EURUSD", "buy", 0.1)
    order_id = order_id_for(uuid.UUID(payload["signal_id"]))
    system.send(payload)
    assert dead_letter(system, payload["signal_id"])["reason"] == "trading_halted"
    assert system.statuses_on_nats(order_id) == []
    assert system.order_row(order_id) is None


def test_status_is_healthy_and_says_so_in_json(system: RunningSystem) -> None:
    text = ok(system.cli("status"))
    assert text.startswith("health     ok") and "trading    running" in text
    health = status(system)
    assert health["healthy"] is True and health["problems"] == []
    assert health["halted"] is False and health["halt"] is None
    assert {role["role"] for role in health["roles"] if role["alive"]} == {
        "supervisor", "recorder", "archiver", "status_publisher", "gateway", "positions", "ingress",
    }  # fmt: skip
    assert {(s["server"], s["role"]) for s in health["servers"] if s["reachable"]} == {
        ("clickhouse", "recorder"), ("kafka", "archiver"), ("nats", "status_publisher"), ("nats", "gateway"), ("nats", "ingress"),
    }  # fmt: skip
    assert health["recovered_orders"] == 0 and health["reconciling_orders"] == 0
    assert set(health["unconfirmed"]) == {"archiver", "status_publisher"} and health["to_write"] >= 0
    for field in ("active_orders", "resting_orders", "waiting_orders"):
        assert health[field] >= 0


def test_status_without_a_service_exits_non_zero(system: RunningSystem) -> None:
    port = free_port()
    refused(cli(system.service_env() | {"EXEC_ADMIN_PORT": str(port)}, "status", "--json"), f"no execution-service is running on admin port {port}")


def test_every_read_command_prints_json(system: RunningSystem) -> None:
    order_id = filled_market_order(system)
    shown = json.loads(ok(system.cli("show", str(order_id)[:8], "--json")))
    assert shown["order_id"] == str(order_id) and shown["held"] is False
    assert [event["status"] for event in shown["history"]][-1] == "filled"
    processes = json.loads(ok(system.cli("ps", "--json")))
    assert {"Supervisor", "Recorder", "Ingress"} <= {p["role"] for p in processes} and all(p["pid"] > 0 for p in processes)
    positions = json.loads(ok(system.cli("positions", "--json")))
    assert any(p["entry_order_id"] == str(order_id) for p in positions)
    result = json.loads(ok(system.cli("sql", "SELECT order_id, order_status FROM orders WHERE order_id = {id:UUID}", "--param", f"id={order_id}", "--json")))
    assert result == {"columns": ["order_id", "order_status"], "rows": [[str(order_id), "filled"]]}


def test_a_halt_refuses_signals_with_one_alert_survives_a_restart_and_resume_executes_again(system: RunningSystem) -> None:
    before = signal("EURUSD", "buy", 0.1)
    system.send(before)
    system.wait_status(order_id_for(uuid.UUID(before["signal_id"])), "filled")
    resting_limit_order(system)  # open across the restart: rebuilt and reconciled

    halted = system.cli("halt", "--reason", "test halt")
    assert ok(halted).strip().splitlines()[-1] == "trading halted"
    health = status(system)
    assert health["halted"] is True and health["halt"]["reason"] == "test halt" and health["healthy"] is True
    halt_id = health["halt"]["halt_id"]
    wait_until(lambda: alerts(system, "halt"), what="the alert of the halt")

    refused_while_halted(system)
    refused_while_halted(system)
    assert len(alerts(system, "trading_halted")) == 1  # one per halt, not one per signal
    # A replay of a signal executed before the halt stays a silent no-op.
    system.send(before)
    refused_while_halted(system)
    assert all(letter.get("signal_id") != before["signal_id"] for letter in system.dead_letters())
    assert "already halted" in ok(system.cli("halt"))  # idempotent: the same halt

    system.stop_service()
    system.start_service()
    assert status(system)["halt"]["halt_id"] == halt_id
    refused_while_halted(system)
    launcher = system.logs / "launcher.log"
    wait_until(lambda: "recovery: all 1 open orders reconciled with the broker" in launcher.read_text(), what="the launcher's recovery line")
    said = launcher.read_text()
    assert "1 open orders rebuilt from ClickHouse, being reconciled with the broker" in said and "trading is HALTED" in said
    health = status(system)
    assert health["recovered_orders"] == 1 and health["reconciling_orders"] == 0 and health["reconciled_after_s"] >= 0

    assert ok(system.cli("resume")).strip() == "trading resumed"
    wait_until(lambda: alerts(system, "resume"), what="the alert of the resume")
    assert status(system)["halted"] is False
    filled_market_order(system)
    assert ok(system.cli("resume")).strip() == "trading was not halted: nothing to resume"
    rows = system.query("SELECT halted, toString(halt_id) FROM execution_control ORDER BY version")
    assert rows == [(True, halt_id), (False, None)], rows


def test_a_recovered_resting_order_the_broker_did_not_answer_for_is_asked_about_again(system: RunningSystem) -> None:
    """A recovery's status query can go unanswered (a connector silent, or too busy to answer
    in time): the order is asked about again within seconds, not at the next sweep (an hour
    here), which is what a benchmark's recovery of 1,000 orders once waited for."""
    resting_limit_order(system)
    system.stop_service()
    log = system.logs / "service.log"
    unanswered = log.read_text().count("connector did not answer mt5.order_status")
    system.control(silent_for_s=60)
    try:
        system.start_service()
        wait_until(lambda: log.read_text().count("connector did not answer mt5.order_status") > unanswered, what="the unanswered status query")
        assert status(system)["reconciling_orders"] >= 1
    finally:
        system.control(silent_for_s=0)
    wait_until(lambda: status(system)["reconciling_orders"] == 0, 15, 0.5, "the recovered orders reconciled")
    assert "recovery: the broker has not answered for" in log.read_text()


def test_a_halt_that_cancels_resting_cancels_a_resting_limit_order_at_the_broker(system: RunningSystem) -> None:
    order_id, _ = resting_limit_order(system)
    out = ok(system.cli("halt", "--cancel-resting", "--reason", "close of day"))
    assert f"order {order_id} cancelled" in out
    assert system.wait_status(order_id, "cancelled")["order_status"] == "cancelled"
    assert status(system)["resting_orders"] == 0
    ok(system.cli("resume"))


def open_tickets(system: RunningSystem) -> list[int]:
    return [p.ticket for p in system.positions().positions if p.position_status.value == "open"]


def test_a_halt_that_flattens_closes_every_open_position_once(system: RunningSystem) -> None:
    filled_market_order(system)
    tickets = wait_until(lambda: open_tickets(system), what="open positions")
    ok(system.cli("halt", "--flatten", "--reason", "flatten"))
    halt_id = uuid.UUID(status(system)["halt"]["halt_id"])
    wait_until(lambda: not open_tickets(system), what="every position closed")
    closed = {p.ticket: p for p in system.positions().positions}
    for ticket in tickets:  # each by the close order its halt and ticket name
        assert closed[ticket].exit_order_id == order_id_for(flatten_signal_id(halt_id, ticket))
        assert closed[ticket].exit_reason is not None and closed[ticket].exit_reason.value == "signal"
    orders = system.query("SELECT count() FROM orders")
    ok(system.cli("halt", "--flatten"))  # the same halt: nothing is left to close, nothing is closed twice
    assert system.query("SELECT count() FROM orders") == orders
    ok(system.cli("resume"))

