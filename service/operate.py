"""The operator commands that steer and examine the running service as a whole: ``halt``,
``resume`` and ``status`` (the compose healthcheck). Each asks the service and raises Refused,
with the reason in one line, when it cannot do what it was asked or the service is unhealthy."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from actors.supervisor import ROLES
from messages.actor import Directory, GetDirectory, Ping, Pong
from messages.control import (
    CancelResting,
    CancelsSent,
    CheckServers,
    ControlAnswer,
    Flatten,
    Flattening,
    GetLag,
    GetStatus,
    HaltTrading,
    InstanceControl,
    ResumeTrading,
    ServersChecked,
    ServiceStatus,
    SinkLag,
    TradingHalt,
)
from messages.enums import OrderStatus
from model.order import TERMINAL
from service.cli import Client, table
from system import Refused

FOLLOW_INTERVAL_S = 0.2
# How long status waits for every role at once: a dead one does not hold up the others.
STATUS_TIMEOUT_S = 5.0
# The roles that hold a connection to a server, and which.
SERVER_ROLES = ("recorder", "archiver", "status_publisher", "gateway", "ingress")


def describe(halt: TradingHalt) -> str:
    return f"since {halt.since:%Y-%m-%d %H:%M:%S} UTC ({halt.reason}), halt {halt.halt_id}"


# --- halt and resume ----------------------------------------------------------------------


def halt(client: Client, reason: str, cancel_resting: bool, flatten: bool, wait_s: float) -> str:
    """Halt every tree of this service (a halt in force is kept), then cancel the working
    orders and close the positions if asked, following each order until it ends. An instance
    that shares the work halts its own partitions and tells the other instances to do the same
    with theirs (each follows its own orders: its log says what it did)."""
    done = [_halt_tree(client, reason, cancel_resting, flatten, wait_s) for _ in client.each_tree()]
    if client.coordinator is not None:
        client.actor_system.tell(client.coordinator, InstanceControl(halt=True, reason=reason, cancel_resting=cancel_resting, flatten=flatten))
        also = [what for what, asked in (("cancel their working orders", cancel_resting), ("close their positions", flatten)) if asked]
        done.append(f"the other instances told to halt{' and ' + ' and '.join(also) if also else ''}")
    return "; ".join(done)


def _halt_tree(client: Client, reason: str, cancel_resting: bool, flatten: bool, wait_s: float) -> str:
    where = f"partition {client.partition}: " if client.partition is not None else ""
    answer = client.ask(client.supervisor, HaltTrading(reason), ControlAnswer)
    if answer.error is not None or answer.halt is None:
        raise Refused(f"{where}trading is halted, but the halt could not be recorded (a restart would forget it): {answer.error}")
    print(f"{where}trading {'halted' if answer.changed else 'was already halted'} {describe(answer.halt)}", flush=True)
    problems: list[str] = []
    done = []
    if cancel_resting:
        sent = client.ask(client.supervisor, CancelResting(f"halt: {reason}"), CancelsSent)
        print(f"{where}cancelling {len(sent.order_ids)} working orders...", flush=True)
        problems += follow(client, sent.order_ids, OrderStatus.CANCELLED, wait_s)
        done.append(f"{len(sent.order_ids)} working orders cancelled")
    if flatten:
        closing = client.ask(client.supervisor, Flatten(), Flattening)
        if closing.error is not None:
            raise Refused(f"{where}flatten refused: {closing.error}")
        print(f"{where}closing {len(closing.order_ids)} open positions at market...", flush=True)
        problems += closing.not_closed
        problems += follow(client, closing.order_ids, OrderStatus.FILLED, wait_s)
        done.append(f"{len(closing.order_ids)} positions closed")
    if problems:
        raise Refused(f"{where}trading is halted, but: {'; '.join(problems)}")
    return where + "; ".join(["trading halted", *done])


def resume(client: Client) -> str:
    """Accepted when not halted too: what the operator wants, trading, is what there is."""
    done = []
    for _ in client.each_tree():
        where = f"partition {client.partition}: " if client.partition is not None else ""
        answer = client.ask(client.supervisor, ResumeTrading(), ControlAnswer)
        if answer.error is not None:
            raise Refused(f"{where}trading is resumed, but the resume could not be recorded (a restart would halt again): {answer.error}")
        done.append(where + ("trading resumed" if answer.changed else "trading was not halted: nothing to resume"))
    if client.coordinator is not None:
        client.actor_system.tell(client.coordinator, InstanceControl(halt=False))
        done.append("the other instances told to resume")
    return "; ".join(done)


def follow(client: Client, order_ids: list[uuid.UUID], wanted: OrderStatus, wait_s: float) -> list[str]:
    """Follow the orders until they end, printing each end; what did not end ``wanted`` in time."""
    deadline = time.monotonic() + wait_s
    problems = []
    left = set(order_ids)
    while left:
        for order_id in sorted(left):
            status = client.status(order_id)
            if status in TERMINAL:
                left.discard(order_id)
                print(f"  order {order_id} {status.value}", flush=True)
                if status is not wanted:
                    problems.append(f"order {order_id} ended {status.value}, not {wanted.value}")
            elif time.monotonic() > deadline:
                left.discard(order_id)
                problems.append(f"order {order_id} is still {status.value if status else 'unrecorded'} after {wait_s:.0f}s")
        if left:
            time.sleep(FOLLOW_INTERVAL_S)
    return problems


# --- status -------------------------------------------------------------------------------


class RoleHealth(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    address: str
    alive: bool
    pid: int | None = None
    doing: str = ""


class ServerHealth(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    role: str
    target: str
    reachable: bool
    detail: str = ""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """What ``status`` prints (``--json``: as it is); healthy means every role answers and every
    server is reachable. A halt is not ill health: the service does what it was told."""

    healthy: bool
    problems: list[str]
    halted: bool
    halt: TradingHalt | None
    active_orders: int
    resting_orders: int
    waiting_orders: int
    recovered_orders: int
    reconciling_orders: int
    reconciled_after_s: float | None
    # Events not yet in ClickHouse, and per sink the recorded events it has not confirmed.
    to_write: int | None
    unconfirmed: dict[str, int]
    roles: list[RoleHealth]
    servers: list[ServerHealth]


class InstanceHealth(msgspec.Struct, frozen=True, kw_only=True):
    """``status`` of an instance that shares the work: each partition it serves, as a tree's."""

    healthy: bool
    problems: list[str]
    instance: str
    partitions: int
    serving: dict[int, Health]


