"""harness estimate: each arm's own step on fake tensors, checked against the live tensors a real run of
the same config measures on the CPU, against hand arithmetic, and on bad input."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from conftest import run_cli
from harness.config.load import load_config, preset_names
from harness.results.units import GIB

COMPUTE = ("activations", "temporaries", "kv_cache", "weight_casts")  # how the tracker files what a step computes
MODEL_STATE = ("params", "grads", "optimizer")


# ---------------------------------------------------------------- estimate vs measured on the CPU

def measured_step(config, algo):
    """A real arm's second step on the CPU under LiveTensors: {phase: peak by category}, and the step's
    shapes (rows, prompt length, completion length, and the tokens generate ran: it stops once every
    completion has ended, and a tracked step's ids are then widened to the full length)."""
    import harness.train.arm as runner
    from harness.measure.live_tensors import LiveTensors
    from harness.measure.probes import Probes
    from harness.measure.step_meter import StepMeter
    from harness.train.checkpoint import RunState
    shapes = {}
    real_generate = runner.generate

    def spy(*args, **kwargs):
        rollout = real_generate(*args, **kwargs)
        batch = rollout.batch
        # what generate ran: the longest completion (its mask holds the tokens up to and including EOS)
        shapes.update(rows=batch.size, prompt=batch.prompt_length, completion=batch.completion_mask.shape[1],
                      sampled=int(batch.completion_mask.sum(1).max()))
        return rollout

    runner.generate = spy
    try:
        arm = runner.Arm(config, algo, Path(tempfile.mkdtemp(prefix="harness-estimate-test-")))
        probes, state = Probes("cpu", enabled=False), RunState()
        arm.train_step(state, StepMeter(probes, None), probes)  # the first step: AdamW's state appears
        live = LiveTensors(arm.algorithm.trained_models().values(), arm.frozen_models().values(),
                           arm.algorithm.optimizers().values())
        meter = StepMeter(probes, live)
        arm.train_step(state, meter, probes)
    finally:
        runner.generate = real_generate
    return meter.tracked_peaks, shapes


def estimated_step(config, algo, shapes):
    from harness.estimate.fake_generation import Workload
    from harness.estimate.fake_step import fake_step
    from harness.estimate.model_specs import resolve_model
    workload = Workload(shapes["rows"], shapes["prompt"], shapes["completion"], config.rollout.samples_per_prompt,
                        sampled_length=shapes.get("sampled", 0))
    # the CPU's optimizer path (per tensor), as the real run on the CPU takes it
    return fake_step(config, algo, resolve_model("tiny", config).config, None, workload, foreach=False).phases


def assert_estimate_matches(measured, estimated):
    """Every phase: model state and the rollout to the byte; the total to the byte, except generate's
    within 1% (its data-dependent checks make a few tensors of a few bytes that the simulation does not)."""
    assert list(estimated) == list(measured)
    for phase, real in measured.items():
        fake = estimated[phase]
        for category in (*MODEL_STATE, "rollout"):
            assert fake.get(category, 0) == real.get(category, 0), (phase, category)
        if phase == "generate":
            assert abs(fake["total"] - real["total"]) <= 0.01 * real["total"], (phase, fake, real)
        else:
            assert fake["total"] == real["total"], (phase, fake, real)
            # autocast's weight copies are their own category in an estimate; a real run files them by when they appear
            assert sum(fake.get(c, 0) for c in COMPUTE) == sum(real.get(c, 0) for c in COMPUTE), phase


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_estimate_equals_live_tensors_measured_on_the_smoke_preset(algo):
    # 8 rows (2 prompts x 4) in 2 minibatches: the same phases and categories as 32, in half the time
    config = load_config("smoke", overrides=["rollout.batch_size=8"])
    measured, shapes = measured_step(config, algo)
    assert_estimate_matches(measured, estimated_step(config, algo, shapes))


def test_estimate_equals_live_tensors_measured_with_the_chunked_log_prob_path():
    # the LM head in chunks of 3 positions (recomputed in backward) in the update and the no-grad passes,
    # under bf16-mixed (autocast's copy of the head's weight made inside the chunked function)
    config = load_config("smoke", overrides=["rollout.batch_size=8", "model.logprob_chunk=3",
                                             "model.precision=bf16-mixed"])
    measured, shapes = measured_step(config, "grpo")
    assert_estimate_matches(measured, estimated_step(config, "grpo", shapes))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_estimate_equals_measured_with_the_chunked_head_on_the_realistic_vocabulary(algo):
    config = load_config("tiny-realistic-vocab", overrides=["model.logprob_chunk=16"])
    measured, shapes = measured_step(config, algo)
    assert_estimate_matches(measured, estimated_step(config, algo, shapes))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_estimate_equals_measured_under_bf16_mixed_with_checkpointing_and_a_joint_critic(algo):
    config = load_config("smoke", overrides=["model.precision=bf16-mixed", "model.gradient_checkpointing=true",
                                             "optim.micro_batch_size=4", "rollout.logprob_batch_size=8",
                                             "algorithms.ppo.critic_pass=joint"])
    measured, shapes = measured_step(config, algo)
    assert_estimate_matches(measured, estimated_step(config, algo, shapes))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny-realistic-vocab"])
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_estimate_equals_measured_on_the_tiny_presets(preset, algo):
    config = load_config(preset)
    measured, shapes = measured_step(config, algo)
    assert_estimate_matches(measured, estimated_step(config, algo, shapes))


def test_skipping_decoding_steps_to_the_last_keeps_the_generate_peak(monkeypatch):
    import harness.estimate.fake_generation as fake_generation
    import harness.estimate.fake_step as fake_step
    from harness.estimate.model_specs import resolve_model
    config = load_config("smoke", overrides=["model.precision=bf16-mixed", "rollout.top_p=0.9"])
    spec = resolve_model("tiny", config)
    # 16 tokens: 3 steps one by one, then the last; a fast-forward that grew nothing would lose 19 kB of peak
    workload = fake_generation.Workload(rows=8, prompt_length=6, completion_length=16, group_size=4)
    fast = fake_step.fake_step(config, "grpo", spec.config, None, workload).phases["generate"]
    monkeypatch.setattr(fake_generation, "FULL_DECODE_STEPS", 10 ** 6)  # every one of the 40 steps
    every = fake_step.fake_step(config, "grpo", spec.config, None, workload).phases["generate"]
    assert fast == every


# ---------------------------------------------------------------- arithmetic

QWEN_7B = 28 * 233_057_792 + 2 * 152_064 * 3_584 + 3_584  # 28 layers, embeddings, LM head (untied), final norm
QWEN_7B_TENSORS = 12 * 28 + 3  # per layer q, k, v (weights and biases), o, gate, up, down, two norms; + 3


@pytest.mark.slow  # two fake steps of a 7B model: half a minute
def test_qwen_7b_model_state_is_16_bytes_per_trained_parameter_and_2_per_frozen():
    from harness.estimate.estimator import estimate
    assert QWEN_7B == 7_615_616_512
    critic = QWEN_7B - 152_064 * 3_584 + 3_584 + 1  # the decoder without the LM head, a scalar value head
    config = load_config("smoke", overrides=["model.name=Qwen/Qwen2.5-7B", "model.precision=bf16-mixed",
                                             "rollout.batch_size=4", "estimate.prompt_length=4",
                                             "estimate.completion_length=2"])
    result = estimate(config, ["grpo", "ppo"], use_cache=False)
    step_counters = 4 * QWEN_7B_TENSORS  # AdamW's step is a 4-byte tensor per parameter tensor
    for algo in ("grpo", "ppo"):
        state = result["arms"][algo]["model_state"]
        # bf16-mixed: fp32 weights (4) + fp32 gradients (4) + AdamW's two fp32 moments (8) = 16 bytes per parameter
        assert state["policy"] == {"params": 4 * QWEN_7B, "grads": 4 * QWEN_7B, "optimizer": 8 * QWEN_7B + step_counters,
                                   "total": 16 * QWEN_7B + step_counters}
        assert state["reference"] == {"params": 2 * QWEN_7B, "grads": 0, "optimizer": 0, "total": 2 * QWEN_7B}
        # the fake step holds exactly the weights between its passes, with each model's buffers: the rotary
        # inverse frequencies and their original, 64 values each (fp32 in trained models, bf16 in the reference);
        # no gradients (the last update freed them) until the policy's update makes its fp32 gradients
        phases = result["arms"][algo]["phases"]
        between = phases["advantages"]
        trained = {"grpo": [QWEN_7B], "ppo": [QWEN_7B, critic]}[algo]
        assert between.get("grads", 0) == 0
        assert phases["policy_update"]["grads"] == 4 * QWEN_7B
        assert between["params"] == 4 * sum(trained) + 2 * QWEN_7B + 2 * 64 * (4 * len(trained) + 2)
    critic_state = result["arms"]["ppo"]["model_state"]["critic"]
    assert critic_state["total"] == 16 * critic + 4 * (QWEN_7B_TENSORS - 1 + 2)  # no LM head; value head weight and bias
    # GRPO/PPO in model state: (16 + 2) x 7.62B / ((16 + 2) x 7.62B + 16 x 7.07B) = 0.548 (FIELD-NOTES)
    assert result["ratio"]["model_state"]["value"] == pytest.approx(0.548, abs=0.001)


def test_world_size_two_halves_each_gpu_s_model_state():
    from harness.estimate.estimator import estimate
    one = estimate(load_config("smoke"), ["grpo", "ppo"], cuda_optimizer=False)
    two = estimate(load_config("smoke", overrides=["estimate.world_size=2"]), ["grpo", "ppo"], cuda_optimizer=False)
    for algo in ("grpo", "ppo"):
        for model, full in one["arms"][algo]["model_state"].items():
            half = two["arms"][algo]["model_state"][model]
            tensors = 12 * 2 + 3  # the smoke model: 2 layers; padding adds at most one row of each tensor
            for category in MODEL_STATE:
                assert full[category] / 2 <= half[category] <= full[category] / 2 + tensors * 128 * 4 * 2, (model, category)
        between_one = one["arms"][algo]["phases"]["advantages"]
        between_two = two["arms"][algo]["phases"]["advantages"]
        for category in ("params", "optimizer"):  # no gradients between passes: the update freed them
            assert between_two[category] == pytest.approx(between_one[category] / 2, rel=0.02)
    assert two["setup"]["rows_per_gpu"] == 16 and one["setup"]["rows_per_gpu"] == 32


def test_per_gpu_figures_and_the_rollout_engine_by_hand():
    from harness.estimate.gpu_figures import per_gpu, with_engine
    raw = {"phases": {"generate": {"params": 50, "grads": 20, "optimizer": 40, "kv_cache": 30, "fsdp_buffers": 10,
                                   "total": 150},
                      "advantages": {"params": 50, "grads": 20, "optimizer": 40, "rollout": 6, "total": 116},
                      "policy_update": {"params": 50, "optimizer": 40, "activations": 70, "fsdp_buffers": 20,
                                        "offloaded": 60, "total": 240}}}
    gpu = per_gpu(raw)
    assert gpu["generate"] == raw["phases"]["generate"] and gpu["advantages"] == raw["phases"]["advantages"]
    # an offloaded model's shards live in CPU memory: 240 - 60
    assert gpu["policy_update"] == {"params": 50, "optimizer": 40, "activations": 70, "fsdp_buffers": 20, "total": 180}
    resident = with_engine(gpu, 1000, "resident")
    # the engine generates: generate holds the model state (50 + 20 + 40) and the engine's 1000
    assert resident["generate"]["total"] == 1110 and resident["policy_update"]["total"] == 1180
    asleep = with_engine(gpu, 1000, "asleep")
    assert asleep["generate"]["total"] == 1110 and asleep["policy_update"]["total"] == 180
    assert with_engine(gpu, 0, "resident") == gpu


def test_the_rollout_engine_reserves_a_share_of_each_device(tmp_path):
    from harness.estimate.estimator import estimate
    config = load_config("smoke", overrides=["estimate.rollout_reserve=0.3", "estimate.device_memory=h200"])
    result = estimate(config, ["grpo"])
    arm = result["arms"]["grpo"]
    assert result["setup"]["rollout_engine"]["bytes"] == round(0.3 * 141 * GIB)
    assert arm["phases"]["generate"]["rollout_engine"] == round(0.3 * 141 * GIB)
    assert arm["on_devices"]["a100-40"]["peak"] == pytest.approx(0.3 * 40 * GIB, rel=0.01)  # the tiny model is the rest
    assert all(entry["fits"] for entry in arm["on_devices"].values())


# ---------------------------------------------------------------- the command

def test_estimate_prints_each_arm_the_ratio_and_the_fit_and_reuses_its_cache(capsys):
    code, out, _ = run_cli(capsys, "estimate", "--preset", "smoke")
    assert code == 0
    for text in ("GRPO: estimated peak of live tensors per phase", "PPO: estimated peak", "step peak per GPU (estimated)",
                 "model state per GPU (arithmetic)", "FLOPs per step (arithmetic)", "H100 80 GB", "A100 40 GB",
                 "estimated, not measured",
                 "generation simulated with the policy's own forward", "flash attention"):
        assert text in out, text
    code, out, err = run_cli(capsys, "estimate", "--preset", "smoke", "--json")
    result = json.loads(out)
    assert code == 0 and all(arm["cached"] for arm in result["arms"].values())
    assert result["ratio"]["peak"]["numerator"] == "grpo" and 0 < result["ratio"]["peak"]["value"] < 1
    assert result["arms"]["ppo"]["peak"] == max(row["total"] for row in result["arms"]["ppo"]["phases"].values())


def test_shipped_configs_answer_offline():
    from harness.estimate.model_specs import known_models, resolve_model
    config = load_config("smoke")
    assert len(known_models()) == 8
    spec = resolve_model("qwen2.5-0.5b", config)
    assert spec.name == "Qwen/Qwen2.5-0.5B" and spec.config.tie_word_embeddings
    llama = resolve_model("meta-llama/Llama-3.1-70B", config).config
    assert (llama.hidden_size, llama.num_hidden_layers, llama.num_key_value_heads, llama.vocab_size) == (8192, 80, 8, 128256)


@pytest.mark.parametrize("args, message", [
    (["--model", "someone/not-a-shipped-model"], "unknown model 'someone/not-a-shipped-model'"),
    (["--world-size", "3"], "world size 3: the 8 prompts of a step"),
    (["--world-size", "0"], "must be at least 1"),
    (["--world-size", "16"], "world size 16: the 8 prompts of a step"),
    (["--world-size", "8", "--set", "optim.minibatches=8"],
     "world size 8: a sampling slice of 4 completions does not split into optim.minibatches=8"),
    (["--prompt-length", "60", "--completion-length", "10"], "do not fit the 64 positions"),
    (["--rollout-reserve", "1.5"], "estimate.rollout_reserve: must be below 1, got 1.5"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, "estimate", "--preset", "smoke", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("facts, message", [
    ({"model_type": "no-such-architecture", "hidden_size": 8}, "transformers cannot build model_type 'no-such-architecture'"),
    ({"model_type": "vit", "hidden_size": 8}, "no causal language model"),
    ({"hidden_size": 8}, "has no model_type"),
])
def test_a_config_json_transformers_cannot_build_is_one_line_and_exit_2(capsys, tmp_path, facts, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(facts))
    code, _, err = run_cli(capsys, "estimate", "--preset", "smoke", "--model", str(path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- the grid

def test_grid_cells_cover_every_choice_once():
    from harness.estimate.grid import AXES, cell_config, cells
    grid = cells()
    assert len(grid) == 2 ** 9 == len({tuple(sorted(c.items())) for c in grid})  # nine axes of two choices each
    config = load_config("smoke", overrides=["algorithms.grpo.beta=0"])
    off = cell_config(config, ["grpo", "ppo"], {**grid[0], "kl": "off", "checkpointing": "on"}, 0.3)
    on = cell_config(config, ["grpo", "ppo"], {**grid[0], "kl": "on", "critic_pass": "joint"}, 0.3)
    assert off.algorithms["grpo"]["beta"] == 0 and off.algorithms["ppo"]["kl_coef"] == 0
    assert off.model.gradient_checkpointing and not on.model.gradient_checkpointing
    # KL on: the configured coefficients, or the algorithm's defaults where the config turned them off
    assert on.algorithms["grpo"]["beta"] == 0.04 and on.algorithms["ppo"]["kl_coef"] == 0.05
    assert on.algorithms["ppo"]["critic_pass"] == "joint" and "critic_pass" not in on.algorithms["grpo"]
    assert [a for a, _ in AXES] == ["kl", "reward_model", "critic_pass", "checkpointing", "rollout_engine", "precision",
                                    "sequence", "offload", "engine_share"]


@pytest.mark.slow
def test_grid_on_the_smoke_model_gives_the_ratio_range_and_reruns_from_the_cache(tmp_path, monkeypatch):
    from harness.estimate.grid import estimate_grid
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    config = load_config("smoke")
    # the first six axes (64 cells): precision, sequence length and offload multiply the fake steps alike
    axes = ["kl", "reward_model", "critic_pass", "checkpointing", "rollout_engine", "engine_share"]
    first = estimate_grid(config, ["grpo", "ppo"], axes=axes)
    # 8 GRPO configurations (it has no critic pass) and 16 PPO ones; the engine axes are arithmetic
    assert first["fake_steps"] == {"computed": 24, "reused": 104}  # of 128 arm-cells
    low, high = first["ratio_range"]
    assert all(low <= cell["ratio"] <= high for cell in first["cells"])
    cell = {(c["kl"], c["reward_model"], c["critic_pass"], c["checkpointing"], c["rollout_engine"]): c
            for c in first["cells"]}

    def peak(algo, kl, reward_model, engine):
        return cell[kl, reward_model, "separate", "off", engine]["peaks"][algo]
    for algo in ("grpo", "ppo"):
        # a reference model costs memory, a learned reward model too, a resident engine more than a sleeping one
        assert peak(algo, "on", "none", "asleep") > peak(algo, "off", "none", "asleep")
        assert peak(algo, "on", "same", "asleep") > peak(algo, "on", "none", "asleep")
        assert peak(algo, "on", "none", "resident") >= peak(algo, "on", "none", "asleep")
    again = estimate_grid(config, ["grpo", "ppo"], axes=axes)
    assert again["fake_steps"] == {"computed": 0, "reused": 128} and again["cells"] == first["cells"]


# ---------------------------------------------------------------- the comparison's "At scale" section

def test_a_bad_at_scale_model_stops_compare_before_any_folder(capsys, tmp_path):
    out = tmp_path / "comparison"
    code, _, err = run_cli(capsys, "compare", "--preset", "smoke", "--out", str(out),
                           "--set", "estimate.at_scale=someone/not-a-shipped-model")
    assert code == 2 and "estimate.at_scale: unknown model" in err and not out.exists()


def test_the_default_at_scale_section_is_the_verl_pair_not_the_tiny_workload_on_a_7b():
    from harness.estimate.at_scale import at_scale_models, at_scale_recipes
    config = load_config("tiny")
    assert at_scale_recipes(config) == ["verl-qwen2-7b-gsm8k"] and at_scale_models(config) == []


@pytest.mark.slow
def test_compare_writes_the_at_scale_estimate_and_the_report_shows_it(tmp_path):
    """The recipe named in estimate.at_scale is estimated as harness estimate --recipe gives it; a model named
    there maps the comparison's own config onto it (two fake steps); the report shows both, and this machine's
    MFU per phase from the arms' own step records."""
    from conftest import harness
    from harness.estimate.estimator import estimate
    from harness.estimate.recipes import load_recipe, recipe_configs
    from harness.estimate.estimator import estimate_arms
    recipe = write_recipe(tmp_path)
    out = tmp_path / "comparison"
    harness("compare", "--preset", "smoke", "--out", str(out), "--set", f"estimate.at_scale={recipe},tiny",
            "--set", "estimate.at_scale_world_size=2", "--set", "run.lm_eval=false", check=True)
    data = json.loads((out / "at_scale.json").read_text())
    cell = data["models"]["tiny"]
    assert data["world_size"] == 2 and cell["setup"]["rows_per_gpu"] == 16 and len(cell["cells"]) == 1
    alone = estimate(load_config("smoke", overrides=["estimate.world_size=2"]), ["grpo", "ppo"])
    assert cell["ratio_range"] == [alone["ratio"]["peak"]["value"]] * 2
    estimated = data["recipes"][str(recipe)]
    direct = estimate_arms(recipe_configs([load_recipe(str(recipe))], "tiny"))
    assert estimated["ratio"]["peak"] == direct["ratio"]["peak"] and estimated["arms"]["ppo"]["gpus"] == 6
    assert data["this_machine"]["matmul_peak"] > 0
    page = (out / "report.html").read_text()
    assert '<section id="at-scale"' in page and "smoke pair: GRPO/PPO per-GPU peak" in page
    assert f"tiny: GRPO/PPO {cell['ratio_range'][0]:.3f}" in page
    assert "This machine: MFU per phase" in page and "policy_update" in page


def test_a_lora_comparison_estimates_the_published_setup_with_its_adapters():
    """The at-scale memory row answers the comparison's question: under LoRA, GRPO against PPO with adapters,
    so the recipe's arms get the comparison's rank, alpha and critic base over the recipe's fields; a full
    fine-tuning comparison leaves the recipe as published."""
    from harness.estimate.at_scale import adapter_overrides, adapter_words, recipe_arm_configs
    assert adapter_overrides(load_config("tiny")) == []
    lora = load_config("tiny-lora", overrides=["algorithms.ppo.critic_base=shared"])
    overrides = adapter_overrides(lora)
    assert overrides == ["model.lora.rank=8", "model.lora.alpha=16.0", "model.lora.dropout=0.0",
                         "model.lora.target_modules=all-linear", "algorithms.ppo.critic_base=shared"]
    assert adapter_words(overrides) == ("with this comparison's LoRA (rank 8, alpha 16.0, critic base shared) in "
                                        "place of its full fine-tuning")
    _, published = recipe_arm_configs("verl-qwen2-7b-gsm8k")
    _, adapted = recipe_arm_configs("verl-qwen2-7b-gsm8k", overrides)
    assert {algo: c.model.lora.rank for algo, c in published.items()} == {"grpo": 0, "ppo": 0}
    assert {algo: c.model.lora.rank for algo, c in adapted.items()} == {"grpo": 8, "ppo": 8}
    assert adapted["ppo"].algorithms["ppo"]["critic_base"] == "shared"
    # everything else is the published setup's
    assert adapted["grpo"].rollout == published["grpo"].rollout and adapted["ppo"].optim == published["ppo"].optim


@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_passes_the_at_scale_check(preset):
    """A default comparison must not stop at its own "At scale" section: the verl pair resolves and fits its
    positions, and a model named there takes the largest micro-batch that divides one of 8 GPUs' minibatch."""
    from harness.estimate.at_scale import at_scale_config, check_at_scale
    config = load_config(preset)
    check_at_scale(config)
    if preset == "tiny":
        scaled = at_scale_config(config, "Qwen/Qwen2.5-7B")
        assert scaled.optim.micro_batch_size == 16  # 256 rows / 8 GPUs / 2 minibatches = 16; gcd(64, 16)


# ---------------------------------------------------------------- recipes

SMOKE_RECIPE = """
name: smoke pair
title: smoke pair
common:
  - {set: model.name=tiny, from: the smoke model}
  - {set: task.name=chain_sum, from: the smoke task}
  - {set: rollout.max_new_tokens=5, from: the smoke preset}
  - {set: estimate.prompt_length=6, from: the smoke task's longest prompt}
  - {set: estimate.world_size=2, from: two GPUs}
  - {set: estimate.rollout_reserve=0.3, from: an engine's share}
  - {set: estimate.reward_model=same, from: a learned reward model}
  - {set: optim.micro_batch_size=4, from: a micro-batch}
  - {set: rollout.logprob_batch_size=4, from: a log-prob batch}
arms:
  grpo:
    source: {repository: test, file: grpo.sh, commit: abc}
    set:
      - {set: rollout.batch_size=32, from: 8 prompts x 4}
      - {set: rollout.samples_per_prompt=4, from: group of 4}
  ppo:
    source: {repository: test, file: ppo.sh, commit: def}
    set:
      - {set: rollout.batch_size=16, from: 16 prompts}
      - {set: rollout.samples_per_prompt=1, from: one each}
      - {set: estimate.critic_gpus=2, from: the critic on its own GPUs}
      - {set: estimate.engine_gpus=2, from: the engine on its own GPUs}
    unmatched: [something the harness cannot match]
"""


def write_recipe(tmp_path, text: str = SMOKE_RECIPE) -> Path:
    path = tmp_path / "smoke-pair.yaml"
    path.write_text(text)
    return path


def test_shipped_recipes_name_a_source_for_every_field_and_make_valid_configs():
    from harness.estimate.recipes import load_recipe, recipe_configs, recipe_names
    assert {"verl-qwen2-7b-gsm8k", "trl-grpo-qwen2.5-7b", "openrlhf-ppo-llama3-8b", "deepseekmath-grpo-7b"} <= set(recipe_names())
    for name in recipe_names():
        recipe = load_recipe(name)
        for arm in recipe.arms.values():
            assert all(arm.source.values()) and all(f.source.strip() for f in arm.fields), name
        assert set(recipe_configs([recipe])) == set(recipe.arms)
    verl = recipe_configs([load_recipe("verl-qwen2-7b-gsm8k")])
    grpo, ppo = verl["grpo"], verl["ppo"]
    # train_batch_size 1024 prompts x rollout.n 5; ppo_mini_batch_size 256 prompts: 4 minibatches; 40 rows a GPU
    assert (grpo.rollout.batch_size, grpo.rollout.samples_per_prompt, grpo.optim.minibatches) == (5120, 5, 4)
    assert (grpo.optim.micro_batch_size, grpo.estimate.prompt_length, grpo.estimate.completion_length) == (40, 512, 1024)
    assert (ppo.rollout.batch_size, ppo.optim.micro_batch_size, ppo.rollout.logprob_batch_size) == (1024, 16, 32)
    assert grpo.estimate.rollout_reserve == ppo.estimate.rollout_reserve == 0.6 and grpo.run.offload_reference
    assert grpo.algorithms["grpo"]["beta"] == 0.001 and ppo.algorithms["ppo"]["kl_coef"] == 0.001
    openrlhf = recipe_configs([load_recipe("openrlhf-ppo-llama3-8b")])["ppo"]
    assert (openrlhf.estimate.world_size, openrlhf.estimate.critic_gpus, openrlhf.estimate.engine_gpus) == (2, 2, 4)


def test_harness_recipes_lists_each_setup_with_its_source(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    for text in ("verl-qwen2-7b-gsm8k", "examples/grpo_trainer/run_qwen2-7b.sh", "b178a3cd56f58b2d502255daba591e92833930a7",
                 "trl-grpo-qwen2.5-7b", "openrlhf-ppo-llama3-8b", "train_ppo_llama_ray.sh", "deepseekmath-grpo-7b",
                 "2402.03300"):
        assert text in out, text
    code, out, _ = run_cli(capsys, "recipes", "verl-qwen2-7b-gsm8k")
    assert code == 0 and "actor_rollout_ref.rollout.gpu_memory_utilization=0.6" in out and "not matched:" in out


@pytest.mark.parametrize("args, message", [
    (["--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["--recipe", "verl-qwen2-7b-gsm8k,trl-grpo-qwen2.5-7b"], "both have a grpo arm"),
    (["--recipe", "trl-grpo-qwen2.5-7b", "--algos", "ppo"], "has no ppo arm"),
    (["--recipe", "trl-grpo-qwen2.5-7b", "--grid"], "--grid varies one config's choices"),
    (["--fit", "H300"], "not a known GPU"),
    (["--set", "estimate.critic_gpus=3", "--world-size", "2"], "critic group of another size"),
])
def test_bad_recipe_and_fit_input_is_one_line_and_exit_2(capsys, args, message):
    code, out, err = run_cli(capsys, "estimate", "--preset", "smoke", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_recipe_without_a_source_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path, SMOKE_RECIPE.replace("source: {repository: test, file: ppo.sh, commit: def}", ""))
    code, _, err = run_cli(capsys, "estimate", "--recipe", str(path))
    assert code == 2 and "arm ppo needs a source" in err


def test_a_recipe_pair_with_the_critic_and_the_engine_on_gpus_of_their_own(tmp_path):
    """Each arm with its own config; PPO's critic and reward model on 2 GPUs of their own, its engine on 2 more:
    6 GPUs, the critic's phases computed on the critic's GPUs, the policy's GPUs not generating."""
    from harness.estimate.estimator import estimate_arms
    from harness.estimate.recipes import load_recipe, recipe_configs
    result = estimate_arms(recipe_configs([load_recipe(str(write_recipe(tmp_path)))], "smoke"), cuda_optimizer=False)
    grpo, ppo = result["arms"]["grpo"], result["arms"]["ppo"]
    assert grpo["setup"]["batch"] == 32 and ppo["setup"]["batch"] == 16 and grpo["gpus"] == 2
    assert ppo["gpus"] == 6 and ppo["gpu_groups"] == {"policy": 2, "critic": 2, "engine": 2}
    policy, critic = ppo["groups"]["policy"]["phases"], ppo["groups"]["critic"]["phases"]
    # the values pass runs on the critic's GPUs: the policy's hold their state and the rollout only
    assert set(policy["values"]) <= {"params", "optimizer", "rollout", "total"}
    # the critic's AdamW state and its step's temporaries are on its own GPUs
    assert policy["critic_update"].get("optimizer", 0) == policy["advantages"].get("optimizer", 0)
    assert critic["critic_update"]["optimizer"] >= critic["advantages"]["optimizer"] > 0
    assert critic["values"].get("activations", 0) > 0 and critic["generate"].get("kv_cache", 0) == 0
    assert "rollout_engine" not in policy["generate"] and policy["generate"].get("kv_cache", 0) == 0
    assert ppo["groups"]["engine"]["peak"] == round(0.3 * 80 * GIB)  # the engine's own GPUs: its reservation
    # the critic's and the reward model's state are on their GPUs, not the policy's
    assert critic["advantages"]["params"] > 0 and policy["advantages"]["params"] < grpo["phases"]["advantages"]["params"]
    assert result["ratio"]["gpus"]["value"] == pytest.approx(2 / 6)
    for key in ("peak", "model_state", "flops", "gpu_seconds"):
        assert result["ratio"][key]["numerator"] == "grpo", key


def test_per_gpu_groups_by_hand():
    from harness.estimate.gpu_figures import per_gpu
    raw = {"phases": {"generate": {"params": 10, "optimizer": 20, "kv_cache": 30, "elsewhere_params": 5,
                                   "elsewhere_optimizer": 7, "total": 72},
                      "values": {"params": 10, "optimizer": 20, "activations": 40, "rollout": 3, "elsewhere_params": 5,
                                 "elsewhere_optimizer": 7, "total": 85}}}
    policy, critic = per_gpu(raw, "policy"), per_gpu(raw, "critic")
    assert policy["generate"] == {"params": 10, "optimizer": 20, "kv_cache": 30, "total": 60}
    assert policy["values"] == {"params": 10, "optimizer": 20, "rollout": 3, "total": 33}  # the critic computes
    assert critic["generate"] == {"params": 5, "optimizer": 7, "total": 12}
    assert critic["values"] == {"activations": 40, "rollout": 3, "params": 5, "optimizer": 7, "total": 55}
    assert per_gpu(raw, "policy", separate_engine=True)["generate"] == {"params": 10, "optimizer": 20, "total": 30}


def test_the_fake_step_s_shortcuts_keep_every_peak():
    """Replayed no-grad passes (log-probs, values, a reward model's scores) and the minibatches, epochs and
    micro-batches left out give the same peaks, to the byte."""
    from harness.estimate.fake_generation import Workload
    from harness.estimate.fake_step import fake_step
    from harness.estimate.model_specs import resolve_model
    shared = ["rollout.batch_size=64", "optim.micro_batch_size=4", "rollout.logprob_batch_size=4"]
    # 4 minibatches of 4 micro-batches, 2 epochs; and one minibatch of 16 micro-batches, as DeepSeekMath's single
    # update runs (no sampler log-probs: each micro-batch's own log-probs stand in for them)
    for layout in (["optim.minibatches=4", "optim.epochs=2"], ["optim.minibatches=1", "optim.epochs=1"]):
        config = load_config("smoke", overrides=shared + layout)
        spec, workload = resolve_model("tiny", config).config, Workload(64, 6, 5, 4)
        for algo in ("grpo", "ppo"):
            full = fake_step(config, algo, spec, spec, workload, foreach=False, shortcuts=False)
            short = fake_step(config, algo, spec, spec, workload, foreach=False, shortcuts=True)
            assert short.phases == full.phases, (algo, layout)


def test_frozen_roots_are_resharded_after_forward_and_grad_optim_keeps_them_gathered():
    """The reference's gathered parameters are freed after its pass under full sharding (the root too, as verl
    sets it); under grad_optim the reference stays gathered through the step."""
    from harness.estimate.estimator import estimate
    full = estimate(load_config("smoke", overrides=["estimate.world_size=2"]), ["grpo"], cuda_optimizer=False)
    kept = estimate(load_config("smoke", overrides=["estimate.world_size=2", "run.shard_reference=grad_optim"]),
                    ["grpo"], cuda_optimizer=False)
    assert full["arms"]["grpo"]["phases"]["advantages"].get("fsdp_buffers", 0) == 0
    # the reference whole: the smoke model's 33,632 fp32 parameters, 134,528 bytes (no padding: every dimension is even)
    assert kept["arms"]["grpo"]["phases"]["advantages"]["fsdp_buffers"] == 134_528


def test_a_toy_workload_on_a_big_model_is_warned_about():
    from harness.estimate.describe import short_workload
    from harness.estimate.estimator import plan_estimate as plan, spread_over_gpus

    def plan_estimate(config):
        return plan(spread_over_gpus(config))
    config = load_config("tiny", overrides=["model.name=Qwen/Qwen2.5-7B", "estimate.world_size=8"])
    warning = short_workload(plan_estimate(config))
    assert warning and "a 12-token row (6 prompt + 6 completion)" in warning and "7.6B parameters" in warning
    long = load_config("tiny", overrides=["model.name=Qwen/Qwen2.5-7B", "estimate.world_size=8",
                                          "estimate.prompt_length=64"])
    assert short_workload(plan_estimate(long)) is None and short_workload(plan_estimate(load_config("tiny"))) is None


# ---------------------------------------------------------------- compute (arithmetic)

def test_phase_flops_by_hand():
    from harness.measure.flops import MatmulSizes, phase_flops
    sizes = {"policy": MatmulSizes(body=10, head=2), "critic": MatmulSizes(body=10, head=1)}
    flops = phase_flops(sizes, sequence_tokens=100, completion_tokens=40, epochs=1, checkpointing=True,
                        phases=["generate", "score", "ref_logprobs", "values", "advantages", "policy_update", "critic_update"])
    # forward: 2 x (body x 100 + head x 40) = 2 x (1000 + 80) = 2160; the critic's head sees every token: 2 x 1100
    assert flops["generate"] == flops["ref_logprobs"] == 2160 and flops["values"] == 2200
    # backward is twice forward, and checkpointing runs the body's forward again: 3 x 2160 + 2 x 1000
    assert flops["policy_update"] == 8480 and flops["critic_update"] == 3 * 2200 + 2000
    assert "score" not in flops and "advantages" not in flops  # no reward model; no matmuls


def test_matmul_sizes_of_qwen_7b_by_hand():
    from harness.estimate.compute import model_sizes, parameter_count
    from harness.estimate.model_specs import resolve_model
    config = resolve_model("Qwen/Qwen2.5-7B", load_config("smoke")).config
    sizes = model_sizes(config, has_critic=True)
    embedding = 152_064 * 3_584  # untied: the LM head is as large
    assert parameter_count(config) == QWEN_7B
    assert sizes["policy"].head == embedding and sizes["policy"].body == QWEN_7B - 2 * embedding
    assert sizes["critic"].body == sizes["policy"].body and sizes["critic"].head == 3_584 + 1
    # LoRA rank 64 on every linear layer but the LM head: rank x (in + out) per layer of each of the 28
    # blocks: q 3584+3584, k 3584+512, v 3584+512, o 3584+3584, gate and up 3584+18944, down 18944+3584
    lora = model_sizes(config, has_critic=True, lora=load_config("smoke", overrides=["model.lora.rank=64"]).model.lora)
    adapters = 64 * 28 * (7_168 + 4_096 + 4_096 + 7_168 + 3 * 22_528)  # 161,480,704
    for model in ("policy", "critic"):
        assert lora[model].frozen_body == sizes["policy"].body and lora[model].body == sizes["policy"].body + adapters
    assert lora["policy"].frozen_head == embedding and lora["critic"].frozen_head == 0  # the value head trains


def test_a_frozen_lora_base_skips_its_weight_gradients_by_hand():
    from harness.measure.flops import MatmulSizes, phase_flops
    # a body of 10 of which 8 are frozen (a base under 2 adapter parameters), a frozen head of 2
    sizes = {"policy": MatmulSizes(body=10, head=2, frozen_body=8, frozen_head=2)}
    flops = phase_flops(sizes, sequence_tokens=100, completion_tokens=40, epochs=1, checkpointing=False,
                        phases=["ref_logprobs", "policy_update"])
    # forward 2 x (10 x 100 + 2 x 40) = 2160; backward: the inputs' gradients 2160 again, the weights' only
    # for the 2 trained: 2 x 2 x 100 = 400; 2160 + 2160 + 400 = 4720 (full fine-tuning: 3 x 2160 = 6480)
    assert flops["ref_logprobs"] == 2160 and flops["policy_update"] == 4720


def test_generation_roofline_by_hand():
    from harness.estimate.compute import generation_time
    from harness.estimate.devices import Gpu
    device = Gpu("x", "x", memory=100, bandwidth=10.0, peak_bf16=1000.0, peak_fp32=None)
    # 4 rows on 2 GPUs (engines of 1), 2 rows each; prompt 3, completion 2; 5 parameters (10 bytes of bf16
    # weights); 1 byte of KV a token; no engine: every row at once, one wave.
    # decode bytes: 2 steps x 10 + 2 rows x (2 x 3 + 2 x 3 / 2) x 1 = 20 + 18 = 38 -> 3.8 s at 10 B/s
    # prefill: 2 x 5 x 2 rows x 3 tokens = 60 FLOPs at 1000 x 0.5 -> 0.12 s
    out = generation_time(rows=4, prompt=3, completion=2, parameters=5, kv_token=1, gpus=2, tp=1, reserve=0.0,
                          device=device, mfu=0.5)
    assert out["waves"] == 1 and out["decode_bytes_per_gpu"] == 38
    assert out["seconds"] == pytest.approx(3.8 + 0.12)
    # an engine reserving 40% of 100 bytes less 10 of weights holds 30 bytes of KV: 6 sequences of 5 tokens
    engine = generation_time(rows=4, prompt=3, completion=2, parameters=5, kv_token=1, gpus=2, tp=1, reserve=0.4,
                             device=device, mfu=0.5)
    assert engine["sequences_at_once"] == 2 and engine["waves"] == 1


def test_gpus_by_name_or_size():
    from harness.estimate.devices import parse_gpu
    assert parse_gpu("H100-80GB").key == "h100" and parse_gpu("a100-40gb").key == "a100-40"
    assert parse_gpu("A100").key == "a100-80" and parse_gpu("L40S").memory == 48 * GIB and parse_gpu("h200").key == "h200"
    assert parse_gpu("96").memory == 96 * GIB and parse_gpu("96").bandwidth is None


@pytest.mark.slow  # a dozen fake steps
def test_fit_search_finds_the_largest_micro_batch_that_fits(tmp_path, monkeypatch):
    """On a device just large enough for the smoke step at one micro-batch size, the search answers that size:
    it fits, and the next larger one does not (each checked by a fake step here)."""
    from harness.estimate.devices import Gpu
    from harness.estimate.estimator import estimate
    from harness.estimate.fit import fit_search, micro_candidates
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    config = load_config("smoke", overrides=["optim.micro_batch_size=2"])
    peaks = {m: estimate(load_config("smoke", overrides=[f"optim.micro_batch_size={m}"]), ["grpo"])["arms"]["grpo"]["peak"]
             for m in micro_candidates(config)}
    sizes = sorted(peaks)
    target = sizes[len(sizes) // 2]
    device = Gpu("custom", "test device", memory=peaks[target], bandwidth=None, peak_bf16=None, peak_fp32=None)
    fit = fit_search({"grpo": config}, device)["arms"]["grpo"]
    best = fit["micro_batch_size"]["value"]
    assert peaks[best] <= device.memory and all(peaks[m] > device.memory for m in sizes if m > best)
    assert fit["micro_batch_size"]["as_written"] == 2 and fit["gpus"]["value"] >= 1
