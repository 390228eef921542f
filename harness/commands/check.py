"""`harness check` and `harness baseline`: a memory-regression gate for CI, against committed baselines.

The peaks of live tensors per phase (measured by following every tensor an op makes) and the model
state (arithmetic, from the sizes) are deterministic for a seed, a config and a torch version, so
they are compared to the byte by default.
Allocator and NVML peaks are measured and move a little between identical runs: they are compared
with a tolerance, and only when both sides ran on the same kind of GPU. RSS moves by megabytes
between identical runs on the CPU: it is shown, never gated.

Exit status of `check`: 0 nothing regressed, 1 a figure grew past its tolerance (or an arm did not
finish), 2 bad input (a missing file, a baseline of another preset or device).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import UserError
from harness.config.load import config_from_dict, read_yaml
from harness.results.arm_config import ARM_KEYS
from harness.results.headline import PHASES, headline
from harness.results.io import check_writable, read_json, read_json_object, refuse_if_being_written, write_json
from harness.results.records import FIGURES, ComparisonPlan, Memory, Summary
from harness.results.units import human_bytes

EXIT_OK, EXIT_REGRESSED = 0, 1
BASELINE_FORMAT = 2

MEMORY = [figure for figure in FIGURES if figure.group == "memory"]  # each says how it is gated (Figure.gate)
GATED_KINDS = {"exact"}  # always gated; "gpu" too when both sides ran on the same kind of GPU
MODEL_CATEGORIES = ("params", "grads", "optimizer")
# Config fields that cannot change a footprint: where results go; seeds are matched arm by arm.
# estimate.*: settings of harness estimate, not of the run
# task.reward_timeout: a limit on the user's code, which changes no figure
CONFIG_IGNORED = {"derived", *ARM_KEYS, "run.seed", "run.results_dir", "estimate", "task.reward_timeout"}


# ---------------------------------------------------------------- what was measured

@dataclass
class Measured:
    """A run or comparison folder, or a baseline file: the same facts about either."""
    source: str
    preset: str
    config: dict[str, Any]
    config_hash: str
    device: str  # cpu | cuda
    device_name: str | None  # the GPU's name; None on the CPU
    versions: dict[str, Any]
    arms: list[dict[str, Any]]  # {algo (the arm's name), seed, status, error, mem: Memory, source}
    machine: dict[str, Any] = field(default_factory=dict)


def config_hash_of(config: dict[str, Any], where: str) -> str:
    try:
        return config_from_dict(config).hash()
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def load_folder(path: str | Path) -> Measured:
    """A comparison folder (comparison.json) or one run folder (summary.json + config.yaml)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist or is not a folder; give a run or comparison folder")
    if (folder / "comparison.json").exists():
        arm_dirs = [folder / arm.dir for arm in ComparisonPlan.load(folder / "comparison.json").arms]
    elif (folder / "summary.json").exists():
        arm_dirs = [folder]
    else:
        raise UserError(f"{folder} holds neither comparison.json nor summary.json: not a run or comparison folder")
    refuse_if_being_written(folder, *arm_dirs)
    config = {k: v for k, v in read_yaml(folder / "config.yaml").items() if k not in (*ARM_KEYS, "derived")}
    arms, env = [], {}
    for arm_dir in arm_dirs:
        if not (arm_dir / "summary.json").exists():
            raise UserError(f"{arm_dir} has no summary.json: the comparison did not finish "
                            f"(finish it with 'harness compare --resume {folder}')")
        summary = Summary.read(read_json_object(arm_dir / "summary.json", {"status": str}))
        if summary.status == "running":
            raise UserError(f"{arm_dir} stopped without recording how it ended (killed?): its summary.json still "
                            f"says running; finish it before checking it")
        # an arm is matched by its name (a variant such as ppo-n1 is not its algorithm's plain arm)
        arms.append({"algo": summary.name, "seed": summary.seed, "status": summary.status, "error": summary.error,
                     "mem": summary.mem, "source": str(arm_dir / "summary.json")})
        if (arm_dir / "env.json").exists():
            arm_env = read_json_object(arm_dir / "env.json")  # every arm's: a damaged one is said, not skipped
            env = env or arm_env
    device = "cuda" if str(config.get("run", {}).get("device", "cpu")).startswith("cuda") else "cpu"
    gpu_names = {a["mem"].measured.device_name for a in arms} - {None}
    return Measured(
        source=str(folder), preset=config.get("preset", "?"), config=config,
        config_hash=config_hash_of(config, str(folder / "config.yaml")), device=device,
        device_name=(env.get("gpu") or min(gpu_names, default=None)) if device == "cuda" else None,
        versions={k: env.get(k) for k in ("harness", "torch", "transformers", "python", "cuda", "driver") if env.get(k)},
        arms=arms,
        machine={k: env.get(k) for k in ("git_commit", "platform", "cpu", "cpu_count", "torch_threads") if k in env})


