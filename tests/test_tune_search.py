"""harness tune's search, as pure functions: the points it visits for a known score, edge widening, the equal
point budget per arm, where each chosen value sits on its axis, and where a validation curve stops rising."""

import math

import pytest

from harness.commands.tune_search import (Axis, chosen_visit, coordinate_search, count_axis, declared_axes,
                                          edge_report, log_axis, plateau_step, powers_of_two)


def peaked(group_best=16, lr_best=2e-4):
    """0.30 at (group_best, lr_best), one point less per doubling of the group size away from it, two per
    doubling of the learning rate."""
    def score(setting):
        return (0.30 - 0.01 * abs(math.log2(setting["rollout.samples_per_prompt"] / group_best))
                - 0.02 * abs(math.log2(setting["optim.lr"] / lr_best)))
    return score


def grpo_axes():
    # the group size on [2, 4, 8, 16, 32], the learning rate from 1e-4 by x2 (ladder 2.5e-5 .. 4e-4 in x2^(1/4))
    return [count_axis("rollout.samples_per_prompt", 8, [2, 4, 8, 16, 32]), log_axis("optim.lr", 1e-4, span=2)]


def trace(visits):
    return [(v.why, v.setting["rollout.samples_per_prompt"], v.setting["optim.lr"]) for v in visits]


def test_the_search_visits_the_points_worked_out_by_hand():
    visits = coordinate_search(grpo_axes(), {"rollout.samples_per_prompt": 8, "optim.lr": 1e-4}, 20, peaked())
    assert trace(visits) == [
        ("start", 8, 1e-4),  # 0.27
        # pass 1, the group size: 4 (0.26) and 16 (0.28); 16 is the highest probed, so widen to 32 (0.27)
        ("probe", 4, 1e-4), ("probe", 16, 1e-4), ("widen", 32, 1e-4),
        # the learning rate at G=16, by x2: 5e-5 (0.26), 2e-4 (0.30), the top probed: widen to 4e-4 (0.28)
        ("probe", 16, 5e-5), ("probe", 16, 2e-4), ("widen", 16, 4e-4),
        # pass 2 from (16, 2e-4): G=8 and 32 (0.29 each); lr x2 either side was run in pass 1 (no cost)
        ("probe", 8, 2e-4), ("probe", 32, 2e-4),
        # nothing moved: the learning rate's step halves to x1.41 (1.41e-4, 2.83e-4: 0.29 each), then x1.19
        ("refine", 16, 1.41e-4), ("refine", 16, 2.83e-4), ("refine", 16, 1.68e-4), ("refine", 16, 2.38e-4),
    ]  # a pass at the finest step moved nothing: converged after 13 of 20 points
    best = chosen_visit(visits)
    assert best.setting == {"rollout.samples_per_prompt": 16, "optim.lr": 2e-4} and best.score == pytest.approx(0.30)


def test_the_point_budget_stops_the_search_and_a_seen_setting_costs_nothing():
    calls = []

    def score(setting):
        calls.append(setting)
        return peaked()(setting)

    visits = coordinate_search(grpo_axes(), {"rollout.samples_per_prompt": 8, "optim.lr": 1e-4}, 6, score)
    assert len(visits) == len(calls) == 6  # the sixth point is the last: 2e-4 at G=16, the widening to 4e-4 never runs
    assert trace(visits)[-1] == ("probe", 16, 2e-4)
    assert len({repr(sorted(c.items())) for c in calls}) == 6  # every point a distinct setting