def status(client: Client) -> Health | InstanceHealth:
    if client.coordinator is None:
        return tree_status(client)
    serving = {partition: tree_status(client) for partition in client.each_tree() if partition is not None}
    problems = [f"partition {partition}: {problem}" for partition, health in serving.items() for problem in health.problems]
    return InstanceHealth(
        healthy=not problems, problems=problems, instance=client.settings.instance, partitions=client.settings.partitions, serving=serving
    )


def tree_status(client: Client) -> Health:
    directory = client.ask(client.supervisor, GetDirectory(), Directory)
    roles = {"supervisor": client.supervisor} | {role: getattr(directory.peers, role) for role in ROLES}
    asks: list[tuple[Any, Any]] = [(address, Ping()) for address in roles.values() if address is not None]
    asks += [(roles[role], CheckServers()) for role in SERVER_ROLES if roles[role] is not None]
    asks += [(client.supervisor, GetStatus()), (directory.peers.recorder, GetLag())]
    answers = gather(client, asks, STATUS_TIMEOUT_S)
    pongs = {answer.address: answer for answer in answers if isinstance(answer, Pong)}
    checked = {answer.role: answer.checks for answer in answers if isinstance(answer, ServersChecked)}
    service = next((answer for answer in answers if isinstance(answer, ServiceStatus)), None)
    lag = next((answer for answer in answers if isinstance(answer, SinkLag)), None)

    problems = []
    role_health = []
    for role, address in roles.items():
        pong = pongs.get(str(address)) if address is not None else None
        if pong is None:
            problems.append(f"{role} {'does not answer' if address is not None else 'is not running'}")
        shown = str(address) if address is not None else ""
        role_health.append(RoleHealth(role=role, address=shown, alive=pong is not None, pid=pong.pid if pong else None, doing=pong.doing if pong else ""))
    servers = []
    for role in SERVER_ROLES:
        checks = checked.get(ROLES[role].__name__)
        if checks is None:
            problems.append(f"{role} did not say whether its server is reachable within {STATUS_TIMEOUT_S:.0f}s")
        for check in checks or []:
            servers.append(ServerHealth(server=check.server, role=role, target=check.target, reachable=check.reachable, detail=check.detail))
            if not check.reachable:
                problems.append(f"{check.server} ({check.target}) unreachable from {role}: {check.detail}")
    if service is None:
        problems.append("the supervisor did not report the orders")
    return Health(
        healthy=not problems,
        problems=problems,
        halted=service is not None and service.halt is not None,
        halt=service.halt if service else None,
        active_orders=service.active_orders if service else 0,
        resting_orders=service.resting_orders if service else 0,
        waiting_orders=service.waiting_orders if service else 0,
        recovered_orders=service.recovered_orders if service else 0,
        reconciling_orders=service.reconciling_orders if service else 0,
        reconciled_after_s=service.reconciled_after_s if service else None,
        to_write=lag.to_write if lag else None,
        unconfirmed=lag.unconfirmed if lag else {},
        roles=role_health,
        servers=servers,
    )


