"""The ``execution-service`` command.

run        run the service until SIGTERM, SIGINT or SIGHUP (then drain and stop)
demo       paper trading: the simulated connector, the service, a handful of signals, a report;
           from a fresh state in run_dir/demo each time (--keep-state keeps it)
show ID    trace one order: its actor, alive or not, live state, history
cancel ID  cancel an open order and follow it until it ends (exit 0 only if it ended cancelled)
           (ID: an order_id or a signal_id, or the start of either that names one order)
modify ID  change a working order's --price, --stoplimit, --sl, --tp or --expires, or the --sl/--tp
           of the open position a filled order opened; waits for the broker (exit 0 only if
           it took the change)
halt       refuse new signals (trading_halted) until resume, also after a restart; --cancel-resting
           cancels every working order, --flatten closes every open position at market (exit 0
           only if each ended so); --reason TEXT
resume     take signals again (also accepted when not halted)
status     roles, servers, sink lag, halt, orders, recovery (exit 0 only if healthy)
positions  positions as the position keeper holds them
ps         every actor of the running service: role, process id, address, what it holds
sql QUERY  one statement, run read-only (ClickHouse's readonly) by the running service (chdb has
           one owner) in its database; --param NAME=VALUE binds {NAME:Type} or %(NAME)s
report     the execution-quality report from ClickHouse (slippage, latency, fill rate, rejects, PnL,
           exposure) since --since (24h; a duration or an ISO time): DIR/report.html with its
           plots (--out DIR, default run_dir/report) and its figures on stdout (--json: as JSON)
migrate    apply the ClickHouse migrations and create what the schema lacks (the service also
           does this at start)
(show, positions, ps, sql and status take --json: machine-readable output)
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from model.order import TERMINAL
from messages.actor import (
    CancelAnswer,
    CancelRequest,
    Directory,
    FindTree,
    GetDirectory,
    GetHistory,
    GetPeers,
    GetPositions,
    GetState,
    History,
    ModifyAnswer,
    ModifyCommand,
    OrderDirectoryEntry,
    OrderState,
    Peers,
    Ping,
    Pong,
    PositionsSnapshot,
    Query,
    QueryResult,
    ShowOrder,
    TreeFound,
)
from messages.enums import OrderStatus
from messages.order import EventKind, Order, OrderChange, OrderEvent
from messages.position import Position
from service.config import Settings, load_settings
from service.partitions import partition_of
from system import Refused, admin_port_open, join, run

ASK_TIMEOUT_S = 10.0
CANCEL_WAIT_S = 30.0
FOLLOW_INTERVAL_S = 0.2
REPORT_SINCE = "24h"
ID_PREFIX = re.compile(r"[0-9a-f-]{1,36}")
# The orders whose order_id or signal_id starts with a prefix; order_events is the history
# every order has, whatever its latest state is kept in.
SYMBOL_SQL = "SELECT symbol FROM {db}.order_versions WHERE order_id = {{id:UUID}} LIMIT 1"
RESOLVE_SQL = (
    "SELECT DISTINCT toString(order_id) FROM {db}.order_events "
    "WHERE startsWith(toString(order_id), {{prefix:String}}) OR startsWith(toString(signal_id), {{prefix:String}}) LIMIT 4"
)
T = TypeVar("T")


def table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def history_table(events: list[OrderEvent]) -> str:
    return table(
        ["seq", "at", "event", "status", "filled", "actor", "detail"],
        [
            (e.seq, e.at.strftime("%H:%M:%S.%f")[:-3], e.kind.value, e.status.value, f"{e.order.filled_quantity}/{e.order.quantity}", e.actor_address, e.detail)
            for e in events
        ],
    )


def positions_table(positions: list[Position]) -> str:
    return table(
        ["ticket", "symbol", "side", "status", "quantity", "entry", "exit", "realized", "unrealized", "exit_reason"],
        [
            (p.ticket, p.symbol, p.side.value, p.position_status.value, p.quantity, p.entry_price, p.exit_price,
             round(p.realized_pnl, 2), round(p.unrealized_pnl, 2), p.exit_reason.value if p.exit_reason else "")
            for p in positions
        ],
    )  # fmt: skip


class OrderTrace(msgspec.Struct, frozen=True, kw_only=True):
    """One order as ``show`` tells it (``--json``: as it is)."""

    order_id: uuid.UUID
    signal_id: uuid.UUID
    actor_address: str
    # Whether an actor holds it (else it rests at the broker, or it is finished), and answered.
    held: bool
    alive: bool
    pid: int | None
    # The order as its actor holds it now.
    live: Order | None
    where: str
    history: list[OrderEvent]


def trace_text(trace: OrderTrace) -> str:
    lines = [f"order     {trace.order_id}", f"signal    {trace.signal_id}"]
    if trace.held:
        lines.append(f"actor     {trace.actor_address}  alive: {f'yes, pid {trace.pid}' if trace.alive else 'no answer'}")
        if (o := trace.live) is not None:
            lines.append(f"live      {o.status.value}, {o.filled_quantity}/{o.quantity} filled, version {o.version} (asked of the actor)")
    else:
        lines.append(f"actor     {trace.actor_address}  alive: no ({trace.where})")
    lines += ["history:", history_table(trace.history)]
    return "\n".join(lines)


class Client:
    """A handle on the running service's actor system (it never shuts that system down).
    Whatever it cannot do raises Refused, with the reason."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        joined = join(settings)
        if joined is None:
            port = settings.admin_port
            if admin_port_open(port):
                raise Refused(f"what is on admin port {port} does not answer as a running execution-service (starting or stopping?)")
            raise Refused(f"no execution-service is running on admin port {port}")
        self.actor_system, root, peers = joined
        # An instance that shares the work: its coordinator, and the tree of one partition it
        # serves at a time (use), which the commands then talk to as to a single instance's.
        self.coordinator = root if settings.partitions else None
        self.supervisor, self.peers, self.partition = (root, peers, None) if self.coordinator is None else (None, Peers(), None)
        if self.coordinator is not None and (served := self.served()):
            self.use(served[0])

    def served(self) -> list[int]:
        """The partitions this instance serves now (those whose tree is up)."""
        found = [self.ask(self.coordinator, FindTree(p), TreeFound) for p in range(self.settings.partitions)]
        return [tree.partition for tree in found if tree.supervisor is not None]

    def use(self, partition: int) -> None:
        """Talk to the tree of this partition from now on."""
        found = self.ask(self.coordinator, FindTree(partition), TreeFound)
        if found.supervisor is None:
            holder = f"instance {found.holder} serves it" if found.holder else "no instance serves it right now"
            raise Refused(f"partition {partition} is not served by this instance ({self.settings.instance}): {holder}")
        self.supervisor, self.partition = found.supervisor, partition
        self.peers = self.ask(found.supervisor, GetPeers(), Peers)

    def each_tree(self) -> Iterator[int | None]:
        """Every tree of this instance in turn (None: a single instance's one tree)."""
        if self.coordinator is None:
            yield None
            return
        for partition in self.served():
            self.use(partition)
            yield partition

    def use_order(self, order_id: uuid.UUID) -> None:
        """Talk to the tree of the order's partition (the one its symbol maps to)."""
        if self.coordinator is None:
            return
        result = self.ask(self.tree().recorder, Query(SYMBOL_SQL.format(db=self.settings.clickhouse_database), {"id": order_id}), QueryResult)
        if result.error or not result.rows:
            raise Refused(f"order {order_id} is not recorded yet: which partition it belongs to is not known")
        self.use(partition_of(result.rows[0][0], self.settings.partitions))

    def tree(self) -> Peers:
        """The roles of the tree in use; Refused when this instance serves no partition."""
        if self.supervisor is None:
            raise Refused(f"this instance ({self.settings.instance}) serves no partition right now")
        return self.peers

    def ask(self, target: Any, message: Any, kind: type[T]) -> T:
        answer = self.actor_system.ask(target, message, ASK_TIMEOUT_S)
        if not isinstance(answer, kind):
            raise Refused(f"the service did not answer {type(message).__name__} within {ASK_TIMEOUT_S:.0f}s")
        return answer

    def resolve(self, key: str) -> uuid.UUID:
        """The order_id of the one order whose order_id or signal_id is or starts with ``key``
        (a full id the history does not have yet is passed on as it is: the supervisor may
        hold its order before it is recorded)."""
        prefix = key.strip().lower()
        if not ID_PREFIX.fullmatch(prefix):
            raise Refused(f"{key!r} is not an order_id or signal_id, nor the start of one")
        sql = RESOLVE_SQL.format(db=self.settings.clickhouse_database)
        result = self.ask(self.tree().recorder, Query(sql, {"prefix": prefix}), QueryResult)
        if result.error:
            raise Refused(f"could not look {key} up: {one_line(result.error)}")
        matches = sorted(row[0] for row in result.rows)
        if len(matches) == 1:
            return uuid.UUID(matches[0])
        if matches:
            raise Refused(f"{key} is ambiguous: it starts the ids of several orders ({', '.join(matches[:3])}, ...); give more of it")
        with contextlib.suppress(ValueError):
            return uuid.UUID(prefix)
        raise Refused(f"no order_id or signal_id starts with {key}")

    def processes(self) -> list[Pong]:
        """Every actor: of the one tree, or the coordinator and each tree of this instance."""
        roots = [] if self.coordinator is None else [self.coordinator]
        for _ in self.each_tree():
            directory = self.ask(self.supervisor, GetDirectory(), Directory)
            roots += [self.supervisor, *(getattr(directory.peers, name) for name in directory.peers.__struct_fields__[1:]), *directory.order_actors]
        pongs = [self.actor_system.ask(address, Ping(), ASK_TIMEOUT_S) for address in roots if address is not None]
        return [pong for pong in pongs if isinstance(pong, Pong)]

    def trace(self, key: uuid.UUID) -> OrderTrace:
        entry = self.ask(self.supervisor, ShowOrder(key), OrderDirectoryEntry)
        history = self.ask(self.peers.recorder, GetHistory(entry.order_id or key), History)
        known = entry.order or (history.events[-1].order if history.events else None)
        if known is None:
            raise Refused(f"no order known for {key}")
        answer = self.actor_system.ask(entry.actor, GetState(known.order_id), ASK_TIMEOUT_S) if entry.active else None
        state = answer if isinstance(answer, OrderState) else None
        if entry.active:
            where = "held by its actor"
        else:
            where = "resting at the broker, no actor holds it" if entry.order is not None else "finished, no actor holds it"
        return OrderTrace(
            order_id=known.order_id,
            signal_id=known.signal_id,
            actor_address=entry.actor_address or known.actor_address,
            held=entry.active,
            alive=state is not None,
            pid=state.pid if state else None,
            live=state.order if state else None,
            where=where,
            history=history.events,
        )

    def cancel(self, key: uuid.UUID, reason: str, wait_s: float) -> str:
        """Cancel the order and follow it until it ends: Refused unless it ended cancelled."""
        answer = self.ask(self.supervisor, CancelRequest(key, reason), CancelAnswer)
        if not answer.accepted:
            raise Refused(f"cancel refused: {answer.reason}")
        order_id = answer.order_id
        print(f"cancel of order {order_id} accepted: {answer.reason}; following it...", flush=True)
        deadline = time.monotonic() + wait_s
        while (status := self.status(order_id)) not in TERMINAL and time.monotonic() < deadline:
            time.sleep(FOLLOW_INTERVAL_S)
        if status is OrderStatus.CANCELLED:
            return f"order {order_id} cancelled"
        if status in TERMINAL:
            raise Refused(f"order {order_id} ended {status.value}, not cancelled")
        raise Refused(f"order {order_id} is still {status.value if status else 'unrecorded'} {wait_s:.0f}s after the cancel was accepted")

    def modify(self, key: uuid.UUID, change: OrderChange, wait_s: float) -> str:
        """Send the change and wait for the broker's answer: Refused unless it took it."""
        answer = self.ask(self.supervisor, ModifyCommand(key, change), ModifyAnswer)
        if not answer.accepted:
            raise Refused(f"modify refused: {answer.reason}")
        order_id = answer.order_id
        print(f"modify of order {order_id} accepted: {answer.reason}; waiting for the broker...", flush=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            events = self.ask(self.peers.recorder, GetHistory(order_id), History).events
            answers = (e for e in events if e.kind in (EventKind.MODIFIED, EventKind.MODIFY_REFUSED))
            outcome = next((e for e in answers if e.change is not None and e.change.request_id == change.request_id), None)
            if outcome is not None and outcome.kind is EventKind.MODIFIED:
                return f"order {order_id} modified ({outcome.detail})"
            if outcome is not None:
                raise Refused(f"modify of order {order_id} refused: {outcome.detail}")
            if events and (status := events[-1].status) in TERMINAL and status is not OrderStatus.FILLED:
                raise Refused(f"order {order_id} ended {status.value} before the modify was answered")
            time.sleep(FOLLOW_INTERVAL_S)
        raise Refused(f"no answer to the modify of order {order_id} within {wait_s:.0f}s")

    def status(self, order_id: uuid.UUID) -> OrderStatus | None:
        """The order's latest recorded status (None before anything of it is recorded)."""
        history = self.ask(self.peers.recorder, GetHistory(order_id), History)
        return max(history.events, key=lambda e: e.seq).status if history.events else None


def one_line(text: str) -> str:
    return text.strip().partition("\n")[0]


def since(text: str) -> datetime:
    from service.report import parse_since  # here: matplotlib is slow to import for the other commands

    try:
        return parse_since(text)
    except ValueError as invalid:
        raise argparse.ArgumentTypeError(str(invalid)) from None


def iso_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError as invalid:
        raise argparse.ArgumentTypeError(str(invalid)) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def parameter(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name, value


def main(argv: list[str] | None = None) -> None:
    try:
        command(argv)
    except Refused as refusal:
        sys.exit(str(refusal))


def command(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="execution-service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run")
    demo = commands.add_parser("demo")
    demo.add_argument("--keep-running", action="store_true", help="leave the service and the simulator running")
    demo.add_argument("--keep-state", action="store_true", help="start from the last demo's orders and positions")
    id_help = "an order_id or signal_id, or the start of either"
    json_help = "print machine-readable JSON"
    show = commands.add_parser("show")
    show.add_argument("id", help=id_help)
    show.add_argument("--json", action="store_true", help=json_help)
    cancel = commands.add_parser("cancel")
    cancel.add_argument("id", help=id_help)
    cancel.add_argument("--reason", default="operator")
    cancel.add_argument("--wait", type=float, default=CANCEL_WAIT_S, metavar="SECONDS", help="how long to follow the order")
    modify = commands.add_parser("modify")
    modify.add_argument("id", help=id_help)
    modify.add_argument("--price", type=float, help="a limit's limit price, a stop's or stop-limit's stop price")
    modify.add_argument("--stoplimit", type=float, help="a stop-limit's limit price")
    modify.add_argument("--sl", type=float, help="stop-loss (0 removes it)")
    modify.add_argument("--tp", type=float, help="take-profit (0 removes it)")
    modify.add_argument("--expires", type=iso_time, metavar="ISO-TIME", help="expiry (the order becomes GTD); UTC unless it says")
    modify.add_argument("--wait", type=float, default=CANCEL_WAIT_S, metavar="SECONDS", help="how long to wait for the broker")
    commands.add_parser("positions").add_argument("--json", action="store_true", help=json_help)
    commands.add_parser("ps").add_argument("--json", action="store_true", help=json_help)
    sql = commands.add_parser("sql")
    sql.add_argument("query")
    sql.add_argument("--param", type=parameter, action="append", default=[], metavar="NAME=VALUE")
    sql.add_argument("--json", action="store_true", help=json_help)
    halt = commands.add_parser("halt")
    halt.add_argument("--cancel-resting", action="store_true", help="also cancel every working order at the broker")
    halt.add_argument("--flatten", action="store_true", help="also close every open position at market")
    halt.add_argument("--reason", default="operator")
    halt.add_argument("--wait", type=float, default=CANCEL_WAIT_S, metavar="SECONDS", help="how long to follow the cancels and closes")
    commands.add_parser("resume")
    commands.add_parser("status").add_argument("--json", action="store_true", help=json_help)
    report = commands.add_parser("report")
    report.add_argument("--since", type=since, default=REPORT_SINCE, metavar="DURATION|ISO-TIME", help=f"24h, 30m, 7d or an ISO time (default: {REPORT_SINCE})")
    report.add_argument("--out", metavar="DIR", help="where report.html and its plots go (default run_dir/report)")
    report.add_argument("--json", action="store_true", help="print the figures as JSON")
    commands.add_parser("migrate")
    args = parser.parse_args(argv)
    if args.command == "modify" and (args.price, args.stoplimit, args.sl, args.tp, args.expires) == (None,) * 5:
        parser.error("modify: nothing to change (give --price, --stoplimit, --sl, --tp or --expires)")
    settings = load_settings()

    if args.command == "run":
        run(settings)
    elif args.command == "demo":
        from service.demo import run_demo

        run_demo(settings, keep_running=args.keep_running, keep_state=args.keep_state)
    elif args.command == "migrate":
        from service.store import connect, ensure_schema, migrate

        clickhouse = connect(settings.dsn, settings.clickhouse_database, settings.clickhouse_auth)
        applied = migrate(clickhouse, settings.clickhouse_database)
        ensure_schema(clickhouse, settings.clickhouse_database)
        print(f"applied: {', '.join(applied) or 'nothing, the schema is current'}")
    else:
        from service import operate

        client = Client(settings)
        if args.command in ("show", "cancel", "modify"):
            order_id = client.resolve(args.id)
            client.use_order(order_id)
        if args.command == "show":
            trace = client.trace(order_id)
            print(operate.to_json(trace) if args.json else trace_text(trace))
        elif args.command == "cancel":
            print(client.cancel(order_id, args.reason, args.wait))
        elif args.command == "modify":
            change = OrderChange(request_id=uuid.uuid4(), price=args.price, stoplimit=args.stoplimit, sl=args.sl, tp=args.tp, expiration=args.expires)
            print(client.modify(order_id, change, args.wait))
        elif args.command == "positions":
            positions = [p for _ in client.each_tree() for p in client.ask(client.tree().positions, GetPositions(), PositionsSnapshot).positions]
            print(operate.to_json(positions) if args.json else positions_table(positions))
        elif args.command == "ps":
            pongs = client.processes()
            print(operate.to_json(pongs) if args.json else table(["role", "pid", "address", "doing"], [(p.role, p.pid, p.address, p.doing) for p in pongs]))
        elif args.command == "sql":
            result = client.ask(client.tree().recorder, Query(args.query, dict(args.param)), QueryResult)
            if result.error:
                raise Refused(one_line(result.error))
            print(operate.to_json({"columns": result.columns, "rows": result.rows}) if args.json else table(result.columns, result.rows))
        elif args.command == "halt":
            print(operate.halt(client, args.reason, args.cancel_resting, args.flatten, args.wait))
        elif args.command == "resume":
            print(operate.resume(client))
        elif args.command == "status":
            health = operate.status(client)
            print(operate.to_json(health) if args.json else operate.status_text(health), flush=True)
            if not health.healthy:
                raise Refused(f"unhealthy: {'; '.join(health.problems)}")
        elif args.command == "report":
            from service import report as quality

            recorder = client.tree().recorder
            built = quality.build(lambda query: client.ask(recorder, query, QueryResult), args.since)
            path = quality.write(built, Path(args.out or Path(settings.run_dir) / "report"))
            print(quality.to_json(built) if args.json else f"{quality.text(built)}\n\nreport: {path}")


if __name__ == "__main__":
    main()
