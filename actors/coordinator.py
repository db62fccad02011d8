"""Coordinator: the root of an instance that shares the work with others (partitions >= 1).

It holds this instance's leases (service.leases) and runs one actor tree per partition it
holds: a Supervisor and its roles, the very tree a single instance runs, serving only that
partition's symbols (a Share). So taking a partition over is an ordinary start of its tree
(rebuilt from ClickHouse, reconciled with the broker), and losing one is stopping its tree:
- a partition taken gets a tree at once;
- a partition lost (its lease not renewed in time, or held under another revision) has its
  tree stopped at once; its readers (ingress, gateway) stop reading by themselves as soon as
  the lease's local validity passes (service.leases.Fence, renewed by the loop itself);
- a partition given up for balance is fenced off (nothing more is read), flushed, stopped,
  and only then its lease deleted, so the next owner starts from everything this one recorded;
- a drain (the launcher stopping) gives every partition up that way, for the others to take
  at once rather than after the TTL.
A tree whose supervisor dies unasked takes the whole instance down: the launcher restarts it,
which is the path of an instance that dies, and leaves no orphan of that tree reading.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgspec
from thespian.actors import (
    ActorExitRequest,
    ChildActorExited,
    DeadEnvelope,
    WakeupMessage,
)

from actors.loop import LoopActor
from actors.supervisor import Supervisor
from messages.actor import (
    Drain,
    Drained,
    FindTree,
    GetPeers,
    NotStarted,
    Peers,
    Release,
    Start,
    Started,
    TreeFound,
)
from messages.codec import ContractError, decode, encode
from messages.control import (
    INSTANCE_CONTROL_SUBJECT,
    CancelResting,
    CancelsSent,
    ControlAnswer,
    Flatten,
    Flattening,
    GetStatus,
    HaltTrading,
    InstanceControl,
    InstanceStatus,
    ResumeTrading,
    ServiceStatus,
)
from service.config import Settings
from service.leases import DuplicateInstance, Fence, Leases, plan, tree_members
from service.logs import Log
from service.partitions import Share
from service.processes import kill_session
from service.streams import StreamMismatch, connect_nats, ensure_streams

log = Log(__name__)

STATUS_WAIT = timedelta(seconds=2)
STATUS = "status"
RELEASE_TIMEOUT = timedelta(seconds=8)
FLUSHED = "flushed"
# How long a tree asked to exit has before what is left of it is killed.
EXIT_GRACE = timedelta(seconds=2)
STOPPED = "stopped"


class Joined(msgspec.Struct):
    """From the loop: this instance is announced (or may not run: ``refused``)."""

    refused: str | None = None


class Gained(msgspec.Struct):
    partition: int


class Lost(msgspec.Struct):
    partitions: list[int]


class Renewed(msgspec.Struct):
    """Who holds each partition, as the bucket said this round."""

    holders: dict[int, str]


class GiveUp(msgspec.Struct):
    partition: int


class Relayed(msgspec.Struct):
    """From the loop: another instance's operator halted or resumed trading."""

    control: InstanceControl


@dataclass
class Tree:
    """One partition's actor tree, from the taking of its lease."""

    share: Share
    supervisor: Any
    taken_at: float  # monotonic
    started_after_s: float | None = None
    handing_over: bool = False
    status: ServiceStatus | None = None
    # A relayed halt or resume that came while the tree was starting: sent once it has started.
    relayed: list[Any] = field(default_factory=list)


@dataclass
class StatusRound:
    # (who asked, their GetStatus's token): each is answered with its own.
    askers: list[tuple[Any, str]] = field(default_factory=list)
    waiting: set[int] = field(default_factory=set)


