"""The operator's edge: the command line as an operator uses it, against the running service.

Every command is run as its own process (``python -m service.cli ...`` with the service's
EXEC_* environment), and what is checked is what an operator sees: exit codes, stdout and
stderr, and which processes are left. One service is shared by the tests that leave it
running; the tests that stop or kill a service share another, started afresh for each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from signal import SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGSTOP, SIGTERM, Signals

import pytest
from harness import REPO, NatsServer, RunningSystem, signal, wait_until
from ports import free_port

from actors.watchdog import Watchdog
from messages.actor import Ping, Pong
from messages.control import GetStatus, ServiceStatus
from service.processes import kill_session, parent_of, pids, session_members, started_at
from simulator.control import SetQuote
from system import DRAIN_TIMEOUT_S, WATCHDOG_NAME, admin_port_open, ask_for, join

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A parent that starts the launcher and then waits: killing it orphans the launcher.
PARENT = "import subprocess, sys; subprocess.Popen(sys.argv[1:]).wait()"


def cli(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    """A refusal: exit 1, nothing on stdout, the reason in one line of stderr."""
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert reason in result.stderr, result.stderr


def launch(system: RunningSystem) -> Path:
    """``execution-service run`` for this system, as an operator starts it; its output file
    once it says it runs (and the test has joined it)."""
    out = system.logs / f"launcher-{uuid.uuid4().hex[:8]}.log"
    system.launcher = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "run"], env=system.service_env(), stdout=out.open("w"), stderr=subprocess.STDOUT,
        cwd=REPO, start_new_session=True,
    )  # fmt: skip
    wait_until(lambda: "execution-service running" in out.read_text() or system.launcher.poll() is not None, 90, 0.2, "the service to run")
    system.connect()
    return out


def tree_gone(session: int, port: int, timeout_s: float = 30) -> None:
    """No process of the actor system is left, and its admin port is free."""
    wait_until(lambda: not session_members(session) and not admin_port_open(port), timeout_s, 0.2, f"session {session} to be gone")


def pid_of(system: RunningSystem, address: object) -> int:
    pong = system.actor_system.ask(address, Ping(), 10)
    assert isinstance(pong, Pong)
    return pong.pid


def quote(system: RunningSystem, symbol: str, bid: float, ask: float) -> None:
    system.control(set_quote=SetQuote(symbol=symbol, bid=bid, ask=ask))


def resting_limit_order(system: RunningSystem) -> tuple[uuid.UUID, uuid.UUID]:
    """A limit buy below the market, resting at the broker: (order_id, signal_id)."""
    quote(system, "GBPUSD", 1.26490, 1.26500)
    payload = signal("GBPUSD", "buy", 0.1, 1.26400, order_type="limit", limit_price=1.26400)
    order_id = system.send(payload)
    assert order_id is not None
    wait_until(lambda: (e := system.show(order_id)) and not e.active and e.order is not None, what="the order to rest")
    return order_id, uuid.UUID(payload["signal_id"])


def filled_market_order(system: RunningSystem, **fields: object) -> uuid.UUID:
    quote(system, "EURUSD", 1.08490, 1.08500)
    order_id = system.send(signal("EURUSD", "buy", 0.1, 1.08500, **fields))
    assert order_id is not None
    system.wait_status(order_id, "filled")
    return order_id


# --- one service, left running ------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    running = RunningSystem(tmp_path_factory.mktemp("operator"), kafka_bootstrap, order_actor_pool=2, reconcile_interval_s=3600)
    yield running
    running.close()


@pytest.mark.parametrize("command", ["run", "demo"])
def test_a_second_start_on_the_admin_port_is_refused_at_once_and_touches_nothing(system: RunningSystem, command: str) -> None:
    before = sorted(session_members(system.session))
    began = time.monotonic()
    result = system.cli(command)
    assert time.monotonic() - began < 10
    refused(result, f"already running on admin port {system.settings.admin_port}")
    assert sorted(session_members(system.session)) == before
    assert not Path(system.settings.run_dir, "demo").exists()  # the demo wiped nothing
    assert isinstance(system.ask("supervisor", Ping()), Pong)
    ps = system.cli("ps")
    assert ps.returncode == 0 and ps.stdout.count("Recorder") == 1, ps


def test_a_status_answer_that_came_late_is_not_taken_for_the_next_asks(system: RunningSystem) -> None:
    """Thespian gives an asker whatever reaches it first: the answer to an ask that timed out
    waits in the client's inbox. The next ask takes only its own answer."""
    late = GetStatus()
    system.actor_system.tell(system.supervisor, late)
    time.sleep(0.5)  # its answer reaches the client's inbox, and waits there
    status = ask_for(system.actor_system, system.supervisor, GetStatus(), ServiceStatus, 10)
    assert status is not None and status.asked and status.asked != late.asked


