"""What defines a run beyond its config.yaml: digests of its inputs, recorded when it starts (inputs.json) and
compared when it resumes, so that a resumed run never trains on two data sets, two reward functions or two
models without saying so.

    config         the resolved config (the preset, --config, every flag), as config.yaml holds it
    data FILE      a data task's file (or saved `datasets` folder) and --eval-file, by content
    reward FILE    a reward function's module file, by content
    model FOLDER   a local or cached Hub model: small files (config, tokenizer) by content, weights by size and
                   modification time, or by the Hub cache's blob name, which is the file's hash

Weights are never hashed whole: a 15 GB folder would cost minutes at every start and resume; a rewritten
weights file changes its size or modification time (copying a folder without keeping times does too:
then --force-resume, which is recorded). The tiny model is built from the config, so the config covers it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

from harness import UserError
from harness.config.schema import Config
from harness.results.io import command_line, read_json_object, write_json

INPUTS_FILE = "inputs.json"
CONTENT_LIMIT = 1 << 20  # model files up to this size are hashed (config, tokenizer); larger ones by size and time
DATA_LIMIT = 2 << 30  # data files up to this size are hashed whole (they are read whole anyway)


def file_digest(path: Path, limit: int) -> str:
    """sha256 of the file's bytes when it is at most `limit` bytes, else its size and modification time; a
    Hub cache entry (a link to a blob named by its hash) by that name."""
    if path.is_symlink() and "blobs" in os.readlink(path):
        return "blob:" + Path(os.readlink(path)).name
    stat = path.stat()
    if stat.st_size > limit:
        return f"size:{stat.st_size}:mtime:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def path_digest(path: Path, limit: int) -> str:
    """A file's digest, or one over a folder's files (names and digests, in order)."""
    if not path.is_dir():
        return file_digest(path, limit)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(path)}={file_digest(file, limit)}\n".encode())
    return "folder:" + digest.hexdigest()[:16]


def model_folder(name: str) -> Path | None:
    """A model's local folder: the path given, or the Hub cache's snapshot of a name; None for the tiny model."""
    if name == "tiny":
        return None
    path = Path(name).expanduser()
    if path.exists():
        return path
    from huggingface_hub import try_to_load_from_cache
    config = try_to_load_from_cache(name, "config.json")
    return Path(config).parent if isinstance(config, str) else None


def reward_file(spec: str) -> Path | None:
    """The file of a reward function's module (file.py:function or module:function), found without running it."""
    module, _, function = spec.rpartition(":")
    if not module or not function:
        return None
    if module.endswith(".py"):
        return Path(module).expanduser()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin and os.path.isfile(found.origin) else None


def input_digests(config: Config) -> dict[str, str]:
    """{what: digest} of every input that defines a run of `config` (see the module's docstring)."""
    from harness.tasks.data import DATA_PREFIX, is_data_task
    task = config.task
    digests = {"config": config.hash()}
    sources = [Path(task.name[len(DATA_PREFIX):]).expanduser()] if is_data_task(task.name) else []
    sources += [Path(task.eval_file).expanduser()] if task.eval_file else []
    for source in sources:
        if source.exists():  # else a dataset name in the local `datasets` cache, named in the config
            digests[f"data {source}"] = path_digest(source, DATA_LIMIT)
    module = reward_file(task.reward) if is_data_task(task.name) and task.reward not in ("math", "exact") else None
    if module is not None and module.is_file():
        digests[f"reward {module}"] = file_digest(module, DATA_LIMIT)
    folder = model_folder(config.model.name)
    if folder is not None:
        digests[f"model {folder}"] = path_digest(folder, CONTENT_LIMIT)
    return digests


def record_inputs(folder: Path, config: Config) -> None:
    """inputs.json of a run (or comparison, or sweep) that starts."""
    write_json(folder / INPUTS_FILE, {"inputs": input_digests(config), "recorded": now()})


def check_inputs(folder: Path, config: Config, force: bool = False) -> None:
    """Before a resume: one line (UserError) when an input changed since `folder` started; with `force`, a
    warning, and the override recorded in inputs.json beside the new digests."""
    path = folder / INPUTS_FILE
    current = input_digests(config)
    if not path.exists():  # started before inputs were recorded, or killed before it wrote them
        write_json(path, {"inputs": current, "recorded": now()})
        return
    saved: dict[str, Any] = read_json_object(path, {"inputs": dict})
    changed = [what for what in sorted(set(saved["inputs"]) | set(current))
               if saved["inputs"].get(what) != current.get(what)]
    if not changed:
        return
    what = "; ".join(describe(key, saved["inputs"].get(key), current.get(key)) for key in changed)
    if not force:
        raise UserError(f"{folder} cannot resume: {what} since it started, and it would train on both; start a new "
                        "run, or add --force-resume to continue anyway (recorded in inputs.json)")
    print(f"warning: --force-resume: {what}; {folder} continues on the new inputs (recorded in {path})",
          file=sys.stderr)
    forced = [*saved.get("forced", []), {"at": now(), "changed": changed, "before": saved["inputs"],
                                         "command": command_line()}]
    write_json(path, {**saved, "inputs": current, "forced": forced})


def describe(key: str, before: str | None, after: str | None) -> str:
    """'data /x/train.jsonl changed', 'model /m is gone', ..."""
    if key == "config":
        return "its config (config.yaml) changed"
    if after is None:
        return f"{key} is no longer an input"
    if before is None:
        return f"{key} is a new input"
    return f"{key} changed"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