def gather(client: Client, asks: list[tuple[Any, Any]], timeout_s: float) -> list[Any]:
    """Ask several actors at once; the answers that came within ``timeout_s`` (a status only if
    it carries back the token of this gathering's GetStatus, not an earlier one's)."""
    for target, message in asks:
        client.actor_system.tell(target, message)
    tokens = {message.asked for _, message in asks if isinstance(message, GetStatus)}
    answers: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(answers) < len(asks) and (left := deadline - time.monotonic()) > 0:
        answer = client.actor_system.listen(left)
        if isinstance(answer, Pong | ServersChecked | SinkLag) or isinstance(answer, ServiceStatus) and answer.asked in tokens:
            answers.append(answer)
    return answers


def status_text(health: Health | InstanceHealth) -> str:
    if isinstance(health, InstanceHealth):
        served = ", ".join(str(p) for p in sorted(health.serving)) or "none right now"
        head = [
            f"instance   {health.instance}: serves partitions {served} of {health.partitions}",
            f"health     {'ok' if health.healthy else 'UNHEALTHY: ' + '; '.join(health.problems)}",
        ]
        return "\n\n".join(["\n".join(head), *(f"--- partition {p}\n{status_text(h)}" for p, h in sorted(health.serving.items()))])
    trading = f"HALTED {describe(health.halt)}" if health.halt else "running"
    if health.reconciled_after_s is not None:
        recovery = f"all reconciled with the broker {health.reconciled_after_s:.2f}s after the state was loaded"
    else:
        recovery = f"{health.reconciling_orders} still being reconciled with the broker"
    sinks = ", ".join(f"{sink} {count}" for sink, count in health.unconfirmed.items())
    lines = [
        f"health     {'ok' if health.healthy else 'UNHEALTHY: ' + '; '.join(health.problems)}",
        f"trading    {trading}",
        f"orders     {health.active_orders} active, {health.resting_orders} resting, {health.waiting_orders} waiting for an actor",
        f"recovery   {health.recovered_orders} open orders rebuilt at start{'; ' + recovery if health.recovered_orders else ''}",
        f"lag        {'?' if health.to_write is None else health.to_write} to write to ClickHouse; recorded, not confirmed: {sinks or '?'}",
        "",
        table(["role", "alive", "pid", "address"], [(r.role, "yes" if r.alive else "NO", r.pid, r.address) for r in health.roles]),
        "",
        table(
            ["server", "role", "reachable", "target", "detail"],
            [(s.server, s.role, "yes" if s.reachable else "NO", s.target, s.detail) for s in health.servers],
        ),
    ]
    return "\n".join(lines)


def to_json(value: Any) -> str:
    """Machine-readable output: ids and times as strings, whatever a query returns included."""
    return msgspec.json.format(msgspec.json.encode(value, enc_hook=str), indent=2).decode()
