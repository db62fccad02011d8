"""Loggers for code that runs inside actor processes."""

from __future__ import annotations

import logging
from typing import Any


class Log:
    """A logger looked up at every call. Thespian replaces the logging manager in each actor
    process after it forks, so a logger fetched at import time (in the parent) would log to
    the parent's handlers, that is nowhere; looking it up late reaches Thespian's log file."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, level: str) -> Any:
        return getattr(logging.getLogger(self.name), level)