def arm_names(arms) -> list[str]:
    return [f"{arm['algo']} s{arm['seed']}" for arm in arms]


def arm_key(arm: dict[str, Any]) -> tuple[str, int]:
    return arm["algo"], arm["seed"]


def baseline_dict(measured: Measured) -> dict[str, Any]:
    return {"harness_baseline": BASELINE_FORMAT, "preset": measured.preset, "config_hash": measured.config_hash,
            "device": measured.device, "device_name": measured.device_name, "versions": measured.versions,
            "machine": measured.machine, "written": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "source": measured.source, "config": measured.config,
            "arms": [{"algo": arm["algo"], "seed": arm["seed"], "mem": arm["mem"].to_json()} for arm in measured.arms]}


def read_memory(arm: dict[str, Any], path: Path) -> Memory:
    """A baseline arm's memory figures, read as written: the typed record reads leniently (a number in a string
    as the number, a section that is not an object as empty), so a leaf it would change is one line."""
    memory = Memory.read(arm["mem"])
    kept = _flatten(memory.to_json())
    for where, value in _flatten(arm["mem"]).items():
        if where not in kept or type(kept[where]) is not type(value) or kept[where] != value:
            raise UserError(f"baseline {path} is damaged: the memory figures of {arm['algo']} s{arm['seed']} are "
                            f"not in the form harness writes (mem.{where} is {value!r}); write it again with "
                            "'harness baseline'")
    return memory


def load_baseline(path: str | Path) -> Measured:
    path = Path(path)
    if not path.exists():
        raise UserError(f"baseline {path} does not exist; write one with 'harness baseline DIR --out {path}'")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("harness_baseline") != BASELINE_FORMAT:
        raise UserError(f"{path} is not a baseline file (format {BASELINE_FORMAT}); write one with 'harness baseline'")
    data = read_json_object(path, {"preset": str, "config": dict, "config_hash": str, "device": str, "arms": list})
    for arm in data["arms"]:
        if not (isinstance(arm, dict) and isinstance(arm.get("algo"), str) and type(arm.get("seed")) is int
                and isinstance(arm.get("mem"), dict)):
            raise UserError(f"baseline {path} is damaged: an arm lacks its algo, seed or mem; "
                            f"write it again with 'harness baseline'")
    return Measured(source=str(path), preset=data["preset"], config=data["config"], config_hash=data["config_hash"],
                    device=data["device"], device_name=data.get("device_name"), versions=data.get("versions") or {},
                    arms=[{**arm, "mem": read_memory(arm, path), "status": "ok", "error": None,
                           "source": f"baseline {path}"} for arm in data["arms"]],
                    machine=data.get("machine") or {})


# ---------------------------------------------------------------- figures and verdicts

def arm_figures(mem: Memory) -> list[tuple[str, str, str, float | None]]:
    """(key, label, kind, bytes) of one arm; kind is exact, gpu or info. Model rows follow model state."""
    row = headline(Summary(mem=mem))
    out = []
    for figure in MEMORY:
        key, label, kind = figure.key, figure.label, figure.gate
        out.append((key, label, kind, row[key]))
        if key == "mem_live_peak":
            for phase, total in sorted(row["mem_live_phases"].items(), key=lambda item: phase_rank(item[0])):
                out.append((f"live.{phase}", f"  live tensors: {phase}", "exact", total))
        if key == "mem_model_state":
            for model, sizes in sorted(row["models"].items()):
                for category in MODEL_CATEGORIES:
                    out.append((f"{model}.{category}", f"  {model} {category}", "exact", sizes.get(category, 0)))
    return out


