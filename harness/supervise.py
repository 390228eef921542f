"""Child processes and the signals that stop them.

`harness compare` runs each arm as a child (`harness run --run-dir DIR`), and `harness run` runs a
torchrun job as one. Each child gets a session of its own, so that a signal reaches it one way only:
SIGINT (Ctrl-C) and SIGTERM (docker stop, timeout, a cancelled CI job) to the parent are forwarded to
the child's process group, the parent waits for it to record its stop, then stops too. A child that
dies of a signal nobody sent through the parent (the out-of-memory killer's SIGKILL) is the parent's
to record. The process that trains turns the first SIGINT or SIGTERM into `Interrupted`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterator

from harness import Interrupted

SUPERVISOR_ENV = "HARNESS_SUPERVISOR_PID"  # the parent's PID, in the environment of a child it supervises
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only it may set signal handlers


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGINT raise Interrupted, once: a second signal, while the stop is recorded, is ignored.

    Yields the list the signal goes into, so that the caller can record the stop even when the code the
    signal interrupted turned Interrupted into an error of its own (torch does, inside its callbacks).
    A child of a supervisor also asks the kernel for SIGTERM when the supervisor dies (even by SIGKILL),
    so that it never trains on alone into a folder nobody runs.
    """
    stopping: list[int] = []
    if not in_main_thread():
        yield stopping
        return

    def handler(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        die_with_supervisor()
        yield stopping
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


def die_with_supervisor() -> None:
    """Under a supervisor: SIGTERM from the kernel when it dies (Linux's PR_SET_PDEATHSIG)."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):  # it died before the request was made
        raise Interrupted(signal.SIGTERM)


class Supervisor:
    """Runs children one at a time, each in a session of its own, forwarding SIGINT and SIGTERM to it."""

    GRACE_S = 60  # after a forwarded signal, how long a child gets to record its stop before SIGKILL

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.stopped_by: int | None = None  # the signal this process received, once one did
        self.stop_time = 0.0

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator["Supervisor"]:
        if not in_main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, action in previous.items():
                signal.signal(signum, action)

    def _on_signal(self, signum, frame) -> None:
        if self.process is None or self.process.poll() is not None:
            raise Interrupted(signum)  # no child running: stop this process now
        if self.stopped_by is None:
            self.stopped_by, self.stop_time = signum, time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def run(self, command: list[str], log: Path, echo: bool = True,
            child_watches: bool = True) -> tuple[int, str | None]:
        """Run `command` to its end: (exit status, negative for a signal; the last line it wrote to stderr).

        Its stderr goes to `log` (appended), and with `echo` to this process's stderr too; its stdout
        stays on a terminal (live progress bars) or, elsewhere, goes to both like stderr. With
        `child_watches`, the child is a harness process that stops when this one dies (a torchrun
        launcher is not, and its ranks' parent is torchrun).
        """
        env = {key: value for key, value in os.environ.items() if key != SUPERVISOR_ENV}
        if child_watches:
            env[SUPERVISOR_ENV] = str(os.getpid())
        interactive = sys.stdout.isatty() or not echo
        with open(log, "ab") as log_file:
            log_file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log_file.flush()
            sys.stdout.flush()  # this process's lines before the child's
            self.process = subprocess.Popen(command, stdout=None if interactive else subprocess.PIPE,
                                            stderr=subprocess.PIPE, start_new_session=True, env=env)
            stderr_tail = bytearray()
            copies = [_copy(self.process.stderr, sys.stderr if echo else None, log_file, stderr_tail)]
            if not interactive:
                copies.append(_copy(self.process.stdout, sys.stdout, log_file))
            code = self._wait()
            for thread in copies:
                thread.join()
        self.process = None
        lines = [line.strip() for line in stderr_tail.decode(errors="replace").splitlines() if line.strip()]
        return code, (lines[-1] if lines else None)

    def _wait(self) -> int:
        while True:
            try:
                return self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if self.stopped_by and time.monotonic() - self.stop_time > self.GRACE_S:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signal.SIGKILL)


def _copy(source: IO[bytes], terminal, log: IO[bytes], tail: bytearray | None = None) -> threading.Thread:
    """A thread that copies a child's output to this process's own stream (if any) and to its log."""
    target = getattr(terminal, "buffer", None)

    def pump():
        for chunk in iter(lambda: source.read1(65536), b""):
            if target is not None:
                target.write(chunk)
                target.flush()
            elif terminal is not None:
                terminal.write(chunk.decode(errors="replace"))
            log.write(chunk)
            log.flush()
            if tail is not None:
                tail.extend(chunk)
                del tail[:-4096]
        source.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def death_of(code: int) -> str:
    """'signal 9: likely the out-of-memory killer' for an exit status of -9; the signal's name otherwise."""
    signum = -code
    why = "likely the out-of-memory killer" if signum == signal.SIGKILL else signal.Signals(signum).name
    return f"signal {signum}: {why}"
