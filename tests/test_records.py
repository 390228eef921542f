"""The typed result records (harness.results.records, harness.results.step_record) and the units.

A record read and written again is the file it was; files of older versions and of arms that died
midway read without a crash, a missing or mistyped value as None; the headline row is read from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness import UserError
from harness.results.headline import MEMORY_FIGURES, TIME_FIGURES, headline
from harness.results.records import FIGURE, ComparisonPlan, Summary
from harness.results.step_record import StepRecord
from harness.results.units import GIB, MIB, fmt, human_bytes

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "cpu-smoke.json"

# A summary as the runner writes it under torchrun on a GPU: every section, per-rank figures, NVML
SUMMARY = {
    "arm": "ppo-n1", "overrides": {"rollout.samples_per_prompt": 1}, "algo": "ppo", "seed": 1, "task": "chain_sum",
    "preset": "smoke", "model": "tiny", "status": "ok", "error": None, "world_size": 2,
    "budget": {"unit": "completions", "total": 96, "used": {"completions": 96, "tokens": 400, "steps": 3}},
    "steps": 3, "wall_s": 12.5,
    "eval": {"base": {"accuracy": 0.25, "score": 0.5, "format": 1.0, "n": 4, "per_prompt": [1, 0, 0, 0]},
             "final": {"accuracy": 0.5, "score": 0.5, "format": 1.0, "n": 4, "per_prompt": [1, 1, 0, 0]},
             "lm_eval": {"base": None, "final": {"pass@1": 0.5, "k": 2, "extra": {}}}},
    "mem": {"live": {"peak": 300, "peak_phase": "policy_update",
                     "phases": {"generate": {"total": 200, "kv_cache": 50}, "policy_update": {"total": 300}},
                     "tracked_steps": 3, "every": 1, "per_rank": [{"peak": 300, "phases": {}}, {"peak": 280, "phases": {}}]},
            "arithmetic": {"models": {"policy": {"params": 8, "grads": 8, "optimizer": 16, "total": 32}},
                           "model_state_total": 32, "per_rank": [{}, {}]},
            "measured": {"rss_peak_net": 1000, "rss_peak": 5000, "cuda_allocated_peak": {"generate": 3 * GIB, "update": 5 * GIB},
                         "cuda_reserved_peak": {"update": 6 * GIB}, "device_name": "NVIDIA H100",
                         "nvml": {"used_peak": 7 * GIB, "energy_j": 1e5}}},
    "time": {"train_s": 12.0, "eval_s": 0.5, "per_step_s": 4.0, "per_step_excludes_tracked": False,
             "phases_s": {"generate": 6.0}, "phases_per_step_s": {"generate": 2.0}},
    "tput": {"samples_per_s": 8.0, "gen_tokens_per_s": 66.5},
    "written_by_a_newer_harness": {"anything": [1, 2]},
}


def test_a_summary_reads_and_writes_back_unchanged():
    assert Summary.read(SUMMARY).to_json() == SUMMARY
    assert json.dumps(Summary.read(SUMMARY).to_json(), sort_keys=True) == json.dumps(SUMMARY, sort_keys=True)
    # an int stays an int and a float a float: the file does not change type on a round trip
    assert type(Summary.read({"wall_s": 3}).to_json()["wall_s"]) is int


def test_the_committed_baselines_memory_reads_back_unchanged():
    from harness.results.records import Memory
    for arm in json.loads(BASELINE.read_text())["arms"]:
        assert Memory.read(arm["mem"]).to_json() == arm["mem"]


def test_the_headline_row_of_a_full_summary():
    row = headline(Summary.read(SUMMARY))
    assert (row["arm"], row["algo"], row["seed"], row["status"]) == ("ppo-n1", "ppo", 1, "ok")
    assert row["acc_base"] == 0.25 and row["acc_final"] == 0.5 and row["acc_delta"] == 0.25
    assert row["mem_live_peak"] == 300 and row["mem_live_phases"] == {"generate": 200, "policy_update": 300}
    # the allocator's figure is the largest phase's; NVML's its used peak
    assert row["mem_cuda_allocated"] == 5 * GIB and row["mem_cuda_reserved"] == 6 * GIB and row["mem_nvml_used"] == 7 * GIB
    assert row["wall"] == 12.0 and row["time_basis"] == "train_s" and row["completions"] == 96
    assert row["lm_eval_final"] == {"pass@1": 0.5, "k": 2, "extra": {}}


def test_an_old_or_broken_summary_reads_with_gaps_never_a_crash():
    # written before time.train_s, with the wall time only; no memory section; damaged values
    old = {"algo": "grpo", "seed": 0, "status": "ok", "wall_s": 30.0, "steps": "three",
           "eval": {"base": "lost", "final": {"accuracy": "high"}}, "mem": None, "time": {"per_step_s": 2.0}}
    summary = Summary.read(old)
    assert summary.steps is None and summary.eval.base is None and summary.eval.final.accuracy is None
    row = headline(summary)
    assert row["arm"] == "grpo" and row["wall"] == 30.0 and row["time_basis"] == "wall_s"
    assert row["mem_live_peak"] is None and row["models"] == {} and "acc_delta" not in row
    # a missing section reads empty; what the file did not say is not written back
    assert Summary.read({"algo": "grpo"}).to_json() == {"algo": "grpo"}
    assert Summary.read([1, 2]).to_json() == {} and Summary.read(None).name is None


def test_the_running_placeholder_is_three_keys():
    assert Summary(algo="grpo", seed=0, status="running").to_json() == {"algo": "grpo", "seed": 0, "status": "running"}


def test_every_cost_figure_says_what_it_is_and_how_it_is_gated():
    for key, label, unit in MEMORY_FIGURES + TIME_FIGURES:
        assert label.split(":")[0] in ("measured", "arithmetic") or FIGURE[key].group == "time", key
        assert unit in ("MiB", "s", "1/s")
    gated = {f.key: f.gate for f in FIGURE.values() if f.group == "memory"}
    assert gated == {"mem_live_peak": "exact", "mem_model_state": "exact", "mem_rss_net": "info",
                     "mem_cuda_allocated": "gpu", "mem_cuda_reserved": "gpu", "mem_nvml_used": "gpu"}


STEP = {"step": 2, "completions": 64, "tokens": 300, "reward/mean": 0.5, "reward/std": 0.1, "reward/accuracy": 0.25,
        "reward/correct": 0.25, "reward/format": 1.0, "completion/len_mean": 4.7, "time/step": 1.5,
        "tput/gen_tokens_per_s": 100.0, "tput/train_tokens_per_s": 200.0, "tput/samples_per_s": 21.3,
        "flops/step": 123456, "loss/loss": 0.1, "loss/kl": 0.01, "time/generate": 0.5, "time/policy_update": 0.7,
        "mem/model_state/policy/params": 8, "mem/model_state/policy/total": 32, "mem/tracked": True,
        "mem/live/generate/total": 200, "mem/live/generate/kv_cache": 50, "mem/live/peak": 200,
        "mem/live/peak_phase": "generate", "mem/rss_peak_net": 1000, "mem/cuda_allocated_peak/generate": 3 * GIB,
        "train_s": 3.0, "wall": 3.5, "rollout/sampled": 80, "rollout/rounds": 2, "rollout/kept": 64,
        "eval/accuracy": 0.5, "eval/n": 4, "time/eval": 0.5, "something/new": 1}


def test_a_step_record_reads_into_its_families_and_writes_the_same_line():
    record = StepRecord.read(STEP)
    assert record.losses == {"loss": 0.1, "kl": 0.01} and record.phase_s == {"generate": 0.5, "policy_update": 0.7}
    assert record.model_state == {"policy": {"params": 8, "total": 32}}
    assert record.live == {"generate": {"total": 200, "kv_cache": 50}} and record.live_peak == 200
    assert record.measured == {"mem/rss_peak_net": 1000, "mem/cuda_allocated_peak/generate": 3 * GIB}
    assert record.step_s == 1.5 and record.eval_s == 0.5 and record.eval == {"accuracy": 0.5, "n": 4}
    assert record.flops == 123456 and type(record.to_json()["flops/step"]) is int
    assert record.to_json() == STEP


def test_a_diverged_step_keeps_its_nan_and_an_untracked_step_says_nothing_of_live_tensors():
    record = StepRecord(step=1, losses={"loss": math.nan}, diverged="loss is nan")
    line = record.to_json()
    assert math.isnan(line["loss/loss"]) and line["diverged"] == "loss is nan"
    assert not any(key.startswith("mem/") for key in line) and "flops/mfu" not in line
    assert StepRecord.read({"step": 4, "completions": 128}).train_s is None  # written before train_s


def test_a_comparison_plan_refuses_a_damaged_file_in_one_line(tmp_path):
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps({"arms": [{"dir": "a"}], "algos": ["grpo"], "budget": {"unit": "steps", "total": 3}}))
    plan = ComparisonPlan.load(path)
    assert plan.arms[0].dir == "a" and plan.arms[0].seed is None and plan.budget.total == 3
    assert plan.to_json() == json.loads(path.read_text())  # the budget of a comparison has no `used`
    path.write_text(json.dumps({"arms": [{"algo": "grpo"}]}))
    with pytest.raises(UserError, match="an entry of 'arms' has no folder"):
        ComparisonPlan.load(path)
    path.write_text(json.dumps({"arms": "grpo"}))
    with pytest.raises(UserError, match="damaged"):
        ComparisonPlan.load(path)


def test_one_formatter_for_every_table():
    # MiB: three decimals under 10 MiB, one above; shares in percent; signed points; ratios to three places
    assert fmt(1.5 * MIB, "MiB") == "1.500" and fmt(1536 * MIB, "MiB") == "1,536.0"
    assert fmt(0.4567, "%") == "45.7%" and fmt(0.031, "pts") == "+3.1 pts" and fmt(2 / 3, "ratio") == "0.667"
    assert fmt(None) == "—" and fmt(12, "") == "12" and fmt("ok") == "ok"
    assert human_bytes(-3 * MIB) == "-3.00 MiB" and human_bytes(GIB) == "1.00 GiB"
