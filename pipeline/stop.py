"""Stop requests: Ctrl-C (SIGINT) and SIGTERM (``ray job stop``, Kubernetes) at any moment.

A job that is running stops at its next poll: it admits nothing more, cancels
the chunks in flight, ends the stage actors and records what finished. Where
the driver is blocked instead (importing torch, loading the tokenizer, starting
Ray, waiting for a placement group) there is no poll to notice a flag, so the
signal raises :class:`StopRequested` into the blocked call; the job's cleanup
still runs on the way out. Either way the user sees one line, never a
traceback, and a second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Protocol

from pipeline.console import say

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """A stop signal arrived where nothing polls for it. A BaseException, like KeyboardInterrupt,
    so that ``except Exception`` on the way out does not swallow it."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class Stoppable(Protocol):
    def request_stop(self) -> bool:
        """Asks the job to stop; True when it will notice at its next poll (no need to interrupt)."""


class StopSignals:
    """Installs the SIGINT/SIGTERM handlers for one command; ``target`` is the running job, if any."""

    def __init__(self) -> None:
        self.target: Stoppable | None = None
        self.received = 0
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """(Re)installs the handlers: call again after anything that replaces them (``ray.init`` sets its own
        SIGTERM handler). Only the main thread can install signal handlers; elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def uninstall(self) -> None:
        """Puts back the handlers that were there before the first :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            raise StopRequested(name)  # a second signal: stop now, the first one already said so
        self.signal_name = name
        if self.target is None:
            say(f"bark-pipeline: {name}: stopped during start-up; nothing was narrated")
            raise StopRequested(name)
        say(f"bark-pipeline: {name}: stopping; finished items are kept and a rerun does the rest")
        if not self.target.request_stop():
            raise StopRequested(name)