def test_every_arm_gets_the_same_point_budget_whatever_its_axes():
    """PPO's four axes and GRPO's two are searched on the same number of points (a score that keeps rising with
    the learning rate never lets either converge)."""
    rising = lambda setting: setting["optim.lr"]  # noqa: E731
    ppo = declared_axes("ppo", {"rollout.samples_per_prompt": 8, "optim.lr": 1e-4, "algorithms.ppo.critic_lr": 2e-4,
                                "algorithms.ppo.critic_warmup_steps": 0}, batch_size=256, steps=120)
    grpo = declared_axes("grpo", {"rollout.samples_per_prompt": 8, "optim.lr": 1e-4}, batch_size=256, steps=120)
    starts = [{a.field: (8 if "samples" in a.field else 0 if "warmup" in a.field else 1e-4) for a in axes}
              for axes in (ppo, grpo)]
    spent = [len(coordinate_search(axes, start, 9, rising)) for axes, start in zip((ppo, grpo), starts)]
    assert spent == [9, 9]


def test_an_axis_is_widened_until_its_best_is_inside_what_was_probed():
    # the best learning rate is 16x the start: widening by x2 from the top probed value, 2e-4, 4e-4, 8e-4, 1.6e-3
    axes = [log_axis("optim.lr", 1e-4)]
    visits = coordinate_search(axes, {"optim.lr": 1e-4}, 7, lambda s: -abs(math.log2(s["optim.lr"] / 1.6e-3)))
    assert [(v.why, v.setting["optim.lr"]) for v in visits] == [
        ("start", 1e-4), ("probe", 5e-5), ("probe", 2e-4), ("widen", 4e-4), ("widen", 8e-4), ("widen", 1.6e-3),
        ("widen", 3.2e-3)]  # 3.2e-3 is worse than 1.6e-3: the best is inside, widening stops
    report = edge_report(axes, visits, chosen_visit(visits).setting)
    assert report == [{"field": "optim.lr", "value": 1.6e-3, "below": 8e-4, "above": 3.2e-3, "status": "interior",
                       "note": "", "final": True, "with": {}}]


def test_a_chosen_value_at_an_edge_or_a_bound_is_reported():
    layout = count_axis("rollout.samples_per_prompt", 8, [1, 2, 4, 8, 16], first=(1, 4, 8))
    # PPO's first visit of the layout probes 1 and 4 (8 is the start); 1 is best and the hard bound: no widening
    visits = coordinate_search([layout], {"rollout.samples_per_prompt": 8}, 10,
                               lambda s: -s["rollout.samples_per_prompt"])
    assert [v.setting["rollout.samples_per_prompt"] for v in visits] == [8, 1, 4, 2]  # then 2, its finer neighbour
    assert edge_report([layout], visits, chosen_visit(visits).setting) == [
        {"field": "rollout.samples_per_prompt", "value": 1, "below": None, "above": 2, "status": "bound",
         "note": "at its lower bound", "final": True, "with": {}}]
    # a learning rate whose budget (3 points) runs out before the widening past the best, 2e-4
    lr = log_axis("optim.lr", 1e-4)
    visits = coordinate_search([lr], {"optim.lr": 1e-4}, 3, lambda s: s["optim.lr"])
    assert [v.setting["optim.lr"] for v in visits] == [1e-4, 5e-5, 2e-4]
    assert edge_report([lr], visits, chosen_visit(visits).setting) == [
        {"field": "optim.lr", "value": 2e-4, "below": 1e-4, "above": None, "status": "edge",
         "note": "nothing probed above (the budget ran out)", "final": True, "with": {}}]
    # both axes: at the chosen learning rate, 2e-4, the layout was never probed; it was at 1e-4, where 1 sat at
    # its bound with 4 probed above: that line is reported, with the learning rate it was probed at
    visits = coordinate_search([layout, lr], {"rollout.samples_per_prompt": 8, "optim.lr": 1e-4}, 5,
                               lambda s: -s["rollout.samples_per_prompt"] + s["optim.lr"])
    assert [(v.setting["rollout.samples_per_prompt"], v.setting["optim.lr"]) for v in visits] == [
        (8, 1e-4), (1, 1e-4), (4, 1e-4), (1, 5e-5), (1, 2e-4)]
    report = edge_report([layout, lr], visits, chosen_visit(visits).setting)
    assert report[0] == {"field": "rollout.samples_per_prompt", "value": 1, "below": None, "above": 4,
                         "status": "bound", "note": "at its lower bound", "final": False, "with": {"optim.lr": 1e-4}}
    assert report[1]["status"] == "edge" and report[1]["final"]  # 2e-4: nothing above it was ever probed


