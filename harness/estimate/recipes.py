"""Recipes: published RL setups transcribed field by field, for `harness estimate --recipe NAME`.

A recipe is a YAML file in `harness/config/recipes/`: one published setup (verl's example pair, TRL's
defaults, OpenRLHF's Ray example, DeepSeekMath's paper), one or more arms (an algorithm each, with its own
source: repository, file, commit or paper section), and every config field it sets with `from`, the flag
or sentence it was read from. What the harness cannot match is said in words under `unmatched`. An arm's
config is the base config (preset <- --config) with the recipe's fields over it, and --set over those:

    from harness.estimate.recipes import load_recipe, recipe_configs
    configs = recipe_configs([load_recipe("verl-qwen2-7b-gsm8k")], preset="tiny")  # {"grpo": Config, "ppo": Config}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import UserError
from harness.config.load import load_config, parse_override, read_yaml
from harness.config.schema import Config

RECIPE_DIR = Path(__file__).resolve().parents[1] / "config" / "recipes"


@dataclass(frozen=True)
class Field:
    override: str  # section.field=value, as --set takes it
    source: str  # the flag, default or sentence it transcribes


@dataclass(frozen=True)
class RecipeArm:
    algo: str
    source: dict[str, str]  # repository, file, commit (or paper, section)
    fields: tuple[Field, ...]  # the recipe's common fields, then the arm's own
    unmatched: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    arms: dict[str, RecipeArm] = field(default_factory=dict)
    unmatched: tuple[str, ...] = ()  # what no arm of the recipe matches

    def source_line(self, algo: str) -> str:
        source = self.arms[algo].source
        return f"{source['repository']} {source['file']} @ {source['commit']}"


def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def _fields(entries: Any, where: str) -> tuple[Field, ...]:
    if not isinstance(entries, list):
        raise UserError(f"{where} must be a list of {{set: SECTION.FIELD=VALUE, from: SOURCE}}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("set") or not entry.get("from"):
            raise UserError(f"{where}: every field needs `set` and `from` (its source), got {entry!r}")
        parse_override(str(entry["set"]))  # a malformed override is named here, not at the estimate
        out.append(Field(str(entry["set"]), str(entry["from"])))
    return tuple(out)


def read_recipe(path: Path) -> Recipe:
    """A recipe from its YAML file; one line for the first thing that is wrong with it."""
    data = read_yaml(path)
    name = data.get("name") or path.stem
    arms = data.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise UserError(f"recipe {path}: `arms` must map an algorithm to its source and fields")
    common = _fields(data.get("common", []), f"recipe {name}: common")
    out = {}
    for algo, arm in arms.items():
        source = arm.get("source") if isinstance(arm, dict) else None
        if not isinstance(source, dict) or not all(source.get(k) for k in ("repository", "file", "commit")):
            raise UserError(f"recipe {name}: arm {algo} needs a source with repository, file and commit")
        out[algo] = RecipeArm(algo, {k: str(source[k]) for k in ("repository", "file", "commit")},
                              common + _fields(arm.get("set", []), f"recipe {name}: arm {algo}"),
                              tuple(str(line) for line in arm.get("unmatched", [])))
    return Recipe(name, str(data.get("title", name)), out, tuple(str(line) for line in data.get("unmatched", [])))


def load_recipe(name: str) -> Recipe:
    """A shipped recipe by name, or a recipe YAML file by path."""
    path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"recipe file '{name}' does not exist")
        return read_recipe(path)
    shipped = RECIPE_DIR / f"{name}.yaml"
    if not shipped.exists():
        raise UserError(f"unknown recipe '{name}'; shipped: {', '.join(recipe_names())} (see 'harness recipes'), "
                        "or give a recipe YAML file")
    return read_recipe(shipped)


def parse_recipes(text: str) -> list[Recipe]:
    """'a,b' -> the recipes a and b (their arms together; an algorithm in two of them is refused)."""
    recipes = [load_recipe(name.strip()) for name in text.split(",") if name.strip()]
    if not recipes:
        raise UserError(f"--recipe names no recipe: '{text}'")
    seen: dict[str, str] = {}
    for recipe in recipes:
        for algo in recipe.arms:
            if algo in seen:
                raise UserError(f"recipes {seen[algo]} and {recipe.name} both have a {algo} arm; give one of them")
            seen[algo] = recipe.name
    return recipes


def recipe_arms(recipes: list[Recipe], algos: list[str] | None = None) -> dict[str, tuple[Recipe, RecipeArm]]:
    """{algo: (recipe, arm)} of the recipes, in their order; `algos` keeps those (one line for one missing)."""
    arms = {algo: (recipe, arm) for recipe in recipes for algo, arm in recipe.arms.items()}
    if algos is None:
        return arms
    missing = [a for a in algos if a not in arms]
    if missing:
        raise UserError(f"recipe {', '.join(r.name for r in recipes)} has no {', '.join(missing)} arm; "
                        f"its arms: {', '.join(arms)}")
    return {a: arms[a] for a in algos}


def arm_config(arm: RecipeArm, preset: str = "tiny", config_file: str | None = None,
               overrides: list[str] | None = None) -> Config:
    """The arm's config: the base (preset <- --config), the recipe's fields, then `overrides` (--set)."""
    return load_config(preset, config_file, [f.override for f in arm.fields] + list(overrides or []))


def recipe_configs(recipes: list[Recipe], preset: str = "tiny", config_file: str | None = None,
                   overrides: list[str] | None = None, algos: list[str] | None = None) -> dict[str, Config]:
    """{algo: its config} for every arm of the recipes (or `algos` of them)."""
    out = {}
    for algo, (recipe, arm) in recipe_arms(recipes, algos).items():
        try:
            out[algo] = arm_config(arm, preset, config_file, overrides)
        except UserError as err:
            raise UserError(f"recipe {recipe.name}, arm {algo}: {err}") from None
    return out


def describe_recipe(recipe: Recipe) -> dict[str, Any]:
    """What `harness recipes` prints (JSON-able)."""
    return {"name": recipe.name, "title": recipe.title, "unmatched": list(recipe.unmatched),
            "arms": {algo: {"source": arm.source, "fields": [{"set": f.override, "from": f.source} for f in arm.fields],
                            "unmatched": list(arm.unmatched)} for algo, arm in recipe.arms.items()}}