def phase_rank(phase: str) -> int:
    return PHASES.index(phase) if phase in PHASES else len(PHASES)


@dataclass
class Row:
    arm: str
    label: str
    base: float | None
    now: float | None
    verdict: str  # same | within | regressed | improved | info


def verdict(base: float, now: float, tolerance: float) -> str:
    if now > base * (1 + tolerance):
        return "regressed"
    if now < base * (1 - tolerance) or (tolerance == 0 and now < base):
        return "improved"
    return "same" if now == base else "within"


def missing_gated(mem: Memory, kinds: set[str]) -> list[str]:
    """Labels of the gated figures that `mem` lacks: a summary that lost its memory data gates nothing."""
    return [label.strip() for _, label, kind, value in arm_figures(mem) if kind in kinds and value is None]


def refuse_non_numbers(arm: dict[str, Any]) -> None:
    """One line (UserError) when an arm's memory figures are not numbers of bytes (a file edited or damaged)."""
    try:
        figures = arm_figures(arm["mem"])
    except (AttributeError, TypeError, KeyError, ValueError) as err:
        raise UserError(f"{arm['source']} is damaged: the memory figures of {arm['algo']} s{arm['seed']} are not "
                        f"in the form harness writes ({type(err).__name__}: {err})") from None
    for _, label, _, value in figures:
        if value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value < 0):
            raise UserError(f"{arm['source']} is damaged: {label.strip()} of {arm['algo']} s{arm['seed']} is "
                            f"{value!r}, not a number of bytes")


def refuse_missing(arm: dict[str, Any], kinds: set[str], fix: str) -> None:
    lost = missing_gated(arm["mem"], kinds)
    if lost:
        raise UserError(f"{arm['source']} has no {'; '.join(lost)} for {arm['algo']} s{arm['seed']}: "
                        f"{'a gated figure is' if len(lost) == 1 else 'gated figures are'} missing; {fix}")


def refuse_dropped(arm: dict[str, Any], base_arm: dict[str, Any], kinds: set[str]) -> None:
    """With the baseline's own config, a model or phase it measured cannot have gone away: the data was lost."""
    now_keys = {key for key, _, _, _ in arm_figures(arm["mem"])}
    dropped = [label.strip() for key, label, kind, value in arm_figures(base_arm["mem"])
               if kind in kinds and value and key not in now_keys]
    if dropped:
        raise UserError(f"{arm['source']} has no {'; '.join(dropped)} for {arm['algo']} s{arm['seed']}, which the "
                        f"baseline measured with the same config: the run lost memory data; run it again")


def compare_arm(arm: str, base_mem: Memory, now_mem: Memory, exact_tolerance: float,
                gpu_tolerance: float, gpu_comparable: bool) -> list[Row]:
    base = {key: (label, kind, value) for key, label, kind, value in arm_figures(base_mem)}
    rows = []
    for key, label, kind, now in arm_figures(now_mem):
        base_value = base.pop(key, (label, kind, 0 if kind == "exact" else None))[2]
        if kind == "gpu" and not gpu_comparable:
            continue
        if base_value is None and now is None:
            continue
        if kind == "info" or base_value is None or now is None:
            rows.append(Row(arm, label, base_value, now, "info"))
            continue
        if kind == "exact" and base_value == 0 and now == 0 and "." in key:
            continue  # a frozen model's grads and optimizer: nothing to compare
        tolerance = exact_tolerance if kind == "exact" else gpu_tolerance
        rows.append(Row(arm, label, base_value, now, verdict(base_value, now, tolerance)))
    for label, kind, value in base.values():  # a model the baseline had and this run has not
        if kind == "exact" and value:
            rows.append(Row(arm, label, value, 0, "improved"))
    return rows


def parse_tolerance(text: str, flag: str) -> float:
    """'5%' or '5' -> 0.05."""
    try:
        value = float(text.strip().rstrip("%")) / 100
    except ValueError:
        raise UserError(f"{flag} '{text}' is not a percentage, e.g. {flag} 5%") from None
    if not math.isfinite(value) or value < 0:  # nan compares false with everything: it would pass every figure
        raise UserError(f"{flag} must be a finite percentage of 0 or more, got '{text}'")
    return value