def test_a_failed_point_ranks_below_every_finished_one():
    axes = [count_axis("rollout.samples_per_prompt", 8, [4, 8, 16])]
    scores = {4: None, 8: 0.2, 16: 0.1}  # 4 diverged
    visits = coordinate_search(axes, {"rollout.samples_per_prompt": 8}, 10,
                               lambda s: scores[s["rollout.samples_per_prompt"]])
    assert [v.setting["rollout.samples_per_prompt"] for v in visits] == [8, 4, 16]
    assert chosen_visit(visits).setting == {"rollout.samples_per_prompt": 8}
    assert chosen_visit(visits[1:2]) is None  # nothing finished: no choice


def test_each_algorithm_declares_its_axes_in_a_stated_order():
    current = {"rollout.samples_per_prompt": 8, "optim.lr": 5e-5, "algorithms.ppo.critic_lr": 2e-4,
               "algorithms.ppo.critic_warmup_steps": 0}
    ppo = declared_axes("ppo", current, batch_size=256, steps=120)
    assert [a.field for a in ppo] == ["rollout.samples_per_prompt", "optim.lr", "algorithms.ppo.critic_lr",
                                      "algorithms.ppo.critic_warmup_steps"]
    assert ppo[0].ladder == (1, 2, 4, 8, 16, 32, 64, 128, 256) and ppo[0].first == (1, 4)  # 1, 4, 8 with 8 the start
    assert ppo[3].ladder == (0, 2, 4, 8, 16, 32)  # at most half of a point's 120 steps
    assert (ppo[1].ladder[0], ppo[1].ladder[-1]) == (7.81e-7, 3.2e-3)  # 5e-5 / 64 and x 64, three digits
    grpo = declared_axes("grpo", current, batch_size=256, steps=120)
    assert [a.field for a in grpo] == ["rollout.samples_per_prompt", "optim.lr"]
    assert grpo[0].ladder == (2, 4, 8, 16, 32, 64, 128, 256) and grpo[0].first == ()  # a group of one has no baseline
    assert declared_axes("trl-grpo", current, 256, 120)[0].ladder == grpo[0].ladder
    assert declared_axes("reinforce_pp", current, 256, 120)[0].ladder[0] == 1
    assert powers_of_two(1, 6) == [1, 2, 4]


def test_a_start_off_the_ladder_joins_it():
    assert count_axis("algorithms.ppo.critic_warmup_steps", 5, [0, 2, 4, 8]).ladder == (0, 2, 4, 5, 8)
    assert Axis("x", (1, 2)).text(1) == "x in [1*, 2]"


def test_a_validation_curve_stops_rising_where_its_moving_mean_comes_within_a_standard_error_of_its_best():
    # centred moving means over 3 evaluations (2 at the ends): .15, .20, .28, .33, .3433, .3467, .345; the best,
    # .3467 at step 50, has a binomial SE of sqrt(.3467 * .6533 / 500) = 2.13 points: .33 at step 30 is the
    # first within it
    curve = [(0, .10), (10, .20), (20, .30), (30, .34), (40, .35), (50, .34), (60, .35)]
    result = plateau_step(curve, prompts=500)
    assert result["step"] == 30 and result["best_step"] == 50
    assert result["best"] == pytest.approx((.35 + .34 + .35) / 3)
    assert result["se"] == pytest.approx(math.sqrt(result["best"] * (1 - result["best"]) / 500))
    assert not result["rising"] and not result["flat"]
    still = plateau_step([(0, .1), (10, .2), (20, .3)], prompts=500)  # means .15, .2, .25: best at the end
    assert still["rising"] and still["step"] == 20
    flat = plateau_step([(0, .2), (10, .21), (20, .2), (30, .19)], prompts=500)
    assert flat["flat"]  # its best moving mean is its start's, .205: never a standard error above it
