"""Reading /proc while processes exit: a SIGKILLed tree of ~75 processes is still exiting when
the next start lists the old session, and a half-exited process answers ESRCH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service import processes


def test_session_members_skips_a_process_that_exits_while_it_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dying = f"/proc/{child.pid}/stat"
        real_stat, real_read = os.stat, Path.read_text

        def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if str(path) == dying:  # what the kernel answered in the benchmark's restart
                raise ProcessLookupError(3, "No such process", dying)
            return real_stat(path, *args, **kwargs)

        def read_text(path: Path, *args: Any, **kwargs: Any) -> str:
            if str(path) == dying:
                raise ProcessLookupError(3, "No such process", dying)
            return real_read(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(Path, "read_text", read_text)
        members = processes.session_members(os.getsid(0))
        assert os.getpid() in members and child.pid not in members
    finally:
        child.kill()
        child.wait()


def test_pids_lists_this_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert {os.getpid(), child.pid} <= set(processes.pids())
    finally:
        child.kill()
        child.wait()
