"""The search `harness tune` runs per arm, as small pure functions: each arm's declared axes, the points a
coordinate-wise search visits for a given score function, where each chosen value sits on its axis, and the
step at which a validation curve stops rising.

The search (a compass search, Kolda, Lewis and Torczon, SIAM Review 2003): from the preset's current settings,
one axis at a time in a stated order, probe the values either side of the current one (or an axis's declared
first values), widen while the best of that line is its lowest or highest probed value, and move to the line's
best. A pass that moves nothing halves the step of the log-scale axes (learning rates: x2, then x1.41, then
x1.19); a pass at the finest step that moves nothing ends the search (converged). Every distinct setting costs
one point of the arm's budget, the same for every arm; a setting seen before costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from collections.abc import Callable
from typing import Any

LOG_RESOLUTION = 4  # ladder positions per doubling of a learning rate: its finest step is x2^(1/4) = x1.19
LOG_SPAN = 6  # doublings either side of the start a learning rate's ladder reaches (x1/64 to x64)
WARMUP_STEPS = (0, 2, 4, 8, 16, 32, 64, 128)  # critic warm-up ladder, cut at half of a point's steps
PPO_FIRST_SAMPLES = (1, 4, 8)  # PPO's completions per prompt, first visit: 1 as verl and OpenRLHF run it, up to G


@dataclass(frozen=True)
class Axis:
    """One tuned field: the values the search may visit (ascending), its first step in ladder positions, the
    values a first visit probes (empty: the current value's neighbours), and whether each end of the ladder is a
    hard bound (1 completion per prompt, no warm-up) rather than only where the ladder was cut."""

    field: str
    ladder: tuple[Any, ...]
    step: int = 1
    first: tuple[Any, ...] = ()
    bounds: tuple[bool, bool] = (False, False)

    def text(self, center: Any) -> str:
        """The axis as the plan prints it: 'optim.lr from 5e-05 by x2 (finest x1.19), 1e-06..0.0032'."""
        if self.step > 1:
            finest = 2 ** (1 / LOG_RESOLUTION) if self.step == LOG_RESOLUTION else None
            return (f"{self.field} from {center:g} by x2" + (f" (finest x{finest:.2f})" if finest else "")
                    + f", {self.ladder[0]:g} to {self.ladder[-1]:g}")
        values = ", ".join(f"{v}*" if v == center else str(v) for v in self.ladder)
        first = f"; first {', '.join(map(str, self.first))}" if self.first else ""
        return f"{self.field} in [{values}]{first}"


def sig3(value: float) -> float:
    """A ladder value as people write it: three significant digits (7.0710678e-05 -> 7.07e-05)."""
    return float(f"{value:.3g}")


def log_axis(field: str, center: float, span: int = LOG_SPAN, resolution: int = LOG_RESOLUTION) -> Axis:
    """A learning rate: center x 2^(k/resolution) for k in -span*resolution..span*resolution, first step x2.

    >>> log_axis("optim.lr", 1e-4, span=1).ladder
    (5e-05, 5.95e-05, 7.07e-05, 8.41e-05, 0.0001, 0.000119, 0.000141, 0.000168, 0.0002)
    """
    ladder = tuple(center if k == 0 else sig3(center * 2 ** (k / resolution))
                   for k in range(-span * resolution, span * resolution + 1))
    return Axis(field, ladder, step=resolution)


def count_axis(field: str, center: int, values, first=(), bounds=(True, True)) -> Axis:
    """A count (completions per prompt, warm-up steps): the given values and the current one, ascending."""
    ladder = tuple(sorted(set(values) | {center}))
    return Axis(field, ladder, first=tuple(v for v in first if v in ladder and v != center), bounds=bounds)


def powers_of_two(low: int, high: int) -> list[int]:
    """The powers of two from `low` to `high`.

    >>> powers_of_two(2, 40)
    [2, 4, 8, 16, 32]
    """
    return [2 ** k for k in range(int(math.log2(max(low, 1))), int(math.log2(high)) + 1) if low <= 2 ** k <= high]


def declared_axes(algo: str, current: dict[str, Any], batch_size: int, steps: int) -> list[Axis]:
    """Each algorithm's axes, in the order the search visits them. Completions per prompt first (it changes
    how many prompts a step learns from, and so the best learning rate), then the policy's learning rate; PPO
    then its critic's learning rate and warm-up. `current`: the arm's present value of each field; `steps`: a
    point's rollout steps (the warm-up ladder stops at half of them)."""
    from harness.config.arm_kinds import algorithm_of
    algorithm = algorithm_of(algo)
    if algorithm == "ppo":
        warmups = [w for w in WARMUP_STEPS if w <= steps // 2]
        return [count_axis("rollout.samples_per_prompt", current["rollout.samples_per_prompt"],
                           powers_of_two(1, batch_size), first=PPO_FIRST_SAMPLES),
                log_axis("optim.lr", current["optim.lr"]),
                log_axis("algorithms.ppo.critic_lr", current["algorithms.ppo.critic_lr"]),
                count_axis("algorithms.ppo.critic_warmup_steps", current["algorithms.ppo.critic_warmup_steps"],
                           warmups)]
    # a group baseline needs two completions of a prompt; REINFORCE++'s batch baseline takes one
    smallest = 1 if algorithm == "reinforce_pp" else 2
    return [count_axis("rollout.samples_per_prompt", current["rollout.samples_per_prompt"],
                       powers_of_two(smallest, batch_size)),
            log_axis("optim.lr", current["optim.lr"])]


def axis_fields(algo: str) -> list[str]:
    """The fields `declared_axes` tunes for `algo`, in its order."""
    current = {"rollout.samples_per_prompt": 1, "optim.lr": 1.0, "algorithms.ppo.critic_lr": 1.0,
               "algorithms.ppo.critic_warmup_steps": 0}
    return [axis.field for axis in declared_axes(algo, current, 2, 2)]


@dataclass
class Visit:
    """One point the search ran: its setting of every axis, why it ran, the axis it probed, and its score."""

    index: int
    setting: dict[str, Any]
    why: str  # start | probe | widen | refine
    axis: str | None
    score: float | None  # validation accuracy; None: the point failed (worst)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Spent(Exception):
    """The arm's point budget is spent."""


def setting_key(setting: dict[str, Any]) -> str:
    return repr(sorted(setting.items()))


def rank(score: float | None) -> float:
    return -math.inf if score is None else score


def line_of(axis: Axis, center: dict[str, Any], seen: dict[str, Visit]) -> dict[int, float | None]:
    """{ladder position: score} of the seen settings that equal `center` on every other axis."""
    line = {}
    for visit in seen.values():
        others_equal = all(v == center.get(k) for k, v in visit.setting.items() if k != axis.field)
        if others_equal and visit.setting[axis.field] in axis.ladder:
            line[axis.ladder.index(visit.setting[axis.field])] = visit.score
    return line


def best_position(line: dict[int, float | None], current: int) -> int:
    """The line's best: the highest score; a tie keeps the current value, else takes the lowest position.

    >>> best_position({0: 0.3, 2: 0.5, 4: 0.5}, current=4), best_position({0: 0.5, 2: 0.4, 4: 0.5}, current=2)
    (4, 0)
    """
    top = max(rank(s) for s in line.values())
    tied = sorted(p for p, s in line.items() if rank(s) == top)
    return current if current in tied else tied[0]


def coordinate_search(axes: list[Axis], start: dict[str, Any], points: int,
                      score: Callable[[dict[str, Any]], float | None]) -> list[Visit]:
    """The points the search visits, in order, for `score` (setting -> validation accuracy, None if the point
    failed), at most `points` of them; see the module's docstring for the rule."""
    seen: dict[str, Visit] = {}
    visits: list[Visit] = []

    def evaluate(setting: dict[str, Any], why: str, axis: str | None) -> None:
        if setting_key(setting) in seen:
            return
        if len(visits) >= points:
            raise _Spent
        visit = Visit(len(visits), dict(setting), why, axis, score(dict(setting)))
        visits.append(visit)
        seen[setting_key(setting)] = visit

    center = dict(start)
    steps = {axis.field: axis.step for axis in axes}
    probe_word = "probe"
    try:
        evaluate(center, "start", None)
        first_pass = True
        while True:
            moved = False
            for axis in axes:
                if len(axis.ladder) < 2:
                    continue
                value = line_search(axis, center, steps[axis.field], first_pass, probe_word, seen, evaluate)
                if value != center[axis.field]:
                    center[axis.field], moved = value, True
            first_pass = False
            if not moved:
                finer = [axis for axis in axes if steps[axis.field] > 1]
                if not finer:
                    break  # converged: a pass at the finest step moved nothing
                for axis in finer:
                    steps[axis.field] //= 2
                probe_word = "refine"
    except _Spent:
        pass
    return visits


def line_search(axis: Axis, center: dict[str, Any], step: int, first_pass: bool, probe_word: str,
                seen: dict[str, Visit], evaluate) -> Any:
    """Probe `axis` around the center, widen while the line's best is its lowest or highest probed value,
    and return the line's best value."""
    last = len(axis.ladder) - 1
    here = axis.ladder.index(center[axis.field])
    if first_pass and axis.first:
        targets = [axis.ladder.index(v) for v in axis.first]
    else:
        targets = sorted({max(here - step, 0), min(here + step, last)} - {here})
    for position in targets:
        evaluate({**center, axis.field: axis.ladder[position]}, probe_word, axis.field)
    while True:
        line = line_of(axis, center, seen)
        best = best_position(line, here)
        low, high = min(line), max(line)
        if best == low and low > 0 and len(line) > 1:
            position = max(low - step, 0)
        elif best == high and high < last and len(line) > 1:
            position = min(high + step, last)
        else:
            return axis.ladder[best]
        evaluate({**center, axis.field: axis.ladder[position]}, "widen", axis.field)


def chosen_visit(visits: list[Visit]) -> Visit | None:
    """The arm's choice: the highest validation accuracy of all its points (ties: the earliest); None if every
    point failed."""
    finished = [v for v in visits if v.score is not None]
    return max(finished, key=lambda v: (v.score, -v.index)) if finished else None


def where_on(axis: Axis, line: dict[int, float | None], here: int) -> dict[str, Any]:
    """Where the value at ladder position `here` sits on one line of `axis`: interior (probed on both sides), at
    a hard bound, or at an edge (a side never probed: the budget ran out first, or the ladder ends there)."""
    below = [p for p in line if p < here]
    above = [p for p in line if p > here]
    notes = []
    for side, probed, end, bound in (("below", below, here == 0, axis.bounds[0]),
                                     ("above", above, here == len(axis.ladder) - 1, axis.bounds[1])):
        if not probed:
            notes.append(f"at its {'lower' if side == 'below' else 'upper'} bound" if end and bound
                         else f"nothing probed {side}" + (" (the ladder ends)" if end else " (the budget ran out)"))
    status = "interior" if not notes else "edge" if any("nothing" in n for n in notes) else "bound"
    return {"below": axis.ladder[max(below)] if below else None, "above": axis.ladder[min(above)] if above else None,
            "status": status, "note": "; ".join(notes)}


def edge_report(axes: list[Axis], visits: list[Visit], choice: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each chosen value sits on its axis (where_on), read on the line through the choice (the other axes
    at their chosen values). A coordinate search probes an axis at the other axes' values of its time: where
    the final line has a side never probed, the latest line that has the chosen value probed on both sides (or
    at a bound) is reported instead, with the other axes' values there (`with`); `final` says which."""
    seen = {setting_key(v.setting): v for v in visits}
    report = []
    for axis in axes:
        value = choice[axis.field]
        if len(axis.ladder) < 2:
            report.append({"field": axis.field, "value": value, "below": None, "above": None, "status": "fixed",
                           "note": "one value allowed: not searched", "final": True, "with": {}})
            continue
        here = axis.ladder.index(value)
        entry = {"field": axis.field, "value": value, **where_on(axis, line_of(axis, choice, seen), here),
                 "final": True, "with": {}}
        if entry["status"] == "edge":
            for visit in reversed(visits):
                if visit.setting[axis.field] != value:
                    continue
                earlier = where_on(axis, line_of(axis, visit.setting, seen), here)
                if earlier["status"] != "edge":
                    others = {k: v for k, v in visit.setting.items() if k != axis.field and v != choice.get(k)}
                    entry = {**entry, **earlier, "final": False, "with": others}
                    break
        report.append(entry)
    return report


def plateau_step(curve: list[tuple[int, float]], prompts: int, window: int = 3) -> dict[str, Any]:
    """Where a validation curve stops rising: the first evaluation whose moving mean (over `window`
    evaluations, centred) is within one binomial standard error (at the curve's best, on `prompts` prompts)
    of the best moving mean. `rising`: the best moving mean is in the last tenth of the curve; `flat`: it
    never rises a standard error above its start (no step budget follows from it).

    >>> plateau_step([(0, .10), (10, .20), (20, .30), (30, .34), (40, .35), (50, .34), (60, .35)], prompts=500)["step"]
    30
    """
    steps = [s for s, _ in curve]
    values = [a for _, a in curve]
    half = window // 2
    smooth = [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
              for i in range(len(values))]
    best = max(smooth)
    se = math.sqrt(best * (1 - best) / prompts) if prompts else 0.0
    first = next(i for i, value in enumerate(smooth) if value >= best - se)
    return {"step": steps[first], "best_step": steps[smooth.index(best)], "best": best, "se": se,
            "accuracy": smooth[first], "rising": smooth.index(best) >= len(smooth) - max(1, len(smooth) // 10),
            "flat": best <= smooth[0] + se}