def test_show_takes_a_full_id_or_the_start_of_either(system: RunningSystem) -> None:
    order_id, signal_id = resting_limit_order(system)
    for key in (str(order_id), str(order_id)[:8], str(signal_id), str(signal_id)[:8].upper()):
        result = system.cli("show", key)
        assert result.returncode == 0, result
        assert f"order     {order_id}" in result.stdout and f"signal    {signal_id}" in result.stdout
        assert "resting at the broker" in result.stdout


def test_an_ambiguous_unknown_or_malformed_id_is_refused(system: RunningSystem) -> None:
    first = filled_market_order(system)
    # A second order whose signal_id starts as the first one's order_id does.
    second = filled_market_order(system, signal_id=f"{str(first)[:8]}{str(uuid.uuid4())[8:]}")
    for command in ("show", "cancel"):
        refused(system.cli(command, str(first)[:8]), f"{str(first)[:8]} is ambiguous")
        refused(system.cli(command, uuid.uuid4().hex[:12]), "no order_id or signal_id starts with")
        refused(system.cli(command, "not-an-id"), "is not an order_id or signal_id")
    refused(system.cli("show", str(uuid.uuid4())), "no order known for")
    for order_id in (first, second):  # a few more characters tell them apart
        assert f"order     {order_id}" in system.cli("show", str(order_id)[:13]).stdout


def test_a_cancel_of_an_unknown_or_finished_order_is_refused_naming_why(system: RunningSystem) -> None:
    refused(system.cli("cancel", str(uuid.uuid4())), "no order")
    filled = filled_market_order(system)
    refused(system.cli("cancel", str(filled)[:8]), f"order {filled} is already filled")


def test_a_cancel_of_a_resting_order_follows_it_until_it_is_cancelled(system: RunningSystem) -> None:
    order_id, signal_id = resting_limit_order(system)
    result = system.cli("cancel", str(signal_id)[:8], "--reason", "test")
    assert result.returncode == 0, result
    assert result.stdout.strip().splitlines()[-1] == f"order {order_id} cancelled"
    assert system.wait_status(order_id, "cancelled")["order_status"] == "cancelled"
    refused(system.cli("cancel", str(order_id)), f"order {order_id} is already cancelled")


def test_a_failing_query_is_refused_in_one_line(system: RunningSystem) -> None:
    refused(system.cli("sql", "SELEC 1"), "Syntax error")


def test_every_read_command_without_a_service_is_refused_in_one_line(system: RunningSystem) -> None:
    port = free_port()
    env = system.service_env() | {"EXEC_ADMIN_PORT": str(port)}
    for args in (["ps"], ["positions"], ["show", "abcdef12"], ["cancel", "abcdef12"], ["sql", "SELECT 1"]):
        refused(cli(env, *args), f"no execution-service is running on admin port {port}")
    assert not admin_port_open(port)  # asking started nothing there


# --- services stopped or killed, one after another -----------------------------------------------


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    running = RunningSystem(tmp_path_factory.mktemp("lifecycle"), kafka_bootstrap, order_actor_pool=2, reconcile_interval_s=3600)
    yield running
    running.close()


@pytest.fixture
def fresh(lifecycle: RunningSystem) -> Iterator[RunningSystem]:
    """The lifecycle system with no service running; whatever a test leaves is killed after."""
    lifecycle.stop_service()
    yield lifecycle
    if lifecycle.launcher is not None:
        lifecycle.launcher.kill()
        lifecycle.launcher.wait(10)
        lifecycle.launcher = None
    kill_session(lifecycle.session)


@pytest.mark.parametrize("signum", [SIGTERM, SIGINT, SIGHUP], ids=lambda s: Signals(s).name)
def test_a_stop_signal_to_the_launcher_drains_and_stops_the_whole_tree(fresh: RunningSystem, signum: int) -> None:
    out = launch(fresh)
    assert fresh.launcher is not None
    session, port = fresh.session, fresh.settings.admin_port
    fresh.launcher.send_signal(signum)
    assert fresh.launcher.wait(60) == 0
    tree_gone(session, port, timeout_s=1)
    assert f"{Signals(signum).name}: draining..." in out.read_text() and out.read_text().endswith("stopped\n")
    assert not Path(fresh.settings.run_dir, "launcher.json").exists()


