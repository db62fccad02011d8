"""The ``execution-service`` command.

run        run the service until SIGTERM/SIGINT (then drain and stop)
demo       paper trading: the simulated connector, the service, a handful of signals, a report
show ID    trace one order (order_id or signal_id): its actor, alive or not, live state, history
cancel ID  cancel an open order
positions  positions as the position keeper holds them
ps         every actor of the running service: role, process id, address, what it holds
sql QUERY  a read-only query, answered by the running service (chdb has one owner)
migrate    apply the ClickHouse migrations (the service also does this at start)
"""

from __future__ import annotations

import argparse
import socket
import sys
import uuid
from typing import Any

from messages.actor import (
    CancelOrder,
    Directory,
    GetDirectory,
    GetHistory,
    GetPeers,
    GetPositions,
    GetState,
    History,
    OrderDirectoryEntry,
    OrderState,
    Peers,
    Ping,
    Pong,
    PositionsSnapshot,
    Query,
    QueryResult,
    ShowOrder,
)
from messages.order import OrderEvent
from messages.position import Position
from service.config import Settings, load_settings

ASK_TIMEOUT_S = 10.0


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


class Client:
    """A handle on the running service's actor system (it never shuts that system down)."""

    def __init__(self, settings: Settings) -> None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", settings.admin_port)) != 0:
                raise SystemExit(f"no execution-service is running on admin port {settings.admin_port}")
        from system import connect

        self.actor_system, self.supervisor = connect(settings)
        self.peers: Peers = self.ask(self.supervisor, GetPeers())

    def ask(self, target: Any, message: Any) -> Any:
        return self.actor_system.ask(target, message, ASK_TIMEOUT_S)

    def processes(self) -> str:
        directory: Directory = self.ask(self.supervisor, GetDirectory())
        roles = [self.supervisor, *(getattr(directory.peers, name) for name in directory.peers.__struct_fields__[1:])]
        pongs = [self.ask(address, Ping()) for address in [*roles, *directory.order_actors] if address is not None]
        return table(["role", "pid", "address", "doing"], [(p.role, p.pid, p.address, p.doing) for p in pongs if isinstance(p, Pong)])

    def trace(self, key: uuid.UUID) -> str:
        entry: OrderDirectoryEntry = self.ask(self.supervisor, ShowOrder(key))
        history: History = self.ask(self.peers.recorder, GetHistory(entry.order_id))
        known = entry.order or (history.events[-1].order if history.events else None)
        if known is None:
            return f"no order known for {key}"
        lines = [f"order     {known.order_id}", f"signal    {known.signal_id}"]
        if entry.active:
            state = self.ask(entry.actor, GetState(entry.order_id))
            alive = isinstance(state, OrderState)
            lines.append(f"actor     {entry.actor_address}  alive: {'yes, pid ' + str(state.pid) if alive else 'no answer'}")
            if alive and state.order is not None:
                o = state.order
                lines.append(f"live      {o.status.value}, {o.filled_quantity}/{o.quantity} filled, version {o.version} (asked of the actor)")
        else:
            where = "resting at the broker, no actor holds it" if entry.order is not None else "finished, no actor holds it"
            address = entry.actor_address or known.actor_address
            lines.append(f"actor     {address}  alive: no ({where})")
        lines += ["history:", history_table(history.events)]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="execution-service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run")
    demo = commands.add_parser("demo")
    demo.add_argument("--keep-running", action="store_true", help="leave the service and the simulator running")
    commands.add_parser("show").add_argument("id", type=uuid.UUID)
    cancel = commands.add_parser("cancel")
    cancel.add_argument("id", type=uuid.UUID)
    cancel.add_argument("--reason", default="operator")
    commands.add_parser("positions")
    commands.add_parser("ps")
    commands.add_parser("sql").add_argument("query")
    commands.add_parser("migrate")
    args = parser.parse_args(argv)
    settings = load_settings()

    if args.command == "run":
        from system import run

        run(settings)
    elif args.command == "demo":
        from service.demo import run_demo

        run_demo(settings, keep_running=args.keep_running)
    elif args.command == "migrate":
        from service.store import connect, migrate

        applied = migrate(connect(settings.dsn, settings.clickhouse_database), settings.clickhouse_database)
        print(f"applied: {', '.join(applied) or 'nothing, the schema is current'}")
    else:
        client = Client(settings)
        if args.command == "show":
            print(client.trace(args.id))
        elif args.command == "cancel":
            client.actor_system.tell(client.supervisor, CancelOrder(args.id, args.reason))
            client.ask(client.supervisor, Ping())  # the tell has left this process once this is answered
            print(f"cancel of {args.id} sent; `execution-service show {args.id}` follows it")
        elif args.command == "positions":
            snapshot: PositionsSnapshot = client.ask(client.peers.positions, GetPositions())
            print(positions_table(snapshot.positions))
        elif args.command == "ps":
            print(client.processes())
        elif args.command == "sql":
            result: QueryResult = client.ask(client.peers.recorder, Query(args.query))
            if result.error:
                sys.exit(result.error)
            print(table(result.columns, result.rows))


if __name__ == "__main__":
    main()
