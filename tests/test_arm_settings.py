"""A preset's per-arm settings (arm_settings): each arm takes its algorithm's, below --config, --set and its own
variant overrides and above the preset; the plan says where each came from; bad entries are one line, exit 2."""

import json

import pytest
import yaml

from harness.cli import main
from harness.commands.arm_specs import ArmSpec, arm_config, parse_arm_spec, setting_lines, setting_rows
from harness.config.kl import KLSetting
from harness.config.load import PRESET_DIR, load_arm_settings, load_config, read_yaml

TUNED = {
    "grpo": {"set": {"optim.lr": 2.0e-4, "algorithms.grpo.beta": 0.1}, "kl": "native",
             "provenance": "harness tune --algos grpo,ppo (table: tune.json)"},
    "ppo": {"set": {"optim.lr": 3.0e-4, "rollout.samples_per_prompt": 1, "algorithms": {"ppo": {"critic_lr": "1e-3"}}},
            "provenance": "by hand"},
}


def write_preset(tmp_path, arm_settings, name="tuned.yaml"):
    """The smoke preset (optim.lr: the schema's 1e-4, 4 completions per prompt) with per-arm settings."""
    data = {**read_yaml(PRESET_DIR / "smoke.yaml"), "arm_settings": arm_settings}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def arm(preset, text, config_file=None, overrides=(), kl=None):
    """One arm's config as harness compare builds it: preset <- its algorithm's per-arm settings <- --config <-
    --set <- the arm's own overrides."""
    settings = load_arm_settings(preset, config_file, list(overrides))
    spec = parse_arm_spec(text).with_preset(settings)
    return spec, arm_config(load_config(preset, config_file, list(overrides)), spec, kl)


def test_each_arm_takes_its_algorithms_settings_over_the_preset(tmp_path):
    preset = write_preset(tmp_path, TUNED)
    _, grpo = arm(preset, "grpo")
    _, ppo = arm(preset, "ppo")
    assert (grpo.optim.lr, grpo.rollout.samples_per_prompt, grpo.algorithms["grpo"]["beta"]) == (2e-4, 4, 0.1)
    assert (ppo.optim.lr, ppo.rollout.samples_per_prompt, ppo.algorithms["ppo"]["critic_lr"]) == (3e-4, 1, 1e-3)
    assert load_config(preset).optim.lr == 1e-4  # the comparison's own config: the preset's, not an arm's
    _, checked = arm(preset, "trl-grpo")  # a cross-check takes the settings of the algorithm it checks
    assert checked.optim.lr == 2e-4


def test_config_then_set_then_a_variant_win_over_the_per_arm_settings(tmp_path):
    preset = write_preset(tmp_path, TUNED)
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("optim:\n  lr: 5.0e-4\n")
    spec, ppo = arm(preset, "ppo", str(config_file))
    assert (ppo.optim.lr, ppo.rollout.samples_per_prompt) == (5e-4, 1)  # --config over lr; the layout stays
    rows = {row["field"]: row for row in setting_rows(spec)}
    assert rows["optim.lr"] == {"field": "optim.lr", "value": 5e-4, "source": f"your --config {config_file}",
                                "instead_of": "the preset's 0.0003"}
    spec, ppo = arm(preset, "ppo", str(config_file), ["optim.lr=6e-4"])
    rows = {row["field"]: row for row in setting_rows(spec)}
    assert ppo.optim.lr == 6e-4 and rows["optim.lr"]["source"] == "your --set"  # --set over --config
    # a variant starts from the preset's ppo settings and its own overrides win over everything
    spec, variant = arm(preset, "ppo-n4=ppo:rollout.samples_per_prompt=4:optim.lr=7e-4",
                        overrides=["rollout.samples_per_prompt=2", "optim.lr=6e-4"])
    assert (variant.rollout.samples_per_prompt, variant.optim.lr, variant.algorithms["ppo"]["critic_lr"]) == (4, 7e-4, 1e-3)
    assert setting_lines(spec) == [
        "algorithms.ppo.critic_lr=0.001: preset " + str((tmp_path / "tuned.yaml").resolve()) + " (by hand)",
        "rollout.samples_per_prompt=4 (instead of your --set's 2), optim.lr=0.0007 (instead of your --set's 0.0006): "
        "your --algos variant"]


def test_the_comparisons_kl_setting_wins_over_a_per_arm_kl_coefficient(tmp_path):
    preset = write_preset(tmp_path, TUNED)
    _, grpo = arm(preset, "grpo", kl=KLSetting("off"))
    assert grpo.algorithms["grpo"]["beta"] == 0.0 and grpo.optim.lr == 2e-4  # KL alike in every arm; lr its own


def test_an_arm_spec_keeps_its_settings_through_comparison_json(tmp_path):
    preset = write_preset(tmp_path, TUNED)
    spec = parse_arm_spec("ppo").with_preset(load_arm_settings(preset, None, ["optim.lr=6e-4"]))
    saved = json.loads(json.dumps(spec.to_dict()))
    assert ArmSpec.from_dict(saved) == spec
    assert saved["settings"] == setting_rows(spec) and saved["preset_settings"]["provenance"] == "by hand"
    assert ArmSpec.from_dict({"name": "ppo", "algo": "ppo", "overrides": {}}) == ArmSpec("ppo", "ppo")  # older files