def test_a_sigterm_to_every_process_at_once_stops_within_seconds_and_loses_nothing(fresh: RunningSystem) -> None:
    """systemd's default stop (KillMode=control-group), or ``pkill -f execution-service``: the
    actors die of it at once, and the launcher does not wait out its drain timeout for a
    supervisor that is gone. A signal that was filled is still filled after the next start."""
    out = launch(fresh)
    assert fresh.launcher is not None
    quote = fresh.control().quotes["EURUSD"]
    order_id = fresh.send(signal("EURUSD", "buy", 0.1, quote.ask))
    assert order_id is not None
    fresh.wait_status(order_id, "filled")
    session, port = fresh.session, fresh.settings.admin_port
    started = time.monotonic()
    for pid in [fresh.launcher.pid, *session_members(session)]:
        with contextlib.suppress(ProcessLookupError):  # an order actor that ended meanwhile
            os.kill(pid, SIGTERM)
    assert fresh.launcher.wait(60) == 0
    took = time.monotonic() - started
    tree_gone(session, port, timeout_s=1)
    assert took < DRAIN_TIMEOUT_S / 2, f"{took:.1f}s: the drain timeout was waited out"
    assert "SIGTERM: draining..." in out.read_text() and out.read_text().endswith("stopped\n")
    launch(fresh)
    fresh.wait_status(order_id, "filled")  # (raises unless ClickHouse has it filled)


def test_a_stop_does_not_wait_out_the_drain_of_a_tree_whose_admin_is_gone(fresh: RunningSystem) -> None:
    """The race behind an occasional 60 s stop of the test above: a supervisor that replaced an
    actor dying of the SIGTERM waits for that new actor, which got none, and so neither
    answers the drain nor exits, while the admin is already dead of it. Here the supervisor is
    held (SIGSTOP) and the admin killed once the launcher drains."""
    out = launch(fresh)
    assert fresh.launcher is not None
    session, port = fresh.session, fresh.settings.admin_port
    supervisor = pid_of(fresh, fresh.supervisor)
    admin = parent_of(supervisor)
    os.kill(supervisor, SIGSTOP)
    try:
        started = time.monotonic()
        fresh.launcher.send_signal(SIGTERM)
        wait_until(lambda: "SIGTERM: draining..." in out.read_text(), 10, 0.1, "the launcher to drain")
        os.kill(admin, SIGKILL)
        assert fresh.launcher.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, SIGCONT)
    took = time.monotonic() - started
    tree_gone(session, port, timeout_s=1)
    assert took < DRAIN_TIMEOUT_S / 2, f"{took:.1f}s: the drain timeout was waited out"
    assert out.read_text().endswith("stopped\n")


def test_the_death_of_the_admin_alone_restarts_the_whole_service(fresh: RunningSystem) -> None:
    """Without its admin a tree can neither be joined (every operator command goes through the
    admin port) nor shut down: the launcher treats it as dead and starts afresh."""
    out = launch(fresh)
    assert fresh.launcher is not None
    dead_session = fresh.session
    os.kill(parent_of(pid_of(fresh, fresh.supervisor)), SIGKILL)
    wait_until(lambda: out.read_text().count("execution-service running") == 2, 90, 0.2, "the service to run again")
    assert "the supervisor is lost (its or the admin's process is gone): restarting the whole service" in out.read_text()
    assert not session_members(dead_session)
    fresh.connect()
    assert fresh.session != dead_session and join(fresh.settings) is not None


