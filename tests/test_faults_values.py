"""The fault matrix (see fault_helpers.py): values and inputs refused in one line before any folder is written."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from fault_helpers import assert_one_line, run_main


# ---------------------------------------------------------------- 7. values that got past validation

BAD_VALUES = [
    ("optim.lr=-1", "optim.lr: must be above 0, got -1.0"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("rollout.temperature=0", "rollout.temperature: must be above 0, got 0.0"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens: must be at least 1, got 0"),
    ("optim.epochs=0", "optim.epochs: must be at least 1, got 0"),
    ("optim.minibatches=0", "optim.minibatches: must be at least 1, got 0"),
    ("task.eval_size=0", "task.eval_size: must be at least 1, got 0"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm: must be above 0, got -1.0"),
    ("rollout.top_p=0", "rollout.top_p: must be above 0, got 0.0"),
    ("rollout.top_p=1.5", "rollout.top_p: must be at most 1, got 1.5"),
    ("budget.total=true", "budget.total: must be an integer, got True"),
    ("run.lm_eval=maybe", "run.lm_eval: must be true or false, got 'maybe'"),
    ("run.lm_eval=1", "run.lm_eval: must be true or false, got 1"),
    ("run.eval_every=3.5", "run.eval_every: must be an integer, got 3.5"),
    ("run.seed=5000", "run.seed: must be at most 4293, got 5000"),
    ("run.seed=-1", "run.seed: must be at least 0, got -1"),
    ("model.hidden_size=30", "model.hidden_size=30 must split into model.num_heads=2 heads of an even width"),
    ("algorithms.a2c.lr=1", "unknown section 'algorithms.a2c'; valid: algorithms.dapo, algorithms.dr_grpo, "),
    ("algorithms.grpo.beta=-0.1", "algorithms.grpo.beta: must be at least 0, got -0.1"),
    ("algorithms.grpo.beta=nan", "algorithms.grpo.beta: must be a finite number, got nan"),
    ("algorithms.ppo.clip_eps=1.5", "algorithms.ppo.clip_eps: must be at most 1, got 1.5"),
    ("algorithms.ppo.gamma=2", "algorithms.ppo.gamma: must be at most 1, got 2.0"),
    ("algorithms.ppo.critic_warmup_steps=3.5", "algorithms.ppo.critic_warmup_steps: must be an integer, got 3.5"),
    ("algorithms.grpo.scale=std", "algorithms.grpo.scale: 'std' is not one of: group, batch, none"),
    ("algorithms.grpo.betta=0.1", "unknown config field 'algorithms.grpo.betta'; valid: aggregation, beta, eps_high,"),
    ("optim.micro_batch_size=-1", "optim.micro_batch_size: must be at least 0, got -1"),
    ("rollout.logprob_batch_size=-8", "rollout.logprob_batch_size: must be at least 0, got -8"),
    ("verdict.band=0.6", "verdict.band must lie below verdict.claim (the band is a half-width around the claim), "
                         "got 0.5 ± 0.6"),
    ("run.node_rank=1", "run.node_rank=1 must be below run.nnodes=1"),
    ("task.options.max_digitz=3", "unknown option 'task.options.max_digitz' of task chain_sum; valid: allow_negation,"),
    ("task.options.max_digits=two", "task.options.max_digits expects int, got 'two'"),
    ("task.options.max_digits=0", "task.options of chain_sum: max_digits must be >= min_digits"),
    ("task.reward_timeout=0", "task.reward_timeout: must be above 0, got 0.0"),
    ("task.reward_timeout=inf", "task.reward_timeout: must be a finite number, got inf"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_7_a_bad_value_is_one_line_before_any_folder(tmp_path, capsys, override, message):
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--results-dir", tmp_path / "results",
                            "--set", override)
    assert_one_line(code, err, message)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("budget:\n  total: true\n", "budget.total: must be an integer, got True"),
    ("run:\n  lm_eval: maybe\n", "run.lm_eval: must be true or false, got 'maybe'"),
    ("algorithms:\n  grpo: 0.1\n", "algorithms.grpo: must be a mapping, got 0.1"),
    ("rollout: 3\n", "rollout: must be a mapping of fields, got 3"),
    ("rollout:\n  colour: red\n", "unknown config field 'rollout.colour'; valid: backend, batch_size,"),
    ("algorithms:\n  grpo:\n    eps_low: 0\n", "algorithms.grpo.eps_low: must be above 0, got 0.0"),
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


def test_7_every_numeric_field_declares_its_bounds():
    """Every number of the config and of every algorithm's options has bounds on its field (a new one is refused
    here until it says its range), and `harness config` shows them."""
    from harness.config.reference import field_rows
    numeric = [row for row in field_rows() if row.type in ("int", "float")]
    assert len(numeric) >= 80 and {row.section for row in numeric} >= {"run", "verdict", "algorithms.ppo"}
    assert [row.dotted for row in numeric if not row.bounds] == []


# ---------------------------------------------------------------- 26.7 what every arm shares is not an arm's

@pytest.mark.parametrize("override", ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=2",
                                      "model.name=Qwen/Qwen2.5-0.5B", "model.vocab_pad_to=1024",
                                      "model.warm_start_steps=10", "model.warm_start_lr=0.1", "model.precision=bf16-mixed",
                                      "run.device=cuda", "task.name=spell_backward"])
def test_26_7_a_per_arm_override_of_a_shared_field_is_refused(tmp_path, capsys, override):
    field = override.split("=")[0]
    for command in ("compare", "plan"):
        code, _, err = run_main(capsys, command, "--preset", "smoke", "--algos", f"grpo,big=ppo:{override}",
                                "--results-dir", tmp_path / "results")
        assert_one_line(code, err, f"arm big: {field} is the same for every arm of a comparison (fairness); set it for "
                                   "all arms with --set")
    assert not (tmp_path / "results").exists()


def test_26_7_gradient_checkpointing_stays_an_arms_own_choice():
    from harness.commands.compare import plan_arms
    from harness.config.load import load_config
    arms = plan_arms(load_config("smoke"), ["grpo", "ppo-ckpt=ppo:model.gradient_checkpointing=true"], [0])
    assert [a["config"].model.gradient_checkpointing for a in arms] == [False, True]


# ---------------------------------------------------------------- 26.9 one line, never a traceback, no folder

def bad_data(folder, kind: str):
    path = folder / {"utf8": "bad.jsonl", "utf8-json": "bad.json", "parquet": "bad.parquet",
                     "nested": "deep.json", "nested-jsonl": "deep.jsonl"}[kind]
    path.write_bytes({"utf8": b'\xff\xfe{"prompt": "1+1=", "answer": "2"}\n',
                      "utf8-json": b'[{"prompt": "1+1=", "answer": "\xe9"}]',
                      "parquet": b"PAR1 not a parquet file PAR1",
                      "nested": b"[" * 100_000 + b"]" * 100_000,
                      "nested-jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n"}[kind])
    return path


@pytest.mark.parametrize("kind, message", [
    ("utf8", "is not UTF-8 text (byte 0); save it as UTF-8"),
    ("utf8-json", "is not UTF-8 text (byte 31); save it as UTF-8"),
    ("parquet", "is not a readable Parquet file: "),
    ("nested", "is nested too deeply to be examples: give one flat JSON object per example"),
    ("nested-jsonl", "is nested too deeply to be examples: give one flat JSON object per example"),
])
def test_26_9_a_data_file_that_is_not_examples(tmp_path, capsys, kind, message):
    path = bad_data(tmp_path, kind)
    for flags in (("--task", f"data:{path}"), ("--task", "data:" + str(bad_data_ok(tmp_path)), "--eval-file", path)):
        code, _, err = run_main(capsys, "compare", "--preset", "smoke", *flags, "--results-dir", tmp_path / "results")
        assert_one_line(code, err, f"{path} {message}")
    assert not (tmp_path / "results").exists()


def bad_data_ok(folder):
    path = folder / "good.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(40)))
    return path


def test_26_9_eval_of_a_model_folder_with_damaged_weights(tmp_path, capsys):
    from transformers import Qwen2Config

    from harness.train.models import char_tokenizer
    model = tmp_path / "model"
    Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=64, vocab_size=16).save_pretrained(model)
    char_tokenizer("0123456789+=").save_pretrained(model)
    (model / "model.safetensors").write_bytes(b"not weights" * 10)
    before = set(os.listdir(tmp_path)), set(os.listdir("/tmp"))
    code, _, err = run_main(capsys, "eval", model, "--tasks", "chain_sum", "--k", 0, "--limit", 2)
    assert_one_line(code, err, f"cannot load model '{model}': Error while deserializing header")
    assert (set(os.listdir(tmp_path)), set(os.listdir("/tmp"))) == before  # no scores folder made for nothing


@pytest.mark.parametrize("field, value", [("hidden_size", -64), ("num_hidden_layers", 0), ("vocab_size", 1.5),
                                          ("num_attention_heads", True)])
def test_26_9_a_model_config_with_a_size_that_is_no_size(tmp_path, capsys, field, value):
    facts = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 16, field: value}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(facts))
    code, _, err = run_main(capsys, "estimate", "--model", path, "--no-cache")
    assert_one_line(code, err, f"{path}: {field} must be a whole number of at least 1, got {value!r}")


@pytest.mark.parametrize("layers, warned", [(80, True), (2, False)])
def test_26_lower_an_estimate_of_a_deep_model_says_up_front_that_it_takes_minutes(tmp_path, capsys, monkeypatch,
                                                                                  layers, warned):
    from harness import UserError
    from harness.estimate import estimator

    def stop(*args, **kwargs):  # the fake step itself (minutes for 80 layers) is not what this row checks
        raise UserError("stopped before the fake step")
    monkeypatch.setattr(estimator, "run_arm", stop)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": layers,
                                "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 128,
                                "vocab_size": 16}))
    code, _, err = run_main(capsys, "estimate", "--model", path, "--no-cache")
    assert code == 2 and "stopped before the fake step" in err, err
    said = f"({layers} decoder layers, each run on fake tensors: minutes on a laptop CPU, cached after)"
    assert (said in err.splitlines()[0]) is warned, err  # the line printed before the step starts


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_26_9_a_progress_interval_that_is_not_seconds(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("HARNESS_PROGRESS_SECONDS", value)
    code, _, err = run_main(capsys, "run", "--algo", "grpo", "--preset", "smoke", "--results-dir", tmp_path / "r")
    assert_one_line(code, err, f"HARNESS_PROGRESS_SECONDS='{value}' must be seconds between progress lines, 0 or more")
    assert not (tmp_path / "r").exists()


def test_26_9_an_arm_name_too_long_for_a_folder(tmp_path, capsys):
    code, _, err = run_main(capsys, "compare", "--preset", "smoke", "--algos", f"grpo,{'a' * 300}=ppo",
                            "--results-dir", tmp_path / "r")
    assert_one_line(code, err, "has 300 characters; at most 64 (it names the arm's folders)")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- 26.10 tolerances are numbers

@pytest.mark.parametrize("flag, value", [("--exact-tolerance", "nan"), ("--exact-tolerance", "inf"),
                                         ("--tolerance", "-5%"), ("--tolerance", "nan%")])
def test_26_10_a_tolerance_that_would_switch_the_gate_off(tmp_path, capsys, flag, value):
    code, _, err = run_main(capsys, "check", tmp_path, "--baseline", tmp_path / "b.json", f"{flag}={value}")
    assert_one_line(code, err, f"{flag} must be a finite percentage of 0 or more, got '{value}'")


# ---------------------------------------------------------------- 26 lower: sweep and plan

def test_26_lower_a_sweep_grid_field_no_arm_reads_is_refused(tmp_path, capsys):
    code, _, err = run_main(capsys, "sweep", "--preset", "smoke", "--grid", "algorithms.a2c.lr=1,2",
                            "--grid", "optim.lr=1e-4,2e-4", "--results-dir", tmp_path / "r")
    assert_one_line(code, err, "--grid algorithms.a2c.lr applies to no arm: none runs a2c (arms: grpo=grpo, ppo=ppo)")
    code, _, err = run_main(capsys, "sweep", "--preset", "smoke", "--algos", "grpo,ppo", "--grid",
                            "algorithms.dapo.eps_high=0.2,0.3", "--results-dir", tmp_path / "r")
    assert_one_line(code, err, "--grid algorithms.dapo.eps_high applies to no arm: none runs dapo (arms: grpo=grpo, "
                               "ppo=ppo)")
    assert not (tmp_path / "r").exists()


def test_26_lower_sweep_seeds_zero_is_refused(tmp_path, capsys):
    code, _, err = run_main(capsys, "sweep", "--preset", "smoke", "--grid", "optim.lr=1e-4,2e-4", "--seeds", 0,
                            "--results-dir", tmp_path / "r")
    assert_one_line(code, err, "--seeds and --compare-seeds must be at least 1")
    assert not (tmp_path / "r").exists()


def test_26_lower_a_big_sweep_says_its_cost_and_asks_for_yes(tmp_path, capsys, monkeypatch):
    grid = ["--grid", "optim.lr=" + ",".join(f"{i}e-5" for i in range(1, 101)), "--grid",
            "optim.weight_decay=" + ",".join(f"0.{i:02d}" for i in range(100))]
    code, _, err = run_main(capsys, "sweep", "--preset", "smoke", *grid, "--results-dir", tmp_path / "r")
    assert_one_line(code, err, "this sweep has 20000 point runs, 60000 training steps in all; no finished run of "
                               f"preset smoke with this model and task in {tmp_path / 'r'} to time them by; add --yes "
                               "to start it, or narrow the grid")
    assert not (tmp_path / "r").exists()
    from harness.commands import sweep
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: 0)
    code, out, _ = run_main(capsys, "sweep", "--preset", "smoke", "--grid", "optim.lr=1e-4,2e-4",
                            "--results-dir", tmp_path / "r")
    assert code == 0 and "expected: 4 point runs, 12 training steps in all; no finished run of preset smoke" in out


def test_26_lower_plan_takes_the_arm_variants_compare_takes(capsys):
    code, out, err = run_main(capsys, "plan", "--preset", "smoke", "--algos",
                              "grpo,ppo-n1=ppo:rollout.samples_per_prompt=1")
    assert code == 0, err
    assert "final greedy held-out accuracy, GRPO − PPO-N1, paired by seed" in out
