"""Files the harness writes and reads: atomic writes, readers that name a damaged file, one writer per folder.

A result file is written beside its place and renamed over it once whole, so that a kill, a full disk
or a crash leaves the old file (or none), never a part of one. A folder being written is locked, so
that a second writer, and every reader that needs finished results, is told who is writing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any
from collections.abc import Iterator

import yaml

from harness import UserError
from harness.results.safe_io import check_inside, open_append, open_no_follow, writing_inside

TEMP_SUFFIX = ".tmp"  # what the atomic writers leave behind only when killed mid-write
LOCK_NAME = ".lock"


# ---------------------------------------------------------------- atomic writes

def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode open() gives a new file under this process's umask (mkstemp alone gives 0600)."""
    return 0o666 & ~current_umask()


def checkpoint_file(run_dir: Path | str) -> Path:
    """Where an arm's resume state lives (written at every run.checkpoint_every steps)."""
    return Path(run_dir) / "checkpoint" / "state.pt"


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """A handle on a temporary file beside `path` that takes `path`'s place once the block ends without error.

        with atomic_file(run_dir / "checkpoint" / "state.pt", "wb") as handle:
            torch.save(state, handle)

    A write that fails (a full disk) is raised as its OSError naming `path`, also when the writer turned
    it into an error of its own (torch.save says "unexpected pos").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_inside(path)  # the rename below replaces a link at `path`; a linked folder above it is refused
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    handle = None
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as raw:
            handle = _KeepsWriteError(raw)
            yield handle
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)  # a full disk or a kill leaves no partial file behind
        failed = handle.error if handle is not None and handle.error is not None else err
        if isinstance(failed, OSError) and failed.filename is None:
            failed.filename = str(path)  # a failed write() names no file: name the one being written
        if failed is not err and isinstance(err, Exception):
            raise failed from None
        raise


class _KeepsWriteError:
    """A file handle that keeps the OSError of a failed write (the writer may replace it with its own error)."""

    def __init__(self, handle: IO):
        self.handle, self.error = handle, None

    def write(self, data):
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


def atomic_write_with(path: Path | str, write) -> None:
    """Call `write(binary_handle)` on a temporary file beside `path`, then rename it into place."""
    with atomic_file(path, "wb") as handle:
        write(handle)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """A staging folder that takes `path`'s place once the block ends without error (a saved model, say).

        with atomic_folder(run_dir / "final_model") as staging:
            model.save_pretrained(staging)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_inside(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp gives 0700
        yield staging
        for file in staging.rglob("*"):  # on disk before the rename makes them visible
            if file.is_file() and not file.is_symlink():
                file.chmod(new_file_mode())  # safetensors creates its file 0600; result files take the umask
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if path.exists():  # swapped in two renames; a kill between them leaves the old folder beside it
            old = path.with_name(f".{path.name}.old{TEMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def keep_files(folder: Path | str, names: tuple[str, ...]) -> dict[Path, bytes | None]:
    """The bytes of each of `names` in `folder` (None: absent), for put_back."""
    kept: dict[Path, bytes | None] = {}
    for name in names:
        path = Path(folder) / name
        kept[path] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return kept


def put_back(kept: dict[Path, bytes | None]) -> None:
    """Each file as keep_files found it: a refused start leaves the folder's records as they were."""
    for path, data in kept.items():
        if data is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)


def remove_temporaries(folder: Path | str) -> list[Path]:
    """Delete what killed atomic writers left in `folder` (not below it); only its writer may call this."""
    removed = []
    for item in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)  # a link is removed, never followed
        removed.append(item)
    return removed




def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def new_folder(parent: Path | str, name: str) -> Path:
    """A new folder `name` under `parent`, or name-2, name-3, ... when taken: mkdir is atomic, so two
    processes started in the same second never share one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for number in itertools.count(1):
        folder = parent / (name if number == 1 else f"{name}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def output_folder(out: Path | str | None, results_dir: Path | str, name: str, what: str) -> Path:
    """`out` when given (checked writable as the `what` folder), else a new folder `name` in results_dir."""
    if out:
        check_writable(out, f"{what} folder")
        return Path(out)
    check_writable(results_dir, "results folder")
    return new_folder(results_dir, name)


def check_writable(folder: Path | str, what: str) -> None:
    """One line (UserError) when files cannot be created in `folder`, or in the nearest folder above it that exists.

    Tried by creating (and at once deleting) a file, since permission bits say nothing to root and
    nothing of a read-only mount.
    """
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {folder} cannot be created: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{what} {folder} is not writable ({existing}: {err.strerror})") from None


# ---------------------------------------------------------------- reading

def read_json(path: Path | str) -> Any:
    """The JSON value in `path`; a file that cannot be read or parsed is one line naming it (UserError)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is damaged: not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise UserError(f"{path} is damaged: nested too deeply to read") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None


