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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from harness import Interrupted
from harness.results.safe_io import open_append

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
    """Runs children, each in a session of its own, forwarding SIGINT and SIGTERM to them: one at a time
    (`run`), or side by side on disjoint GPU sets (`run_side_by_side`)."""

    GRACE_S = 60  # after a forwarded signal, how long a child gets to record its stop before SIGKILL

    def __init__(self):
        self.running: list[subprocess.Popen] = []  # one child, or one per device set with run_side_by_side
        self.stopped_by: int | None = None  # the signal this process received, once one did
        self.stop_time = 0.0

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[Supervisor]:
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
        alive = [process for process in self.running if process.poll() is None]
        if not alive:
            raise Interrupted(signum)  # no child running: stop this process now
        if self.stopped_by is None:
            self.stopped_by, self.stop_time = signum, time.monotonic()
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    def _kill_after_grace(self) -> None:
        """SIGKILL to the children still alive a grace period after a forwarded signal."""
        if self.stopped_by and time.monotonic() - self.stop_time > self.GRACE_S:
            for process in self.running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def run(self, command: list[str], log: Path, echo: bool = True,
            child_watches: bool = True) -> tuple[int, str | None]:
        """Run `command` to its end: (exit status, negative for a signal; the last line it wrote to stderr).

        Its stderr goes to `log` (appended), and with `echo` to this process's stderr too; its stdout
        stays on a terminal (live progress bars) or, elsewhere, goes to both like stderr. With
        `child_watches`, the child is a harness process that stops when this one dies (a torchrun
        launcher is not, and its ranks' parent is torchrun).
        """
        child = _Child.start(command, log, child_env(child_watches), echo=echo, interactive=sys.stdout.isatty() or not echo)
        self.running = [child.process]
        while True:
            try:
                child.process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                self._kill_after_grace()
        self.running = []
        return child.finish()

    def run_side_by_side(self, jobs: list[tuple[str, list[str], Path]], device_sets: list[list[int]],
                         on_finish: Callable[[str, int, str | None], None]) -> None:
        """Run the jobs (key, command, log), at most one per device set at a time, each child seeing only
        its set's GPUs (CUDA_VISIBLE_DEVICES); `on_finish(key, exit status, last stderr line)` as each ends.

        Children's output goes to their logs only (interleaved progress bars would be unreadable): this
        process prints a line as each starts and ends. After a forwarded signal no further job starts.
        """
        waiting, free = list(jobs), [list(devices) for devices in device_sets]
        started: dict[int, tuple[str, _Child, list[int], float]] = {}
        while waiting or started:
            while waiting and free and not self.stopped_by:
                key, command, log = waiting.pop(0)
                devices = free.pop(0)
                env = {**child_env(True),
                       "CUDA_VISIBLE_DEVICES": visible_devices(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))}
                child = _Child.start(command, log, env, echo=False, interactive=False)
                started[child.process.pid] = (key, child, devices, time.monotonic())
                print(f"{key}: started on GPU {','.join(map(str, devices))} (log: {log})", flush=True)
            if self.stopped_by and not started:
                return
            self.running = [child.process for _, child, _, _ in started.values()]
            time.sleep(0.5)
            self._kill_after_grace()
            for pid, (key, child, devices, began) in list(started.items()):
                if child.process.poll() is None:
                    continue
                del started[pid]
                free.append(devices)
                code, last_line = child.finish()
                print(f"{key}: exited with status {code} after {time.monotonic() - began:,.0f} s", flush=True)
                on_finish(key, code, last_line)
        self.running = []


def device_sets(device_count: int, per_arm: int) -> list[list[int]]:
    """Disjoint sets of `per_arm` GPUs out of `device_count`; GPUs left over stay idle.

    >>> device_sets(8, 2)
    [[0, 1], [2, 3], [4, 5], [6, 7]]
    >>> device_sets(5, 2)
    [[0, 1], [2, 3]]
    """
    return [list(range(start, start + per_arm)) for start in range(0, device_count - per_arm + 1, per_arm)]


def visible_devices(devices: list[int], parent_visible: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a child given GPU indices as this process sees them (they index the
    parent's own CUDA_VISIBLE_DEVICES when one is set).

    >>> visible_devices([0, 1], None)
    '0,1'
    >>> visible_devices([0, 1], "4,5,6,7")
    '4,5'
    """
    names = [name.strip() for name in parent_visible.split(",")] if parent_visible else None
    return ",".join(names[d] if names else str(d) for d in devices)


def child_env(child_watches: bool) -> dict[str, str]:
    """This process's environment for a child; with `child_watches`, the child knows its supervisor."""
    env = {key: value for key, value in os.environ.items() if key != SUPERVISOR_ENV}
    if child_watches:
        env[SUPERVISOR_ENV] = str(os.getpid())
    return env


class _Child:
    """A child process in a session of its own, its stderr (and stdout off a terminal) copied to its log."""

    def __init__(self, process: subprocess.Popen, log_file, copies: list[threading.Thread], tail: bytearray):
        self.process, self.log_file, self.copies, self.tail = process, log_file, copies, tail

    @classmethod
    def start(cls, command: list[str], log: Path, env: dict[str, str], echo: bool, interactive: bool) -> _Child:
        log_file = open_append(log, binary=True)  # open while the child runs (finish() closes it); never a link
        log_file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log_file.flush()
        sys.stdout.flush()  # this process's lines before the child's
        process = subprocess.Popen(command, stdout=None if interactive else subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True, env=env)
        tail = bytearray()
        copies = [_copy(process.stderr, sys.stderr if echo else None, log_file, tail)]
        if not interactive:
            copies.append(_copy(process.stdout, sys.stdout if echo else None, log_file))
        return cls(process, log_file, copies, tail)

    def finish(self) -> tuple[int, str | None]:
        """(exit status, negative for a signal; the last line the child wrote to stderr), once it ended."""
        code = self.process.wait()
        for thread in self.copies:
            thread.join()
        self.log_file.close()
        lines = [line.strip() for line in self.tail.decode(errors="replace").splitlines() if line.strip()]
        return code, (lines[-1] if lines else None)


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
