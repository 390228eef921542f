"""LoRA (peft) in both arms: the reference is the base with adapters off, only adapters (and the value head)
train, a resume restores them bit for bit, and the estimate equals the live tensors a real CPU run measures."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("peft")

from harness.algorithms.adapters import AdaptersOff, adapter_parameters, trained_parameters  # noqa: E402
from harness.config.load import load_config  # noqa: E402
from harness.measure.probes import Probes  # noqa: E402
from harness.measure.step_meter import StepMeter  # noqa: E402
from harness.train.arm import Arm  # noqa: E402
from harness.train.checkpoint import RunState, load_checkpoint, save_checkpoint  # noqa: E402
from harness.train.lora import with_lora  # noqa: E402

ARMS = [("grpo", "separate"), ("ppo", "separate"), ("ppo", "shared")]


def lora_config(tmp_path, base="separate", *extra):
    # GRPO with a KL term in the loss, so that its reference (the base with adapters off) is used
    return load_config("smoke", overrides=["model.lora.rank=4", f"algorithms.ppo.critic_base={base}",
                                           "algorithms.grpo.beta=0.04", f"run.results_dir={tmp_path}", *extra])


def one_step(arm: Arm, state: RunState | None = None) -> RunState:
    state = state or RunState()
    probes = Probes("cpu", enabled=False)
    arm.train_step(state, StepMeter(probes, None), probes)
    return state


def test_adapters_off_gives_the_base_model_s_logits_exactly(tmp_path):
    arm = Arm(lora_config(tmp_path, "separate", "rollout.batch_size=8"), "grpo", tmp_path / "run")
    base = copy.deepcopy(arm.policy.get_base_model())
    from harness.algorithms.adapters import strip_adapters
    strip_adapters(base)  # the same weights, no adapter layers at all
    for p in adapter_parameters(arm.policy, "default"):  # adapters that change the output (B starts at zero)
        torch.nn.init.normal_(p, std=0.5)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        off = AdaptersOff(arm.policy)(input_ids=ids).logits
        on = arm.policy(input_ids=ids).logits
    assert torch.equal(off, expected)
    assert not torch.allclose(on, expected)
    assert all(p.requires_grad for p in trained_parameters(arm.policy))  # switching adapters off kept the flags


def test_no_reference_copy_is_built(tmp_path):
    arm = Arm(lora_config(tmp_path), "grpo", tmp_path / "run")
    assert isinstance(arm.reference, AdaptersOff) and arm.frozen_models() == {}
    assert "reference" not in arm.state_bytes()


@pytest.mark.parametrize("algo,base", ARMS)
def test_only_adapters_and_the_value_head_get_gradients(tmp_path, algo, base):
    arm = Arm(lora_config(tmp_path, base), algo, tmp_path / "run")
    models = arm.algorithm.trained_models()
    every = {f"{m}:{n}": p for m, model in models.items() for n, p in model.named_parameters()}
    before = {k: p.detach().clone() for k, p in every.items()}
    trained = {id(p) for model in models.values() for p in trained_parameters(model)}
    grads = {}
    hooks = [p.register_hook(lambda g, k=k: grads.__setitem__(k, True)) for k, p in every.items() if p.requires_grad]
    one_step(arm)
    for hook in hooks:
        hook.remove()
    changed = {k for k, p in every.items() if not torch.equal(p, before[k])}
    assert grads and changed
    assert all(id(every[k]) in trained for k in grads), sorted(k for k in grads if id(every[k]) not in trained)[:3]
    assert all(id(every[k]) in trained for k in changed)
    assert all("lora_" in k or "value_head" in k or k.startswith("critic:adapter.") for k in changed)
    # every frozen base weight is bit for bit what it was
    assert all(torch.equal(p, before[k]) for k, p in every.items() if id(p) not in trained)
    if algo == "ppo":
        assert any("value_head" in k for k in changed)
        critic_adapter = "critic" if base == "shared" else "default"
        assert any(f".{critic_adapter}." in k or k.startswith("critic:adapter.") for k in changed if k.startswith(
            "critic:") or f".{critic_adapter}." in k)


@pytest.mark.parametrize("algo,base", ARMS[1:])
def test_resume_restores_adapters_bit_for_bit(tmp_path, algo, base):
    config = lora_config(tmp_path, base)
    arm = Arm(config, algo, tmp_path / "run")
    state = one_step(arm)
    path = tmp_path / "state.pt"
    save_checkpoint(path, state, arm.algorithm)
    saved = torch.load(path, weights_only=True)["algorithm"]["models"]
    # only what trains is saved: adapters and value head, never the frozen base
    assert all("lora_" in k or "value_head" in k or k.startswith("adapter.") for m in saved.values() for k in m)
    expected = {m: {k: v.clone() for k, v in s.items()} for m, s in arm.algorithm.state_dict()["models"].items()}
    fresh = Arm(config, algo, tmp_path / "run2")
    loaded = load_checkpoint(path, fresh.algorithm)
    assert loaded.step == state.step == 1
    got = fresh.algorithm.state_dict()["models"]
    assert got.keys() == expected.keys()
    for model in expected:
        assert got[model].keys() == expected[model].keys()
        assert all(torch.equal(got[model][k], expected[model][k]) for k in expected[model]), model
    # and the resumed arm steps on: the same next step as the arm that saved it
    one_step(arm, state)
    one_step(fresh, loaded)
    after, resumed = arm.algorithm.state_dict()["models"], fresh.algorithm.state_dict()["models"]
    assert all(torch.equal(after[m][k], resumed[m][k]) for m in after for k in after[m])


def test_shared_critic_base_without_lora_is_one_line(tmp_path):
    from harness import UserError
    with pytest.raises(UserError, match="critic_base=shared puts the critic on the policy's frozen LoRA base"):
        load_config("smoke", overrides=["algorithms.ppo.critic_base=shared"])


def test_lora_off_leaves_the_model_as_it_is():
    from harness.config.schema import LoraSettings
    model = torch.nn.Linear(2, 2)
    assert with_lora(model, LoraSettings()) is model


@pytest.mark.parametrize("algo,base", ARMS)
def test_estimate_equals_measured_under_lora(algo, base, tmp_path):
    from test_estimate import assert_estimate_matches, estimated_step, measured_step
    config = lora_config(tmp_path, base, "rollout.batch_size=8")
    measured, shapes = measured_step(config, algo)
    assert_estimate_matches(measured, estimated_step(config, algo, shapes))


def test_model_state_splits_frozen_base_adapters_and_value_head(tmp_path):
    separate = Arm(lora_config(tmp_path, "separate"), "ppo", tmp_path / "a").state_bytes()
    shared = Arm(lora_config(tmp_path, "shared"), "ppo", tmp_path / "b").state_bytes()
    for rows in (separate, shared):
        for row in rows.values():
            assert row["params"] == row["frozen"] + row["adapters"] + row["value_head"]
            assert row["grads"] == row["adapters"] + row["value_head"]  # gradients of what trains only
    # the shared critic holds no base of its own: its frozen bytes are the policy's
    assert shared["critic"]["frozen"] == 0 and separate["critic"]["frozen"] > 0
    assert shared["critic"]["adapters"] == separate["critic"]["adapters"] == separate["policy"]["adapters"]
    assert separate["critic"]["value_head"] == shared["critic"]["value_head"] == (32 + 1) * 4  # fp32 Linear(32, 1)


ALL_ARMS = ["grpo", "ppo", "rloo", "dapo", "dr_grpo", "gspo", "reinforce_pp", "trl-grpo"]


@pytest.mark.parametrize("algo", [pytest.param(a, marks=[] if a in ("grpo", "ppo") else [pytest.mark.slow])
                                  for a in ALL_ARMS])
def test_every_arm_trains_adapters_and_saves_them(tmp_path, algo):
    import json

    from conftest import harness
    out = tmp_path / algo
    harness("run", "--algo", algo, "--preset", "smoke", "--budget", "64", "--set", "model.lora.rank=4",
            "--set", "run.lm_eval=false", "--out", str(out), check=True)
    summary = json.loads((out / "summary.json").read_text())
    # DAPO's dynamic sampling spends budget on its extra generation rounds: 64 completions may be one step
    assert summary["status"] == "ok" and (1 <= summary["steps"] <= 2 if algo == "dapo" else summary["steps"] == 2)
    final = out / "final_model"
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    assert not (final / "model.safetensors").exists()  # the adapters, not a copy of the base
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    state = {k: v for k, v in rows[-1].items() if k.startswith("mem/model_state/policy/")}
    assert state["mem/model_state/policy/adapters"] > 0 and state["mem/model_state/policy/frozen"] > 0
    assert state["mem/model_state/policy/grads"] == state["mem/model_state/policy/adapters"]
    assert not any(k.startswith("mem/model_state/reference/") for k in rows[-1])  # no reference copy


@pytest.mark.parametrize("base", ["separate", "shared"])
def test_the_report_says_what_each_arm_trains_and_which_critic_base_ran(tmp_path, base):
    from harness.config.derive import algorithm_options
    from harness.report.content import weights_text
    from harness.results.arm_config import arm_config_dict

    def resolved(config, algo):  # what run_arm writes to config.yaml
        data = arm_config_dict(config, algo, algo)
        data["derived"]["algorithm_options"] = algorithm_options(config, algo).model_dump()
        return data
    config = lora_config(tmp_path, base)
    assert weights_text(resolved(config, "grpo"), "grpo") == (
        "LoRA adapters, rank 4, alpha 32.0, on all-linear; the reference is the policy's base with its adapters off")
    critic = {"separate": "adapters and a value head on its own frozen copy of the base",
              "shared": "a second adapter and a value head on the policy's frozen base"}[base]
    assert weights_text(resolved(config, "ppo"), "ppo").endswith(f"; critic ({base}): {critic}")
    full = load_config("smoke")
    assert weights_text(resolved(full, "ppo"), "ppo") == "every weight (full fine-tuning)"


def test_the_estimate_cache_tells_lora_from_full_fine_tuning():
    from harness.estimate.estimator import cache_key, plan_estimate
    full = load_config("smoke")
    keys = {cache_key(config, "ppo", plan_estimate(config))
            for config in (full, load_config("smoke", overrides=["model.lora.rank=4"]),
                           load_config("smoke", overrides=["model.lora.rank=8"]),
                           load_config("smoke", overrides=["model.lora.rank=4", "algorithms.ppo.critic_base=shared"]))}
    assert len(keys) == 4  # a cached full fine-tuning step is never read back as a LoRA one, nor one rank as another


@pytest.mark.slow
@pytest.mark.parametrize("base", ["separate", "shared"])
def test_fsdp2_on_two_processes_trains_the_adapters_as_one_process_does(tmp_path, base):
    """Two processes (FSDP2, gloo) against one with the same 2 sampling slices: the same samples, losses and
    final adapters; each rank holds half of every frozen base and of every adapter. With the critic on the
    policy's base, its adapter is sharded with the policy's layers and it has no base of its own."""
    import json

    from safetensors.torch import load_file

    from conftest import harness
    flags = ("--algo", "ppo", "--preset", "smoke", "--budget", "64", "--set", "model.lora.rank=4",
             "--set", f"algorithms.ppo.critic_base={base}", "--set", "run.lm_eval=false")
    harness("run", *flags, "--set", "rollout.slices=2", "--out", str(tmp_path / "one"), check=True)
    harness("run", *flags, "--nproc-per-node", "2", "--out", str(tmp_path / "two"), check=True)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["status"] == "ok"

    def rows(folder):
        return [json.loads(line) for line in (tmp_path / folder / "steps.jsonl").read_text().splitlines()]
    for one, two in zip(rows("one"), rows("two")):
        assert one["reward/mean"] == two["reward/mean"]  # the same samples
        for key in ("loss/policy_loss", "loss/value_loss", "loss/grad_norm", "loss/critic_grad_norm"):
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
        for model in ("policy", "critic"):
            key = f"mem/model_state/{model}/"
            # FSDP2 shards every tensor on dim 0 (even here): each rank holds half
            assert two[key + "adapters"] * 2 == one[key + "adapters"] > 0
            assert two[key + "frozen"] * 2 == one[key + "frozen"]
            assert two[key + "grads"] == two[key + "adapters"] + two[key + "value_head"]
        assert one["mem/model_state/policy/frozen"] > 0
        assert (one["mem/model_state/critic/frozen"] == 0) == (base == "shared")  # the shared critic has no base
    # peft saves every adapter of the policy: the shared critic's in critic/ beside the policy's
    for part in ("", "critic/") if base == "shared" else ("",):
        one, two = (load_file(tmp_path / f / "final_model" / part / "adapter_model.safetensors") for f in ("one", "two"))
        assert one.keys() == two.keys() and one
        for name, weight in one.items():
            torch.testing.assert_close(two[name], weight, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("base", ["separate", "shared"])
def test_a_run_and_the_estimate_count_the_same_lora_matmuls(tmp_path, base):
    """FLOPs are arithmetic on matmul sizes: a real arm's (peft on its models) and the estimate's (peft on a
    meta model) agree, the frozen base apart from the adapters, for the policy and for either critic."""
    from harness.estimate.compute import model_sizes
    from harness.estimate.model_specs import resolve_model
    config = lora_config(tmp_path, base)
    arm = Arm(config, "ppo", tmp_path / "run")
    estimated = model_sizes(resolve_model("tiny", config).config, has_critic=True, lora=config.model.lora)
    assert arm.matmul_sizes == estimated
    assert 0 < estimated["policy"].frozen_body < estimated["policy"].body


def test_the_shared_critic_runs_the_policy_s_layers_in_its_own_mode(tmp_path):
    """The shared critic's passes run the policy's modules: in the critic's update they must be in training
    mode (activation checkpointing and adapter dropout act only there; without it a 7B critic update kept
    145 GiB of activations a GPU), in the value pass in eval mode, and the policy's own mode comes back."""
    from harness.algorithms.batch import RolloutBatch
    arm = Arm(lora_config(tmp_path, "shared", "model.gradient_checkpointing=true"), "ppo", tmp_path / "run")
    critic, policy = arm.algorithm.critic, arm.policy
    seen = []
    layer = policy.get_base_model().get_decoder().layers[0]
    layer.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    batch = RolloutBatch(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=torch.ones(1, 2),
                         prompt_length=4, scores=torch.zeros(1), group_size=1)
    policy.eval()
    for training in (True, False):
        critic.train(training)
        seen.clear()
        critic(batch)
        assert seen and set(seen) == {training}
        assert policy.training is False  # put back