def test_the_plan_shows_each_arms_settings_and_where_they_came_from(tmp_path, capsys):
    preset = write_preset(tmp_path, TUNED)
    code = main(["plan", "--preset", preset, "--algos", "grpo,ppo,ppo-n2=ppo:rollout.samples_per_prompt=2",
                 "--set", "optim.lr=5e-4", "--kl", "loss"])
    out = capsys.readouterr().out
    assert code == 0
    assert "  arm grpo (grpo)\n    algorithms.grpo.beta=0.1: preset" in out  # the preset's, with its provenance
    assert "(harness tune --algos grpo,ppo (table: tune.json))" in out
    assert "    optim.lr=0.0005 (instead of the preset's 0.0002): your --set" in out
    assert "  arm ppo (ppo); 32 prompts x 1 per step, 3 steps" in out
    assert "    rollout.samples_per_prompt=2 (instead of the preset's 1): your --algos variant" in out
    assert "note: arm grpo's preset settings were tuned under --kl native; this comparison runs --kl loss" in out
    assert main(["plan", "--preset", preset, "--algos", "grpo,rloo"]) == 0
    assert ("  arm rloo (rloo)\n    not tuned: the preset has no arm_settings for rloo; the preset's shared values"
            in capsys.readouterr().out)


def test_harness_config_shows_the_per_arm_settings(tmp_path, capsys):
    preset = write_preset(tmp_path, TUNED)
    assert main(["config", "optim", "--preset", preset]) == 0
    out = capsys.readouterr().out
    assert "  ppo: algorithms.ppo.critic_lr=0.001, optim.lr=0.0003, rollout.samples_per_prompt=1" in out
    assert "    from: harness tune --algos grpo,ppo (table: tune.json) (tuned under --kl native)" in out
    assert main(["config", "--preset", preset, "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)["arm_settings"]
    assert saved["grpo"]["set"] == {"optim.lr": 2e-4, "algorithms.grpo.beta": 0.1}


@pytest.mark.parametrize("arm_settings, message", [
    ({"a2c": {"set": {"optim.lr": 1e-4}, "provenance": "x"}}, "arm_settings.a2c: unknown algorithm; valid: dapo"),
    ([{"name": "grpo"}], "arm_settings must map an algorithm's name to its {set, provenance}; got list"),
    ({"grpo": {"set": {"budget.total": 64}, "provenance": "x"}},
     "arm_settings.grpo.set: budget.total is the same for every arm of a comparison (fairness)"),
    ({"grpo": {"set": {"model.name": "gpt2"}, "provenance": "x"}}, "model.name is the same for every arm"),
    ({"grpo": {"set": {"algorithms.ppo.critic_lr": 1e-3}, "provenance": "x"}},
     "arm_settings.grpo.set: algorithms.ppo.critic_lr does not apply to grpo (its options are algorithms.grpo.*)"),
    ({"grpo": {"set": {"optim.lr": -1}, "provenance": "x"}}, "arm_settings.grpo: optim.lr: must be above 0"),
    ({"grpo": {"set": {"optim.lrr": 1e-4}, "provenance": "x"}}, "arm_settings.grpo: unknown config field 'optim.lrr'"),
    ({"ppo": {"set": {"algorithms.ppo.critic_lrr": 1e-4}, "provenance": "x"}},
     "arm_settings.ppo: unknown config field 'algorithms.ppo.critic_lrr'"),
    ({"ppo": {"set": {"rollout.samples_per_prompt": 3}, "provenance": "x"}},
     "arm_settings.ppo: rollout.batch_size=32 is not divisible by the group size"),
    ({"grpo": {"set": {"optim.lr": 1e-4}}}, "arm_settings.grpo.provenance: "),
    ({"grpo": {"set": {"optim.lr": 1e-4}, "provenance": ""}}, "arm_settings.grpo.provenance: "),
    ({"grpo": {"set": [1], "provenance": "x"}}, "arm_settings.grpo.set must map section.field to a value"),
    ({"grpo": {"set": {"optim.lr": 1e-4}, "provenance": "x", "seed": 3}}, "arm_settings.grpo.seed"),
    ({"grpo": {"set": {"optim.lr": 1e-4}, "provenance": "x", "kl": "sideways"}},
     "arm_settings.grpo.kl 'sideways' is not one of: native, off, loss, reward"),
])
def test_a_bad_per_arm_entry_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, arm_settings,
                                                                                message):
    preset = write_preset(tmp_path, arm_settings)
    for command in (["compare"], ["plan"], ["run", "--algo", "grpo"], ["tune"]):
        out = tmp_path / "out"
        code = main([*command, "--preset", preset, *(["--out", str(out)] if command[0] != "plan" else [])])
        err = capsys.readouterr().err
        assert code == 2, (command, err)
        assert message in err and f"preset {preset}" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_per_arm_settings_belong_in_a_preset_not_a_config_file(tmp_path, capsys):
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump({"arm_settings": TUNED}))
    code = main(["compare", "--preset", "smoke", "--config", str(config_file), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "arm_settings belongs in a preset (--preset FILE.yaml)" in err
    assert not (tmp_path / "out").exists()
    code = main(["compare", "--preset", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "out")])
    assert code == 2 and f"preset file {tmp_path / 'missing.yaml'} does not exist" in capsys.readouterr().err


def test_the_shipped_presets_per_arm_settings_are_valid_and_smoke_has_none():
    assert load_arm_settings("smoke") == {}
    for name in ("tiny", "study"):
        settings = load_arm_settings(name)
        for algo, entry in settings.items():
            assert entry.provenance and entry.settings, (name, algo)
