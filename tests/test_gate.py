"""The memory-regression gate: `harness check` and `harness baseline` on real smoke runs.

Two runs are shared by the whole file: the session's smoke comparison (grpo, ppo; conftest.py) and
one GRPO arm with a rollout batch twice the size (a bigger footprint: activations and the KV cache grow).
The tests on those runs are in the slow lane; the pure pieces and the CI files are fast.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.commands.check import compare_arm, parse_tolerance, verdict
from harness.results.records import Memory
from harness.results.units import GIB

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def run_harness(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture(scope="session")
def smoke(smoke_comparison) -> Path:
    return smoke_comparison[0]


@pytest.fixture(scope="session")
def bigger(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gate") / "bigger"
    run_harness("run", "--algo", "grpo", "--preset", "smoke", "--set", "rollout.batch_size=64", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def baseline(smoke, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("baselines") / "smoke.json"
    assert main(["baseline", str(smoke), "--out", str(path)]) == 0
    return path


def check(capsys, folder, baseline, *flags) -> tuple[int, str, str]:
    code = main(["check", str(folder), "--baseline", str(baseline), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def edited_copy(path: Path, tmp_path: Path, **changes) -> Path:
    data = {**json.loads(path.read_text()), **changes}
    out = tmp_path / path.name
    out.write_text(json.dumps(data))
    return out


def copy_run(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / folder.name
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("checkpoint", "final_model"))
    return out


# ---------------------------------------------------------------- the three outcomes

@pytest.mark.slow
def test_baseline_records_what_it_was_measured_with(smoke, baseline):
    data = json.loads(baseline.read_text())
    assert data["preset"] == "smoke" and data["device"] == "cpu" and data["device_name"] is None
    assert data["config_hash"] == json.loads((smoke / "comparison.json").read_text())["config_hash"]
    assert data["versions"]["torch"] and data["versions"]["harness"]
    assert [(a["algo"], a["seed"]) for a in data["arms"]] == [("grpo", 0), ("ppo", 0)]
    assert data["arms"][1]["mem"]["arithmetic"]["models"]["critic"]["params"] > 0
    assert data["arms"][1]["mem"]["live"]["phases"]["critic_update"]["total"] > 0


@pytest.mark.slow
def test_identical_run_passes(capsys, smoke, baseline):
    code, out, _ = check(capsys, smoke, baseline)
    assert code == 0, out
    assert "REGRESSED" not in out and "improved" not in out
    # grpo: the live peak, 6 phases, model state, policy params/grads/optimizer, reference params = 12;
    # ppo: the live peak, 8 phases (values, critic_update), model state, 3 policy, 3 critic, 1 reference = 17
    assert "ok: nothing regressed in 29 figures" in out
    assert "info, not gated" in out  # RSS is shown, never gated


@pytest.mark.slow
def test_bigger_footprint_fails_and_names_what_grew(capsys, bigger, baseline):
    code, out, _ = check(capsys, bigger, baseline)
    assert code == 1, out
    assert "warning: config differs from the baseline's" in out and "rollout.batch_size 32 -> 64" in out
    grew = re.findall(r"^  - grpo s0 (.+): \+", out, re.M)
    # twice the rows: every phase that holds per-row tensors grows; the model state does not
    assert grew == ["measured: step peak of live tensors (max over phases)", "live tensors: generate",
                    "live tensors: score", "live tensors: old_logprobs", "live tensors: ref_logprobs",
                    "live tensors: advantages", "live tensors: policy_update"]
    assert "policy params" in out and "REGRESSED: 7 of 12 figures" in out


@pytest.mark.slow
def test_bigger_footprint_within_exact_tolerance_passes(capsys, bigger, baseline):
    code, out, _ = check(capsys, bigger, baseline, "--exact-tolerance", "150%")
    assert code == 0, out


@pytest.mark.slow
def test_strict_config_makes_a_config_change_bad_input(capsys, bigger, baseline):
    code, _, err = check(capsys, bigger, baseline, "--strict-config")
    assert code == 2
    assert "config differs from the baseline's" in err and "rollout.batch_size 32 -> 64" in err


@pytest.mark.slow
def test_better_run_passes_and_says_it_improved(capsys, smoke, bigger, tmp_path):
    bigger_baseline = tmp_path / "bigger.json"
    assert main(["baseline", str(bigger), "--out", str(bigger_baseline)]) == 0
    code, out, _ = check(capsys, smoke / "chain_sum__grpo__s0", bigger_baseline)
    assert code == 0, out
    assert "ok: nothing regressed in 12 figures; 7 improved:" in out
    assert "  - grpo s0 live tensors: policy_update: -" in out


# ---------------------------------------------------------------- bad input: exit 2, one line

@pytest.mark.slow
def test_baseline_of_another_preset_is_bad_input(capsys, smoke, baseline, tmp_path):
    code, out, err = check(capsys, smoke, edited_copy(baseline, tmp_path, preset="tiny"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "is for preset 'tiny'" in err and "ran preset 'smoke'" in err


@pytest.mark.slow
def test_baseline_of_another_device_is_bad_input(capsys, smoke, baseline, tmp_path):
    gpu = edited_copy(baseline, tmp_path, device="cuda", device_name="NVIDIA H100 80GB HBM3")
    code, _, err = check(capsys, smoke, gpu)
    assert code == 2 and err.count("\n") == 1 and "was measured on cuda" in err


@pytest.mark.slow
def test_missing_files_are_bad_input(capsys, smoke, baseline, tmp_path):
    code, _, err = check(capsys, smoke, tmp_path / "none.json")
    assert code == 2 and "does not exist" in err and "harness baseline" in err
    code, _, err = check(capsys, tmp_path, baseline)
    assert code == 2 and "not a run or comparison folder" in err
    (tmp_path / "other.json").write_text('{"arms": []}')
    code, _, err = check(capsys, smoke, tmp_path / "other.json")
    assert code == 2 and "is not a baseline file" in err
    code, _, err = check(capsys, smoke, baseline, "--tolerance", "five")
    assert code == 2 and "is not a percentage" in err


@pytest.mark.slow
def test_arm_without_a_baseline_is_bad_input(capsys, smoke, bigger, tmp_path):
    grpo_only = tmp_path / "grpo.json"
    assert main(["baseline", str(bigger), "--out", str(grpo_only)]) == 0
    capsys.readouterr()
    code, _, err = check(capsys, smoke, grpo_only)
    assert code == 2 and "has no arm ppo s0" in err


@pytest.mark.slow
def test_an_arm_that_did_not_finish_fails(capsys, smoke, baseline, tmp_path):
    folder = copy_run(smoke, tmp_path)
    summary = folder / "chain_sum__ppo__s0" / "summary.json"
    summary.write_text(json.dumps({"algo": "ppo", "seed": 0, "status": "oom", "error": "out of memory at step 2"}))
    code, out, _ = check(capsys, folder, baseline)
    assert code == 1 and "ppo s0 did not finish (oom: out of memory at step 2)" in out


# ---------------------------------------------------------------- GPU figures (synthetic, any machine)

def as_gpu_run(smoke: Path, tmp_path: Path, name: str, allocated: int) -> Path:
    """The smoke comparison relabelled as a GPU run with the given allocator peak."""
    folder = copy_run(smoke, tmp_path / name)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["run"]["device"] = "cuda"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for arm in ("chain_sum__grpo__s0", "chain_sum__ppo__s0"):
        summary = json.loads((folder / arm / "summary.json").read_text())
        summary["mem"]["measured"] = {"cuda_allocated_peak": {"generate": allocated // 2, "update": allocated},
                                      "cuda_reserved_peak": {"update": 2 * allocated}, "device_name": name,
                                      "nvml": {"used_peak": 3 * allocated}}
        (folder / arm / "summary.json").write_text(json.dumps(summary))
        env = json.loads((folder / arm / "env.json").read_text())
        (folder / arm / "env.json").write_text(json.dumps({**env, "device": "cuda", "gpu": name}))
    return folder


@pytest.mark.slow
def test_gpu_peaks_are_compared_with_tolerance_on_the_same_gpu(capsys, smoke, tmp_path):
    gpu_baseline = tmp_path / "gpu.json"
    assert main(["baseline", str(as_gpu_run(smoke, tmp_path / "a", "NVIDIA H100", 10 * GIB)), "--out", str(gpu_baseline)]) == 0
    assert json.loads(gpu_baseline.read_text())["device_name"] == "NVIDIA H100"
    capsys.readouterr()
    code, out, _ = check(capsys, as_gpu_run(smoke, tmp_path / "b", "NVIDIA H100", int(10.3 * GIB)), gpu_baseline)
    assert code == 0 and "within tolerance" in out, out
    code, out, _ = check(capsys, as_gpu_run(smoke, tmp_path / "c", "NVIDIA H100", 11 * GIB), gpu_baseline)
    assert code == 1 and "  - grpo s0 measured: CUDA allocated peak: +1.00 GiB (+10.0%)" in out, out
    code, out, _ = check(capsys, as_gpu_run(smoke, tmp_path / "d", "NVIDIA H100", 11 * GIB), gpu_baseline,
                         "--tolerance", "15%")
    assert code == 0, out
    code, out, _ = check(capsys, as_gpu_run(smoke, tmp_path / "e", "NVIDIA A100", 20 * GIB), gpu_baseline)
    assert code == 0 and "baseline measured on NVIDIA H100, this run on NVIDIA A100" in out, out
    assert "CUDA allocated" not in out


# ---------------------------------------------------------------- pure pieces

def test_verdicts():
    assert verdict(100, 100, 0.0) == "same"
    assert verdict(100, 101, 0.0) == "regressed"
    assert verdict(100, 99, 0.0) == "improved"
    assert verdict(100, 104, 0.05) == "within"
    assert verdict(100, 96, 0.05) == "within"
    assert verdict(100, 106, 0.05) == "regressed"
    assert verdict(100, 94, 0.05) == "improved"
    assert parse_tolerance("5%", "--tolerance") == pytest.approx(0.05)
    assert parse_tolerance("0", "--tolerance") == 0.0


def test_a_new_model_is_a_regression_and_a_dropped_one_an_improvement():
    policy = {"params": 8, "grads": 8, "optimizer": 16, "total": 32}
    grpo = {"arithmetic": {"models": {"policy": policy}, "model_state_total": 32},
            "live": {"peak": 50, "phases": {"policy_update": {"total": 50}}}}
    ppo = {"arithmetic": {"models": {"policy": policy, "critic": dict(policy)}, "model_state_total": 64},
           "live": {"peak": 90, "phases": {"policy_update": {"total": 80}, "critic_update": {"total": 90}}}}
    grpo, ppo = Memory.read(grpo), Memory.read(ppo)
    grew = {r.label.strip(): r.verdict for r in compare_arm("a", grpo, ppo, 0.0, 0.05, False)}
    assert grew["critic params"] == grew["critic optimizer"] == "regressed"
    assert grew["measured: step peak of live tensors (max over phases)"] == "regressed"
    assert grew["live tensors: policy_update"] == "regressed" and grew["policy params"] == "same"
    shrank = {r.label.strip(): r.verdict for r in compare_arm("a", ppo, grpo, 0.0, 0.05, False)}
    assert shrank["critic params"] == shrank["arithmetic: model state (params + grads + optimizer)"] == "improved"


# ---------------------------------------------------------------- CI files

def harness_subcommands(text: str) -> set[str]:
    return set(re.findall(r"(?:^|[\s;&|(])harness\s+([a-z][a-z-]*)", text))


def test_workflows_are_valid_yaml_and_call_commands_that_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "gpu.yml"}
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        assert workflow.get(True) or workflow.get("on"), f"{path.name}: no triggers"  # YAML reads `on:` as True
        runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
        commands = set().union(*(harness_subcommands(r) for r in runs))
        assert {"check"} <= commands, f"{path.name} does not run the gate"
        for command in commands:
            with pytest.raises(SystemExit) as exit_info:  # an unknown command returns 2 without exiting
                main([command, "--help"])
            assert exit_info.value.code == 0, f"{path.name} calls 'harness {command}', which does not exist"


def test_cpu_workflow_runs_the_readme_test_command_and_gpu_workflow_a_gpu_runner():
    readme_test = next(line for line in (ROOT / "README.md").read_text().splitlines() if "pytest" in line)
    cpu = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert any(step.get("run", "").strip() == readme_test.strip() for job in cpu["jobs"].values() for step in job["steps"])
    gpu = yaml.safe_load((ROOT / ".github/workflows/gpu.yml").read_text())
    jobs = list(gpu["jobs"].values())
    assert all(job["runs-on"] == ["self-hosted", "gpu"] for job in jobs)
    uploads = [step for job in jobs for step in job["steps"] if str(step.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and any("html" in step["with"]["path"] for step in uploads)


def test_committed_cpu_baseline_is_for_the_smoke_preset_on_cpu():
    data = json.loads((ROOT / "results/baselines/cpu-smoke.json").read_text())
    assert data["preset"] == "smoke" and data["device"] == "cpu"
    assert {(a["algo"], a["seed"]) for a in data["arms"]} == {("grpo", 0), ("ppo", 0)}
