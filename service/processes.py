"""Processes as Linux shows them in /proc: who is alive, which session, since when.

The Thespian admin daemonises into a session of its own and forks every actor inside it, so
a session id names one actor system's processes. A pid alone can be reused; a pid with its
start time cannot.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name, the state first (OSError if
    there is no such process)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def started_at(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if there is no such process."""
    with contextlib.suppress(OSError):
        fields = _stat(pid)
        if fields[0] != "Z":
            return int(fields[19])
    return None


def parent_of(pid: int) -> int:
    """The pid of a process's parent (OSError if there is no such process)."""
    return int(_stat(pid)[1])


def own_start() -> int:
    """When this process started (clock ticks since boot)."""
    return int(_stat("self")[19])


def _running(pid: int, state: str) -> bool:
    """Not exited. A zombie state is not enough to tell: while a process exits, its main
    thread may show Z with other threads still running and its files (and locks) still open."""
    if state != "Z":
        return True
    return any(_stat(f"{pid}/task/{task.name}")[0] != "Z" for task in Path(f"/proc/{pid}/task").iterdir())


def pids() -> list[int]:
    """Every process there is. (Not ``Path("/proc").glob("[0-9]*/stat")``: that stats each
    match, and one that exits meanwhile raises ProcessLookupError out of the glob itself.)"""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def session_members(session: int) -> list[int]:
    """Every process of a session that is still running."""
    members = []
    for pid in pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat(pid)
            if int(fields[3]) == session and _running(pid, fields[0]):
                members.append(pid)
    return members


# Rounds of SIGKILL for a session, 50 ms apart: a process that forks while it is being killed
# (the admin replacing an actor) adds a member after the first round's list was taken.
KILL_ROUNDS = 20


def kill_session(session: int) -> None:
    """SIGKILL to every process of a session, round after round until none is left; the
    caller last, if it is one of them."""
    for _ in range(KILL_ROUNDS):
        others = [pid for pid in session_members(session) if pid != os.getpid()]
        if not others:
            break
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    if os.getpid() in session_members(session):
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(signum: int) -> None:
    """Have the kernel send this process ``signum`` when its parent dies (Linux only)."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signum)


class Members:
    """The processes of one group (a partition's actor tree), each registered by itself in a
    folder of its own as ``<pid>-<start time>``, so that the group can be killed at once
    whatever its mailboxes hold: an actor exits only once it reaches its exit request."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def join(self) -> None:
        """The calling process joins."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{os.getpid()}-{own_start()}").touch()

    def kill(self) -> int:
        """SIGKILL every member still running (a pid reused since is left alone); how many."""
        killed = 0
        for entry in self.folder.glob("*-*") if self.folder.exists() else []:
            pid, _, start = entry.name.partition("-")
            if pid.isdigit() and start.isdigit() and started_at(int(pid)) == int(start) and int(pid) != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
            entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()
        return killed