def test_the_death_of_the_launchers_parent_stops_the_whole_tree(fresh: RunningSystem) -> None:
    out = fresh.logs / "orphaned-launcher.log"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, sys.executable, "-m", "service.cli", "run"], env=fresh.service_env(),
        stdout=out.open("w"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    record: dict[str, int] = {}
    try:
        wait_until(lambda: "execution-service running" in out.read_text(), 90, 0.2, "the service to run")
        record = json.loads(Path(fresh.settings.run_dir, "launcher.json").read_text())
        parent.kill()
        parent.wait(10)
        wait_until(lambda: started_at(record["pid"]) is None, 60, 0.2, "the launcher to stop")
        tree_gone(record["session"], fresh.settings.admin_port, timeout_s=1)
        assert "SIGHUP: draining..." in out.read_text()
    finally:
        parent.kill()
        if record and started_at(record["pid"]) is not None:
            os.kill(record["pid"], SIGKILL)
            kill_session(record["session"])


def test_a_sigkilled_launcher_leaves_no_tree_behind(fresh: RunningSystem) -> None:
    launch(fresh)
    assert fresh.launcher is not None
    fresh.launcher.kill()
    fresh.launcher.wait(10)
    fresh.launcher = None
    tree_gone(fresh.session, fresh.settings.admin_port, timeout_s=15)  # the watchdog's doing
    assert "the launcher (pid" in (fresh.logs / "service.log").read_text()


@pytest.mark.parametrize(
    ("also_killed", "said"),
    [
        # The tree still answers as a service, but its launcher is dead: stopped, drained.
        (["watchdog"], "lost its launcher"),
        # Nothing there answers as a service any more: its processes are killed.
        (["watchdog", "supervisor"], "clearing leftovers of a dead execution-service"),
    ],
)
def test_a_start_clears_what_a_dead_launcher_left_and_says_so(fresh: RunningSystem, also_killed: list[str], said: str) -> None:
    launch(fresh)
    assert fresh.launcher is not None
    addresses = {"watchdog": fresh.actor_system.createActor(Watchdog, globalName=WATCHDOG_NAME), "supervisor": fresh.supervisor}
    doomed = [pid_of(fresh, addresses[role]) for role in also_killed]
    fresh.launcher.kill()
    fresh.launcher.wait(10)
    for pid in doomed:
        os.kill(pid, SIGKILL)
    dead_session = fresh.session
    time.sleep(3)  # nothing stops this tree by itself any more
    assert session_members(dead_session) and admin_port_open(fresh.settings.admin_port)
    out = launch(fresh)
    assert said in out.read_text()
    assert not session_members(dead_session)
    assert fresh.session != dead_session and join(fresh.settings) is not None


# --- the demo -----------------------------------------------------------------------------------


def test_the_demo_starts_fresh_prints_full_ids_that_show_takes_and_stops_entirely_on_sigterm(tmp_path: Path, kafka_bootstrap: str) -> None:
    nats = NatsServer(tmp_path / "nats")
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXEC_")} | {
        "EXEC_NATS_URL": nats.url, "EXEC_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXEC_RUN_DIR": str(run_dir),
        "EXEC_ADMIN_PORT": str(free_port()), "EXEC_ARCHIVE_TOPIC": f"archive_{uuid.uuid4().hex[:8]}", "EXEC_ORDER_ACTOR_POOL": "2",
    }  # fmt: skip
    stale = run_dir / "demo" / "stale-state"
    stale.parent.mkdir(parents=True)
    stale.touch()
    out = tmp_path / "demo.log"
    demo = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "demo", "--keep-running"], env=env, stdout=out.open("w"), stderr=subprocess.STDOUT, cwd=REPO
    )
    record: dict[str, int] = {}
    try:
        wait_until(lambda: "keep running" in out.read_text() or demo.poll() is not None, 120, 0.5, "the demo's report")
        report = out.read_text()
        assert not stale.exists()
        resting = next(line for line in report.splitlines() if line.startswith("limit buy below the market"))
        order_id = UUID.search(resting)
        assert order_id is not None and len(set(UUID.findall(report))) >= 6
        shown = cli(env, "show", order_id[0][:8])
        assert shown.returncode == 0 and f"order     {order_id[0]}" in shown.stdout, shown
        record = json.loads((run_dir / "demo" / "launcher.json").read_text())
        assert record["pid"] == demo.pid
        simulators = children_of(demo.pid)
        assert simulators
        demo.send_signal(SIGTERM)
        assert demo.wait(60) == 0
        tree_gone(record["session"], int(env["EXEC_ADMIN_PORT"]), timeout_s=1)
        assert all(started_at(pid) is None for pid in simulators)
        assert out.read_text().rstrip().endswith("stopped the service and the simulator")
    finally:
        demo.kill()
        if record:
            kill_session(record["session"])
        nats.stop()


def children_of(parent: int) -> list[int]:
    children = []
    for pid in pids():
        with contextlib.suppress(OSError):  # (one that exited meanwhile)
            if parent_of(pid) == parent:
                children.append(pid)
    return children