def config_differences(base: dict[str, Any], now: dict[str, Any]) -> list[str]:
    flat_base, flat_now = _flatten(base), _flatten(now)
    out = []
    for key in sorted(set(flat_base) | set(flat_now)):
        if key in CONFIG_IGNORED or key.split(".")[0] in CONFIG_IGNORED:
            continue
        if flat_base.get(key, "(absent)") != flat_now.get(key, "(absent)"):
            out.append(f"{key} {flat_base.get(key, '(absent)')} -> {flat_now.get(key, '(absent)')}")
    return out


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _release(version: str | None) -> str | None:
    return version.split("+")[0] if version else version  # 2.13.0+cpu and 2.13.0 run the same CPU kernels


# ---------------------------------------------------------------- check

def check(folder: str, baseline_path: str, gpu_tolerance: float, exact_tolerance: float = 0.0,
          strict_config: bool = False, echo=print) -> int:
    base, now = load_baseline(baseline_path), load_folder(folder)
    fix = f"check against a baseline written from such a run ('harness baseline {folder} --out ...')"
    if base.preset != now.preset:
        raise UserError(f"baseline {baseline_path} is for preset '{base.preset}', {folder} ran preset "
                        f"'{now.preset}'; {fix}")
    if base.device != now.device:
        raise UserError(f"baseline {baseline_path} was measured on {base.device}, {folder} on {now.device}; {fix}")
    differences = config_differences(base.config, now.config)
    if differences and strict_config:
        raise UserError(f"config differs from the baseline's ({base.config_hash} -> {now.config_hash}): "
                        f"{'; '.join(differences)}")
    for arm in [*base.arms, *(a for a in now.arms if a["status"] == "ok")]:
        refuse_non_numbers(arm)
    base_arms = {arm_key(a): a for a in base.arms}
    missing = arm_names([a for a in now.arms if arm_key(a) not in base_arms])
    if missing:
        raise UserError(f"baseline {baseline_path} has no arm {', '.join(missing)} "
                        f"(it has {', '.join(arm_names(base.arms))}); {fix}")

    gpu_comparable = now.device == "cuda" and bool(base.device_name) and base.device_name == now.device_name
    gated = GATED_KINDS | ({"gpu"} if gpu_comparable else set())
    for arm in now.arms:
        if arm["status"] == "ok":  # a missing figure is an error, never an improvement
            refuse_missing(arm, gated, "the run lost its memory data; run it again")
            refuse_missing(base_arms[arm_key(arm)], gated, "write the baseline again with 'harness baseline'")
            if not differences:
                refuse_dropped(arm, base_arms[arm_key(arm)], gated)
    echo(f"harness check {folder}")
    echo(f"  baseline {baseline_path}: preset {base.preset}, config {base.config_hash}, "
         f"{base.device_name or base.device}, torch {base.versions.get('torch')}, "
         f"commit {(base.machine.get('git_commit') or '?')[:10]}")
    echo(f"  this run: preset {now.preset}, config {now.config_hash}, {now.device_name or now.device}, "
         f"torch {now.versions.get('torch')}")
    echo(f"  tolerance: exact accounting {exact_tolerance:.0%}, GPU allocator and NVML peaks {gpu_tolerance:.0%}; "
         f"RSS not gated")
    if differences:
        echo(f"warning: config differs from the baseline's ({base.config_hash} -> {now.config_hash}): "
             f"{'; '.join(differences)}. Figures are compared anyway (--strict-config makes this an error).")
    if _release(base.versions.get("torch")) != _release(now.versions.get("torch")):
        echo(f"warning: torch {now.versions.get('torch')} here, {base.versions.get('torch')} in the baseline: "
             f"saved-activation bytes can change with the torch version.")
    if now.device == "cuda" and not gpu_comparable:
        echo(f"note: GPU allocator and NVML peaks not compared: baseline measured on "
             f"{base.device_name or 'an unnamed GPU'}, this run on {now.device_name or 'an unnamed GPU'}.")
    elif now.device == "cpu":
        echo("note: GPU allocator and NVML peaks not compared: both sides ran on the CPU.")

    rows, unfinished = [], []
    for arm, name in zip(now.arms, arm_names(now.arms)):
        if arm["status"] != "ok":
            unfinished.append(f"{name} did not finish ({arm['status']}: {arm['error']})")
            continue
        rows += compare_arm(name, base_arms[arm_key(arm)]["mem"], arm["mem"],
                            exact_tolerance, gpu_tolerance, gpu_comparable)
    unchecked = arm_names([a for a in base.arms if arm_key(a) not in {arm_key(b) for b in now.arms}])
    if unchecked:
        echo(f"note: baseline arms not in this run, not checked: {', '.join(unchecked)}")
    echo("")
    for line in render(rows):
        echo(line)
    echo("")
    regressed = [r for r in rows if r.verdict == "regressed"]
    improved = [r for r in rows if r.verdict == "improved"]
    checked = sum(r.verdict != "info" for r in rows)
    if regressed or unfinished:
        echo(f"REGRESSED: {len(regressed)} of {checked} figures grew past their tolerance"
             + (f", {len(unfinished)} arm(s) did not finish" if unfinished else ""))
        for line in unfinished + [f"{r.arm} {r.label.strip()}: {_change(r.base, r.now)}" for r in regressed]:
            echo(f"  - {line}")
        echo(f"If the growth is intended, update the baseline on purpose (docs/ci-gate.md): "
             f"harness baseline {folder} --out {baseline_path}")
        return EXIT_REGRESSED
    echo(f"ok: nothing regressed in {checked} figures" + (f"; {len(improved)} improved:" if improved else ""))
    for r in improved:
        echo(f"  - {r.arm} {r.label.strip()}: {_change(r.base, r.now)}")
    if improved:
        echo(f"To lock the improvement in: harness baseline {folder} --out {baseline_path}")
    return EXIT_OK