class Coordinator(LoopActor):
    def __init__(self) -> None:
        super().__init__()
        self.trees: dict[int, Tree] = {}
        # Trees asked to exit, killed after EXIT_GRACE.
        self.stopping: list[Tree] = []
        self.starter: Any = None
        self.joined = False
        self.drain_asker: Any = None
        self.status_round: StatusRound | None = None
        self.holders: dict[int, str] = {}
        # Partitions whose fence stays closed while they are handed over (the actor thread adds,
        # the loop reads: it renews every other held partition's fence).
        self.fenced_off: set[int] = set()
        # Set on the actor thread when the instance is stopping; the loop then takes nothing.
        self.leaving = threading.Event()

    def receiveMsg_Start(self, message: Start, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.me = self.settings.instance
        self.starter = sender
        # One handler of dead letters per actor system: each tree picks out its own.
        self.handleDeadLetters()
        self.start_loop()
        self.spawn(self._hold_leases())

    def receiveMsg_DeadEnvelope(self, message: DeadEnvelope, sender: Any) -> None:
        if isinstance(message.deadMessage, DeadEnvelope):
            return  # one forwarded to a tree that had died meanwhile
        for tree in self.trees.values():
            self.send(tree.supervisor, message)

    # --- on the loop ----------------------------------------------------------------------------

    async def _hold_leases(self) -> None:
        settings = self.settings
        self.nc, js = await connect_nats(settings, name=f"execution-service {self.me}")
        self.leases = Leases(js, f"{settings.stream_prefix}_LEASES", self.me, settings.partitions, settings.lease_ttl_s)
        for partition in range(settings.partitions):  # whatever an earlier run (or boot) left
            self._fence(partition).close()
        try:
            await ensure_streams(js, settings)  # refuses a stream partitioned another way
            await self.leases.join()
        except (StreamMismatch, DuplicateInstance) as refused:
            self.deliver(None, Joined(str(refused)))
            return
        await self.nc.subscribe(INSTANCE_CONTROL_SUBJECT, cb=self._on_control)
        self.deliver(None, Joined())
        # A round's wait first: instances started together see one another before taking.
        await asyncio.sleep(self.leases.interval_s)
        while True:
            began = time.monotonic()
            try:
                await self._round()
            except Exception as exc:  # NATS away: the leases stay valid until their fence
                log.warning("lease round failed: %s", exc)
            if (took := time.monotonic() - began) > self.leases.interval_s:
                log.warning("a lease round took %.1fs (renewals are due every %.1fs)", took, self.leases.interval_s)
            await asyncio.sleep(max(0.0, self.leases.interval_s - took))

    async def _round(self) -> None:
        lost = await self.leases.renew()
        for partition in lost:
            self._fence(partition).close()
        if lost:
            self.deliver(None, Lost(lost))
        for partition, lease in self.leases.held.items():
            if partition not in self.fenced_off:
                self._fence(partition).hold_until(lease.valid_until)
        live, holders = await self.leases.look()
        self.deliver(None, Renewed(holders))
        if self.leaving.is_set():
            return
        step = plan(self.me, self.settings.partitions, live, holders)
        for partition in step.take:
            if await self.leases.take(partition):
                log.info("took the lease of partition %d", partition)
                self.fenced_off.discard(partition)
                self._fence(partition).hold_until(self.leases.held[partition].valid_until)
                self.deliver(None, Gained(partition))
        for partition in step.release:
            log.info("balance: live %s, holders %s: giving partition %d up", sorted(live), holders, partition)
            self.deliver(None, GiveUp(partition))

    async def _on_control(self, msg: Any) -> None:
        try:
            control = decode(msg.data, InstanceControl)
        except ContractError as exc:
            log.error("unreadable instance control on %s: %s", msg.subject, exc)
            return
        if control.instance != self.me:
            self.deliver(None, Relayed(control))

    # --- on the actor thread: joining, and the trees --------------------------------------------

    def receiveMsg_Joined(self, message: Joined, sender: Any) -> None:
        if message.refused is not None:
            log.error("this instance may not run: %s", message.refused)
            self.send(self.starter, NotStarted(message.refused))
            return
        self.joined = True
        log.info("instance %s joined: %d partitions shared, leases of %.0fs", self.me, self.settings.partitions, self.settings.lease_ttl_s)
        self.send(self.starter, Started(Peers(supervisor=self.myAddress), 0))

    def receiveMsg_Gained(self, message: Gained, sender: Any) -> None:
        share = Share(message.partition, self.settings.partitions, time.monotonic_ns())
        supervisor = self.createActor(Supervisor)
        self.trees[message.partition] = Tree(share, supervisor, time.monotonic())
        self.send(supervisor, Start(self.settings, share))
        log.warning("serving %s: its orders are rebuilt from ClickHouse and reconciled with the broker", share)

    def receiveMsg_Started(self, message: Started, sender: Any) -> None:
        tree = self._tree_of(sender)
        if tree is not None:
            tree.started_after_s = time.monotonic() - tree.taken_at
            log.info("%s is served (%d open orders rebuilt, tree up %.2fs after the lease)", tree.share, message.open_orders, tree.started_after_s)
            relayed, tree.relayed = tree.relayed, []
            for command in relayed:
                self.send(tree.supervisor, command)

    def receiveMsg_Renewed(self, message: Renewed, sender: Any) -> None:
        self.holders = message.holders

    def _fence(self, partition: int) -> Fence:
        return Fence.of(self.settings.run_dir, Share(partition, self.settings.partitions))

    def receiveMsg_Lost(self, message: Lost, sender: Any) -> None:
        for partition in message.partitions:
            if (tree := self.trees.pop(partition, None)) is not None:
                log.error("%s lost its lease: its tree stops now", tree.share)
                self._stop(tree, give_up=False)

    def receiveMsg_GiveUp(self, message: GiveUp, sender: Any) -> None:
        """Hand a partition over once its tree is up (a starting one is asked again next round):
        fenced off, flushed (a tree that cannot flush in time is stopped all the same: what it
        held stays in its outbox here, and the next owner asks the broker), stopped, and only
        then its lease given back."""
        tree = self.trees.get(message.partition)
        if tree is None or tree.handing_over or (tree.started_after_s is None and not self.leaving.is_set()):
            return
        log.warning("handing %s over to another instance", tree.share)
        tree.handing_over = True
        self.fenced_off.add(message.partition)
        self._fence(message.partition).close()
        self.send(tree.supervisor, Release())
        self.wakeupAfter(RELEASE_TIMEOUT, payload=(FLUSHED, tree.share))

    def receiveMsg_Drained(self, message: Drained, sender: Any) -> None:
        tree = self._tree_of(sender)
        if tree is not None and tree.handing_over:
            self._handed_over(tree)

    def _handed_over(self, tree: Tree) -> None:
        del self.trees[tree.share.partition]
        self._stop(tree, give_up=True)

    def _stop(self, tree: Tree, give_up: bool) -> None:
        """Ask the tree to exit, and kill what is left of it shortly after: an actor exits only
        once it reaches the request, behind whatever its mailbox holds."""
        self.stopping.append(tree)
        self.send(tree.supervisor, ActorExitRequest())
        self.wakeupAfter(EXIT_GRACE, payload=(STOPPED, tree.share, give_up))

    def _stopped(self, share: Share, give_up: bool) -> None:
        self.stopping = [tree for tree in self.stopping if tree.share != share]
        if killed := tree_members(self.settings.run_dir, share).kill():
            log.warning("%s: %d processes of its tree killed (they had not exited)", share, killed)
        if give_up:
            self.spawn(self.leases.give_up(share.partition))
            log.warning("%s handed over: lease given back", share)
        if self.drain_asker is not None and not self.trees and not self.stopping:
            self._left()

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> None:
        tree = self._tree_of(message.childAddress)
        if tree is not None:  # not one being stopped: it died by itself
            log.error("the supervisor of %s died: restarting the instance (no orphan of its tree may read on)", tree.share)
            kill_session(os.getsid(0))

    def _tree_of(self, supervisor: Any) -> Tree | None:
        return next((tree for tree in self.trees.values() if tree.supervisor == supervisor), None)

    # --- a halt or a resume, for every instance -----------------------------------------------------

    def receiveMsg_InstanceControl(self, message: InstanceControl, sender: Any) -> None:
        """From an operator here (who tells this instance's trees): tell the other instances."""
        control = msgspec.structs.replace(message, instance=self.me)
        log.warning("telling the other instances: %s", "halt: " + control.reason if control.halt else "resume")
        self.spawn(self.nc.publish(INSTANCE_CONTROL_SUBJECT, encode(control)))

    def receiveMsg_Relayed(self, message: Relayed, sender: Any) -> None:
        control = message.control
        log.warning("instance %s: %s", control.instance, "halt: " + control.reason if control.halt else "resume")
        reason = f"{control.reason} (from instance {control.instance})"
        commands: list[Any] = [ResumeTrading()] if not control.halt else [
            HaltTrading(reason),  # (in force before what follows it)
            *([CancelResting(f"halt: {reason}")] if control.cancel_resting else []),
            *([Flatten()] if control.flatten else []),
        ]  # fmt: skip
        for tree in self.trees.values():
            if tree.started_after_s is None:  # its state is not loaded yet: after that
                tree.relayed = commands
                continue
            for command in commands:
                self.send(tree.supervisor, command)

    def receiveMsg_ControlAnswer(self, message: ControlAnswer, sender: Any) -> None:
        if message.error is not None:
            log.error("%s: the relayed control could not be recorded: %s", self._share_of(sender), message.error)

    def receiveMsg_CancelsSent(self, message: CancelsSent, sender: Any) -> None:
        log.warning("%s: cancelling %d working orders (a halt relayed)", self._share_of(sender), len(message.order_ids))

    def receiveMsg_Flattening(self, message: Flattening, sender: Any) -> None:
        share = self._share_of(sender)
        if message.error is not None:
            log.error("%s: flatten refused: %s", share, message.error)
            return
        log.warning("%s: closing %d open positions at market (a halt relayed)%s", share, len(message.order_ids),
                    f"; not closed: {'; '.join(message.not_closed)}" if message.not_closed else "")

    def _share_of(self, supervisor: Any) -> str:
        tree = self._tree_of(supervisor)
        return str(tree.share) if tree is not None else "a tree"

    # --- stopping -------------------------------------------------------------------------------

    def receiveMsg_Drain(self, message: Drain, sender: Any) -> None:
        """Give every partition up (fenced, flushed, stopped, lease deleted), then answer."""
        self.drain_asker = sender
        self.leaving.set()
        for partition in list(self.trees):
            self.receiveMsg_GiveUp(GiveUp(partition), self.myAddress)
        if not self.trees and not self.stopping:
            self._left()

    def _left(self) -> None:
        asker, self.drain_asker = self.drain_asker, None

        async def leave() -> None:
            if self.joined:
                await self.leases.leave()
            self.deliver(asker, Drained("instance"))

        self.spawn(leave())

    # --- status ---------------------------------------------------------------------------------

    def receiveMsg_GetPeers(self, message: GetPeers, sender: Any) -> None:
        """Peers name this coordinator once the instance has joined (what a client waits for)."""
        self.send(sender, Peers(supervisor=self.myAddress) if self.joined else Peers())

    def receiveMsg_FindTree(self, message: FindTree, sender: Any) -> None:
        tree = self.trees.get(message.partition)
        supervisor = tree.supervisor if tree is not None and tree.started_after_s is not None else None
        self.send(sender, TreeFound(message.partition, supervisor, self.holders.get(message.partition)))

    def receiveMsg_GetStatus(self, message: GetStatus, sender: Any) -> None:
        if self.status_round is None:
            self.status_round = StatusRound(waiting=set(self.trees))
            for tree in self.trees.values():
                self.send(tree.supervisor, GetStatus())
            self.wakeupAfter(STATUS_WAIT, payload=STATUS)
        self.status_round.askers.append((sender, message.asked))
        if not self.status_round.waiting:
            self._answer_status()

    def receiveMsg_ServiceStatus(self, message: ServiceStatus, sender: Any) -> None:
        partition = next((p for p, tree in self.trees.items() if tree.supervisor == sender), None)
        # (a late answer to the round before counts too: a status a moment old, from a busy tree)
        if partition is None or self.status_round is None:
            return
        self.trees[partition].status = message
        self.status_round.waiting.discard(partition)
        if not self.status_round.waiting:
            self._answer_status()

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == STATUS and self.status_round is not None:
            self._answer_status()  # with what has answered: a tree busy starting shows None
        elif isinstance(message.payload, tuple) and message.payload[0] == FLUSHED:
            tree = self.trees.get(message.payload[1].partition)
            if tree is not None and tree.share == message.payload[1]:
                log.error("%s did not flush within %s: stopped all the same", tree.share, RELEASE_TIMEOUT)
                self._handed_over(tree)
        elif isinstance(message.payload, tuple) and message.payload[0] == STOPPED:
            self._stopped(message.payload[1], message.payload[2])

    def _answer_status(self) -> None:
        if self.status_round is None:
            return
        askers, waiting, self.status_round = self.status_round.askers, self.status_round.waiting, None
        took_over = {}
        for partition, tree in self.trees.items():
            status = tree.status
            if partition not in waiting and tree.started_after_s is not None and status is not None and not status.reconciling_orders:
                took_over[partition] = tree.started_after_s + (status.reconciled_after_s or 0.0)
        answer = InstanceStatus(
            instance=self.me,
            partitions=self.settings.partitions,
            serving={p: None if p in waiting or tree.started_after_s is None else tree.status for p, tree in self.trees.items()},
            took_over_s=took_over,
        )
        for asker, asked in askers:
            self.send(asker, msgspec.structs.replace(answer, asked=asked))

    def doing(self) -> str:
        serving = ", ".join(str(p) for p in sorted(self.trees)) or "none"
        return f"instance {getattr(self, 'me', '?')}: serving partitions {serving}"
