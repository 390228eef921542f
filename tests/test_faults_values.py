"""The fault matrix (see fault_helpers.py): values and inputs refused in one line before any folder is written."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from fault_helpers import (assert_one_line, run_main)


# ---------------------------------------------------------------- 7. values that got past validation

BAD_VALUES = [
    ("optim.lr=-1", "optim.lr must be above 0, got -1.0"),
    ("optim.lr=nan", "config field 'optim.lr' expects a finite number, got nan"),
    ("rollout.temperature=0", "rollout.temperature must be above 0, got 0.0"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens must be at least 1, got 0"),
    ("optim.epochs=0", "optim.epochs must be at least 1, got 0"),
    ("optim.minibatches=0", "optim.minibatches must be at least 1, got 0"),
    ("task.eval_size=0", "task.eval_size must be at least 1, got 0"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm must be above 0, got -1.0"),
    ("rollout.top_p=0", "rollout.top_p must be in (0, 1], got 0.0"),
    ("rollout.top_p=1.5", "rollout.top_p must be in (0, 1], got 1.5"),
    ("budget.total=true", "config field 'budget.total' expects an integer, got True"),
    ("run.lm_eval=maybe", "config field 'run.lm_eval' expects true or false, got 'maybe'"),
    ("run.lm_eval=1", "config field 'run.lm_eval' expects true or false, got 1"),
    ("run.seed=5000", "run.seed must be in [0, 4293], got 5000"),
    ("run.seed=-1", "run.seed must be in [0, 4293], got -1"),
    ("model.hidden_size=30", "model.hidden_size=30 must split into model.num_heads=2 heads of an even width"),
    ("algorithms.a2c.lr=1", "unknown section 'algorithms.a2c'; valid: algorithms.dapo, algorithms.dr_grpo, "),
    ("algorithms.grpo.beta=-0.1", "algorithms.grpo: beta must be >= 0, got -0.1"),
    ("algorithms.grpo.beta=nan", "config field 'algorithms.grpo.beta' expects a finite number, got nan"),
    ("algorithms.ppo.clip_eps=1.5", "algorithms.ppo: clip_eps must be <= 1, got 1.5"),
    ("algorithms.ppo.gamma=2", "algorithms.ppo: gamma must be <= 1, got 2.0"),
    ("optim.micro_batch_size=-1", "optim.micro_batch_size must be 0 or more, got -1"),
    ("rollout.logprob_batch_size=-8", "rollout.logprob_batch_size must be 0 or more, got -8"),
    ("task.options.max_digitz=3", "unknown option 'task.options.max_digitz' of task chain_sum; valid: allow_negation,"),
    ("task.options.max_digits=two", "task.options.max_digits expects int, got 'two'"),
    ("task.options.max_digits=0", "task.options of chain_sum: max_digits must be >= min_digits"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_7_a_bad_value_is_one_line_before_any_folder(tmp_path, capsys, override, message):
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--results-dir", tmp_path / "results",
                            "--set", override)
    assert_one_line(code, err, message)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("budget:\n  total: true\n", "config field 'budget.total' expects an integer, got True"),
    ("run:\n  lm_eval: maybe\n", "config field 'run.lm_eval' expects true or false, got 'maybe'"),
    ("algorithms:\n  grpo: 0.1\n", "algorithms.grpo must be a mapping of options, got 0.1"),
])
def test_7_a_bad_value_in_a_config_file(tmp_path, capsys, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--config", path,
                            "--out", tmp_path / "run")
    assert_one_line(code, err, message)
    assert not (tmp_path / "run").exists()


def test_7_a_seed_past_the_limit_from_the_seed_flags(tmp_path, capsys):
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--seed", 4290, "--seeds", 5,
                            "--out", tmp_path / "cmp")
    assert_one_line(code, err, "the seed must be in [0, 4293], got 4294")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.slow
def test_7_a_batch_too_big_for_this_machine_is_refused_before_it_starts(tmp_path):
    # 2**30 completions of the smoke model: its KV cache alone is hundreds of GiB. Before the check this
    # ran until the machine ran out of memory; the address-space limit keeps a regression from doing so.
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
    result = subprocess.run([sys.executable, "-m", "harness", "run", "--algo", "grpo", "--preset", "smoke",
                             "--set", "rollout.batch_size=1073741824", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert_one_line(result.returncode, result.stderr, "this run needs at least ")
    assert "GiB available; lower rollout.batch_size, rollout.max_new_tokens or rollout.logprob_batch_size" in result.stderr
    assert not (tmp_path / "run").exists()


def test_7_every_numeric_field_has_its_range_in_one_place():
    import dataclasses

    from harness.config.schema import FIELD_RANGES, Config
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)
                if dataclasses.is_dataclass(f.default_factory) and f.name != "verdict"}  # verdict: validate_verdict
    numeric = {f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)
               if f.type in ("int", "float")}
    assert len(numeric) >= 30 and numeric <= set(FIELD_RANGES), numeric - set(FIELD_RANGES)
