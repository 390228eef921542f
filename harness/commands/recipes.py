"""`harness recipes`: the published setups `harness estimate --recipe NAME` runs, with their sources.

    from harness.commands.recipes import recipes_command
    recipes_command()                           # every recipe: name, title, arms and sources, what it sets
    recipes_command("verl-qwen2-7b-gsm8k")      # one recipe: every field with the flag it transcribes
"""

from __future__ import annotations

import json

from harness.estimate.recipes import describe_recipe, load_recipe, recipe_names


def field_names(fields: list[dict[str, str]]) -> str:
    """'rollout.batch_size=5120, ...' in short: the fields a recipe sets, without their sources."""
    return ", ".join(f["set"] for f in fields)


def recipes_command(name: str | None = None, as_json: bool = False) -> int:
    from harness.commands.estimate import make_console
    recipes = [describe_recipe(load_recipe(n)) for n in ([name] if name else recipe_names())]
    if as_json:
        print(json.dumps(recipes if not name else recipes[0], indent=2))
        return 0
    console = make_console()
    for recipe in recipes:
        console.print(f"[bold]{recipe['name']}[/bold]: {recipe['title']}")
        for algo, arm in recipe["arms"].items():
            source = arm["source"]
            console.print(f"  {algo}: {source['repository']} {source['file']} @ {source['commit']}")
            if name:
                for f in arm["fields"]:
                    console.print(f"    {f['set']:<42} from {f['from']}", highlight=False)
                for line in arm["unmatched"]:
                    console.print(f"    not matched: {line}", highlight=False)
            else:
                console.print(f"    sets {field_names(arm['fields'])}", highlight=False)
        if name:
            for line in recipe["unmatched"]:
                console.print(f"  not matched: {line}", highlight=False)
    if not name:
        console.print("harness recipes NAME: every field with its source; harness estimate --recipe NAME[,NAME]: run it "
                      "(--set overrides any field)")
    return 0