def read_json_object(path: Path | str, required: dict[str, type] | None = None) -> dict[str, Any]:
    """A JSON object with at least the `required` keys, of those types; otherwise one line naming the file."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged: it holds a JSON {type(data).__name__}, not an object")
    for key, kind in (required or {}).items():
        if key not in data:
            raise UserError(f"{path} is damaged: it has no '{key}'")
        if not isinstance(data[key], kind):
            raise UserError(f"{path} is damaged: '{key}' is a {type(data[key]).__name__}, not a {kind.__name__}")
    return data


def read_jsonl(path: Path | str, bad_lines: list[int] | None = None) -> list[dict[str, Any]]:
    """Every line that holds a JSON object. The others (a torn last line after a kill, a damaged line)
    are skipped, and their numbers appended to `bad_lines` so that the caller can say so."""
    rows: list[dict[str, Any]] = []
    path = Path(path)
    if not path.exists():
        return rows
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                row = None
            if isinstance(row, dict):
                rows.append(_restore_non_finite(row))
            elif line.strip() and bad_lines is not None:
                bad_lines.append(number)
    return rows


def describe_bad_lines(path: Path | str, bad_lines: list[int]) -> str:
    """'steps.jsonl: 2 unreadable lines skipped (3, 9)'."""
    shown = ", ".join(map(str, bad_lines[:5])) + (", ..." if len(bad_lines) > 5 else "")
    plural = "s" if len(bad_lines) > 1 else ""
    return f"{path}: {len(bad_lines)} unreadable line{plural} skipped ({shown})"


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    try:
        with open_append(path) as handle:
            handle.write(jsonl_line(row))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)  # a failed write() names no file
        raise


def rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(jsonl_line(r) for r in rows))


NON_FINITE_KEY = "nonfinite"  # a row's {key: "nan" | "inf" | "-inf"}: the figures written as null


def jsonl_line(row: dict[str, Any]) -> str:
    """One line of JSON (never a bare NaN token): a non-finite figure is written as null, and its key and
    value go into the row's "nonfinite" object, which read_jsonl reads back.

    >>> jsonl_line({"step": 3, "loss/kl": float("nan")})
    '{"loss/kl": null, "nonfinite": {"loss/kl": "nan"}, "step": 3}\\n'
    """
    flagged = {k: str(v) for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    if flagged:
        row = {**row, **dict.fromkeys(flagged), NON_FINITE_KEY: flagged}
    return json.dumps(row, sort_keys=True, allow_nan=False) + "\n"


def _restore_non_finite(row: dict[str, Any]) -> dict[str, Any]:
    flagged = row.pop(NON_FINITE_KEY, None)
    if isinstance(flagged, dict):
        for key, value in flagged.items():
            if value in ("nan", "inf", "-inf") and row.get(key) is None:
                row[key] = float(value)
    return row


# ---------------------------------------------------------------- one writer per folder

class FolderLock:
    """An advisory lock (flock) on FOLDER/.lock, held while this process writes the folder.

    The kernel drops it when the process ends, however it ends (a crash, SIGKILL, the OOM killer),
    so a lock is never stale. A second writer gets one line naming the holder.
    """

    def __init__(self, folder: Path | str, command: str):
        self.folder, self.command = Path(folder), command
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = open_no_follow(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, new_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{self.folder} is in use: {holder} is writing it; wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": self.command,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self.fd = fd
        self.inside = writing_inside(self.folder)  # every write below the folder stays inside it
        self.inside.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.inside.__exit__(None, None, None)
            os.close(self.fd)  # closing releases the lock; the file stays (unlinking it would race)
            self.fd = None


def _holder(fd: int) -> str:
    """'process 123 (harness compare, since 2026-11-25 12:00:00)', or 'another process'."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"process {int(info['pid'])} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def folder_writer(folder: Path | str) -> str | None:
    """Who holds `folder`'s lock ('process 123 (...)'), or None when nobody is writing it."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a link or a FIFO planted there: no writer
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)


def refuse_if_being_written(*folders: Path | str) -> None:
    """One line (UserError) when any of `folders` is still being written: its results are not final."""
    for folder in folders:
        writer = folder_writer(folder)
        if writer:
            raise UserError(f"{folder} is still being written by {writer}; wait for it to end")


def command_line() -> str:
    """'harness compare --out X': what a lock holder is, in the words its user typed."""
    return " ".join(["harness", *sys.argv[1:]]) if sys.argv and sys.argv[0] else "harness"