# ---------------------------------------------------------------- output

def _change(base: float | None, now: float | None) -> str:
    if base is None or now is None:
        return ""
    delta = now - base
    if delta == 0:
        return "0"
    relative = f" ({delta / base:+.1%})" if base else " (new)"
    return f"{'+' if delta > 0 else '-'}{human_bytes(abs(delta))}{relative}"


VERDICT_TEXT = {"same": "same", "within": "within tolerance", "regressed": "REGRESSED",
                "improved": "improved", "info": "info, not gated"}


def render(rows: list[Row]) -> list[str]:
    """A plain-text table, one block per arm: it reads the same in a terminal and in a CI log."""
    header = ("figure", "baseline", "now", "change", "verdict")
    lines: list[tuple[str, ...]] = [header]
    for arm in dict.fromkeys(r.arm for r in rows):
        lines.append((arm, "", "", "", ""))
        lines += [(f"  {r.label}", human_bytes(r.base), human_bytes(r.now), _change(r.base, r.now),
                   VERDICT_TEXT[r.verdict]) for r in rows if r.arm == arm]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:4], widths[1:4])]
        out.append("  ".join(cells + [line[4]]).rstrip())
    return out


# ---------------------------------------------------------------- baseline

def write_baseline(folder: str, out: str, echo=print) -> int:
    measured = load_folder(folder)
    unfinished = [f"{a['algo']} s{a['seed']} ({a['status']}: {a['error']})" for a in measured.arms if a["status"] != "ok"]
    if unfinished:
        raise UserError(f"cannot write a baseline from arms that did not finish: {', '.join(unfinished)}")
    gated = GATED_KINDS | ({"gpu"} if measured.device == "cuda" else set())
    for arm in measured.arms:
        refuse_missing(arm, gated, "a baseline without it would gate nothing; run the arm again")
    check_writable(Path(out).parent, "baseline folder")
    existed = Path(out).exists()
    write_json(Path(out), baseline_dict(measured))
    echo(f"baseline: {'updated' if existed else 'wrote'} {out} from {folder}: preset {measured.preset}, "
         f"config {measured.config_hash}, {measured.device_name or measured.device}, "
         f"torch {measured.versions.get('torch')}, arms {', '.join(arm_names(measured.arms))}")
    return EXIT_OK
