"""lm-eval's built-in task names, read fast: which names exist and which task families hold them.

lm-eval's own index parses every built-in YAML with its includes (about 35 s on 2 cores). This reads
the `task:`, `group:` and `tag:` keys as text instead (about 2 s); it finds all but a few dozen of the
~14,700 names (some tags are set only in included templates), and lets a TaskManager index only
the families (lm_eval/tasks/<family>/) that a name and its members live in.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path


def tasks_root() -> Path:
    import lm_eval
    return Path(lm_eval.__file__).parent / "tasks"


@lru_cache(maxsize=1)
def standard_task_index() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({name: the family folders that mention it}, {group: its member names})."""
    root = tasks_root()
    key = re.compile(r"""^["']?(task|group|tag)["']?[ \t]*:[ \t]*(.*)$""", re.M)
    item = re.compile(r"""^[ \t]*-[ \t]*["']?([^\s"'#:]+)["']?[ \t]*(?:#.*)?$""")
    families: dict[str, set[str]] = {}
    members: dict[str, set[str]] = {}
    for path in root.rglob("*yaml"):
        family = path.relative_to(root).parts[0]
        text = path.read_text(errors="ignore")
        found: dict[str, set[str]] = {"task": set(), "group": set(), "tag": set(), "list": set()}
        for match in key.finditer(text):
            kind, rest = match.group(1), match.group(2).split("#")[0].strip()
            if rest.startswith("["):
                found[kind].update(x.strip(" '\"") for x in rest.strip("[]").split(","))
            elif rest:
                found[kind].add(rest.strip("'\""))
            else:  # a block list: the "- name" lines that follow (a group's tasks, or tags)
                for line in text[match.end() + 1:].splitlines():
                    entry = item.match(line)
                    if entry:
                        found["list" if kind == "task" else kind].add(entry.group(1))
                    elif not line.startswith((" ", "\t")):
                        break
        for name in set().union(*found.values()):
            families.setdefault(name, set()).add(family)
        for group in found["group"]:
            members.setdefault(group, set()).update(found["list"] | found["task"])
    return families, members


def standard_task_names() -> set[str]:
    return set(standard_task_index()[0])


def task_families(name: str) -> set[str]:
    """The family folders of `name` and, for a group, of its members, transitively."""
    families, members = standard_task_index()
    out: set[str] = set()
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            out |= families.get(current, set())
            todo += members.get(current, ())
    return out
