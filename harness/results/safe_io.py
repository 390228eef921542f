"""Writes inside a results folder never go through a link, and folder names read from files stay inside it.

A results folder may have been prepared by someone else (a shared machine, a folder copied from elsewhere,
`--resume` run as root): a symbolic link planted in it (`.lock -> ~/.bashrc`, `arm.log -> /etc/passwd`, an
arm folder -> /etc) must not turn the harness's writes into writes of the link's target. So:

- files the harness opens in place (locks, logs, appended steps) are opened with O_NOFOLLOW;
- atomic writes rename a temporary file over the name, which replaces a link rather than following it,
  and the folder they write into must resolve inside the results folder being written;
- folder names read from a file (an arm's `dir` in comparison.json) are single, bounded path components.

A link met where a file is written is one line (UserError) naming it; nothing is written through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from harness import UserError

# What a folder name read from a file may be: one path component, short enough for every file system
# (NAME_MAX is 255 bytes; a sweep point adds '.pN' and a staging copy '.NAME.XXXX.tmp' around it).
MAX_FOLDER_NAME = 200

_writing: list[Path] = []  # the results folders this process writes (FolderLock adds each while it holds it)


@contextlib.contextmanager
def writing_inside(folder: Path | str) -> Iterator[None]:
    """While the block runs, every write below `folder` must resolve inside it."""
    root = Path(os.path.abspath(folder))
    _writing.append(root)
    try:
        yield
    finally:
        _writing.remove(root)


def check_inside(path: Path | str) -> None:
    """One line (UserError) when `path`'s folder, below a results folder being written, resolves outside it
    (a link to a folder elsewhere planted inside it)."""
    path = Path(os.path.abspath(path))
    for root in _writing:
        if path != root and root in path.parents:
            real_root, real_parent = root.resolve(), path.parent.resolve()
            if real_parent != real_root and real_root not in real_parent.parents:
                raise UserError(f"{path.parent} leads to {real_parent}, outside the results folder {root}: the "
                                "harness never writes through a link in a results folder; remove the link")


def refuse_link(path: Path | str) -> None:
    """One line (UserError) when `path` is a symbolic link (a file or folder the harness is about to write)."""
    if os.path.islink(path):
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}): the harness never writes through a "
                        "link in a results folder; remove it")


def open_no_follow(path: Path | str, flags: int, mode: int = 0o666) -> int:
    """os.open with O_NOFOLLOW (a descriptor); a link at `path` is one line (UserError), never followed."""
    check_inside(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(path)
        if err.filename is None:
            err.filename = str(path)
        raise


def open_append(path: Path | str, binary: bool = False):
    """A file opened for appending (created with the umask's mode), never through a link."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "ab" if binary else "a", **({} if binary else {"encoding": "utf-8"}))


def arm_folders(comparison_dir: Path | str, plan: dict) -> list[Path]:
    """The arm folders a comparison.json's 'arms' name, each name checked (one line naming the file otherwise)."""
    where = Path(comparison_dir) / "comparison.json"
    if not all(isinstance(arm, dict) and isinstance(arm.get("dir"), str) and arm["dir"] for arm in plan["arms"]):
        raise UserError(f"{where} is damaged: an entry of 'arms' has no folder ('dir')")
    return [Path(comparison_dir) / check_folder_name(arm["dir"], str(where)) for arm in plan["arms"]]


def check_folder_name(name: object, where: str) -> str:
    """A folder name read from `where`: one path component (no separator, not '.' or '..'), bounded."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or len(name.encode()) > MAX_FOLDER_NAME):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise UserError(f"{where} is damaged: {shown} is not a folder name (one path component of at most "
                        f"{MAX_FOLDER_NAME} bytes)")
    return name
