"""A user's reward function, contained: a time limit per call, and no way to end the process.

A reward function is anyone's code. One that never returns must not hang the up-front check or an arm
forever, and one that calls `sys.exit(0)` (or raises KeyboardInterrupt) must not end `harness compare`
with status 0 having trained nothing: both become the arm's recorded failure.

How the time limit works. A Python call cannot be killed from another thread, and a subprocess per call
costs a process start per completion (hundreds per step). Rewards are called in the main thread of an arm's
process (and of the command that checks them up front), so a watchdog thread, started once, sends the
main thread `LIMIT_SIGNAL` when a call runs past its deadline; the handler raises in the call, which also
interrupts a blocking sleep or read, and turns into RewardTimeout at its boundary. The cost is a lock and
a notify per call (microseconds), no thread or process per call. Not SIGALRM: math-verify, which reward
functions often call, arms and cancels `signal.alarm` for its own time limits. The watchdog repeats the
signal every second until the call ends, so a handler swapped in by the user's code for a moment, or an
`except Exception` around a loop, does not lose it. What no Python mechanism can stop is C code that never
returns to the interpreter (a pathological regex); the process's own limits cover that.

Off the main thread (an embedding program's worker), no signal can reach the call: it runs in a daemon
thread that is abandoned past the deadline; the arm fails and its process ends, so it does not linger.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

# Nothing in the harness, torch or torchrun's workers uses it; one from outside while no call runs goes to
# the handler that was there before (none by default: ignored, where it would have ended the process).
LIMIT_SIGNAL = signal.SIGUSR2


class RewardTimeout(Exception):
    """A reward function ran past its time limit."""


class RewardExit(Exception):
    """A reward function raised SystemExit or KeyboardInterrupt (not a real Ctrl-C)."""


class _PastDeadline(BaseException):
    """Raised in the call by the watchdog's signal: a BaseException, so that `except Exception` in the user's
    code does not swallow it."""


class _Watchdog:
    """One thread for the process: signals the main thread while a call is past its deadline (each second)."""

    def __init__(self):
        self.condition = threading.Condition()
        self.deadline: float | None = None
        self.thread: threading.Thread | None = None
        self.previous: Any = None

    def arm(self, seconds: float) -> None:
        with self.condition:
            if self.thread is None:
                # installed once and left: a signal that arrives just after a call ended finds it, and ignores it
                self.previous = signal.signal(LIMIT_SIGNAL, self._on_signal)
                self.thread = threading.Thread(target=self._watch, name="reward-watchdog", daemon=True)
                self.thread.start()
            self.deadline = time.monotonic() + seconds
            self.condition.notify()

    def disarm(self) -> None:
        with self.condition:
            self.deadline = None

    def _on_signal(self, signum, frame) -> None:
        deadline = self.deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise _PastDeadline
        if callable(self.previous):
            self.previous(signum, frame)

    def _watch(self) -> None:
        main = threading.main_thread().ident
        with self.condition:
            while True:
                if self.deadline is None:
                    self.condition.wait()
                    continue
                left = self.deadline - time.monotonic()
                if left > 0:
                    self.condition.wait(left)
                    continue
                signal.pthread_kill(main, LIMIT_SIGNAL)
                self.condition.wait(1.0)  # again each second until disarmed


_watchdog = _Watchdog()


def call_with_limit(function: Callable[[], Any], seconds: float) -> Any:
    """`function()` with at most `seconds` of wall time: RewardTimeout past it, RewardExit for a SystemExit
    or KeyboardInterrupt it raised. A real Ctrl-C during the call is still a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        return _in_a_thread(function, seconds)
    real_interrupt: list[int] = []

    def on_interrupt(signum, frame):  # tells the user's Ctrl-C from the user's code raising KeyboardInterrupt
        real_interrupt.append(signum)
        raise KeyboardInterrupt

    # the harness's own handler (harness.train.supervise) raises Interrupted, which passes through here
    watches_int = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if watches_int:
        signal.signal(signal.SIGINT, on_interrupt)
    _watchdog.arm(seconds)
    try:
        return function()
    except _PastDeadline:
        raise RewardTimeout(f"did not return within {seconds:g} s (task.reward_timeout)") from None
    except (SystemExit, KeyboardInterrupt) as stop:
        if real_interrupt:
            raise
        raise RewardExit(_exit_words(stop)) from None
    finally:
        _watchdog.disarm()
        if watches_int:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _exit_words(stop: BaseException) -> str:
    if isinstance(stop, SystemExit):
        return f"called sys.exit({stop.code!r})" if stop.code is not None else "called sys.exit()"
    return "raised KeyboardInterrupt"


def _in_a_thread(function: Callable[[], Any], seconds: float) -> Any:
    outcome: dict[str, Any] = {}

    def call():
        try:
            outcome["value"] = function()
        except BaseException as err:  # noqa: BLE001 (carried back to the caller's thread)
            outcome["error"] = err

    worker = threading.Thread(target=call, name="reward-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RewardTimeout(f"did not return within {seconds:g} s (task.reward_timeout)")
    error = outcome.get("error")
    if isinstance(error, (SystemExit, KeyboardInterrupt)):
        raise RewardExit(_exit_words(error))
    if error is not None:
        raise error
    return outcome["value"]
