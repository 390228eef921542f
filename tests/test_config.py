"""The config schema: one coercion rule for the config and every algorithm's options, unknown fields refused,
bounds and choices on the fields, one line per error; `harness config`; the README's table is the schema's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import harness
from harness import UserError
from harness.algorithms import KL_MODES, parse_options
from harness.cli import build_parser
from harness.config.choices import BUDGET_UNITS, CHAT_TEMPLATES, DEVICE_MEMORY_GIB, PRECISIONS, ROLLOUT_ENGINES
from harness.config.load import config_from_dict, load_config
from harness.config.reference import README_BEGIN, README_END, field_rows, markdown_table, readme_table
from harness.config.schema import Config, validate

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "baselines" / "cpu-smoke.json"


def config_value(section: str, field: str, value):
    """The value as the config reads it, or the error line."""
    try:
        return getattr(getattr(Config.parse({section: {field: value}}), section), field)
    except UserError as err:
        return f"error: {err}"


def option_value(algo: str, field: str, value):
    """The value as an algorithm's options read it (as config.derive does for algorithms.ALGO), or the error line."""
    try:
        return getattr(parse_options(algo, {field: value}, where=f"algorithms.{algo}."), field)
    except UserError as err:
        return f"error: {err}"


# (config field, option field of the same type, value, what both read: a value, or the error after the name)
RULE = [
    # whole numbers: 3.0 was accepted by the config (as 3) and refused by the options before they shared one rule
    (("run", "eval_every"), ("ppo", "critic_warmup_steps"), 3.0, 3),
    (("run", "eval_every"), ("ppo", "critic_warmup_steps"), "3", 3),
    (("run", "eval_every"), ("ppo", "critic_warmup_steps"), "1e1", 10),
    (("run", "eval_every"), ("ppo", "critic_warmup_steps"), 3.5, "must be an integer, got 3.5"),
    (("run", "eval_every"), ("ppo", "critic_warmup_steps"), True, "must be an integer, got True"),
    (("run", "eval_every"), ("ppo", "critic_warmup_steps"), float("inf"), "must be an integer, got inf"),
    (("run", "eval_every"), ("ppo", "critic_warmup_steps"), "three", "must be an integer, got 'three'"),
    # numbers: YAML 1.1 reads 1e-4 as text; nan and inf are not numbers to train with; a bool is not 1
    (("optim", "lr"), ("grpo", "beta"), "1e-4", 1e-4),
    (("optim", "lr"), ("grpo", "beta"), 1, 1.0),
    (("optim", "lr"), ("grpo", "beta"), float("nan"), "must be a finite number, got nan"),
    (("optim", "lr"), ("grpo", "beta"), "inf", "must be a finite number, got 'inf'"),
    (("optim", "lr"), ("grpo", "beta"), True, "must be a finite number, got True"),
    (("optim", "lr"), ("grpo", "beta"), [0.1], "must be a finite number, got [0.1]"),
    # bools: true or false, nothing else
    (("run", "lm_eval"), ("ppo", "whiten"), False, False),
    (("run", "lm_eval"), ("ppo", "whiten"), 1, "must be true or false, got 1"),
    (("run", "lm_eval"), ("ppo", "whiten"), "maybe", "must be true or false, got 'maybe'"),
    (("run", "lm_eval"), ("ppo", "whiten"), "true", "must be true or false, got 'true'"),
    # choices: text among the field's own
    (("model", "precision"), ("ppo", "critic_pass"), True, "must be text, got True"),
]


@pytest.mark.parametrize("config_field, option_field, value, expected", RULE,
                         ids=[f"{c[1]}-{o[1]}-{v!r}" for c, o, v, _ in RULE])
def test_one_coercion_rule_for_the_config_and_the_options(config_field, option_field, value, expected):
    section, field = config_field
    algo, option = option_field
    as_config, as_option = config_value(section, field, value), option_value(algo, option, value)
    if isinstance(expected, str):
        assert as_config == f"error: {section}.{field}: {expected}"
        assert as_option == f"error: algorithms.{algo}.{option}: {expected}"
    else:
        assert as_config == as_option == expected
        assert type(as_config) is type(as_option) is type(expected)


def test_yaml_and_set_read_numbers_the_same_way(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("optim:\n  lr: 1e-4\nrun:\n  eval_every: 3.0\nalgorithms:\n  ppo:\n    critic_warmup_steps: 2.0\n")
    from harness.config.derive import algorithm_options
    from_file = load_config("smoke", str(path))
    from_set = load_config("smoke", overrides=["optim.lr=1e-4", "run.eval_every=3.0",
                                               "algorithms.ppo.critic_warmup_steps=2.0"])
    for config in (from_file, from_set):
        assert (config.optim.lr, config.run.eval_every) == (1e-4, 3)
        assert algorithm_options(config, "ppo").critic_warmup_steps == 2


@pytest.mark.parametrize("value, message", [
    ({"rollout": {"colour": "red"}}, "unknown config field 'rollout.colour'; valid: backend, batch_size, "
                                     "logprob_batch_size, max_new_tokens, samples_per_prompt, slices, temperature, top_p"),
    ({"colour": "red"}, "unknown config field 'colour'; valid: algorithms, budget, estimate, model, optim, preset, "
                        "rollout, run, task, verdict"),
    ({"rollout": 3}, "rollout: must be a mapping of fields, got 3"),
    ({"algorithms": {"a2c": {}}}, "unknown section 'algorithms.a2c'; valid: algorithms.dapo,"),
    ({"algorithms": {"grpo": 0.1}}, "algorithms.grpo: must be a mapping, got 0.1"),
    ({"task": {"options": [1]}}, "task.options: must be a mapping, got [1]"),
])
def test_unknown_and_misshapen_fields_are_one_line(value, message):
    with pytest.raises(UserError) as err:
        Config.parse(value)
    assert str(err.value).startswith(message), err.value


def test_unknown_options_name_the_valid_ones():
    with pytest.raises(UserError) as err:
        parse_options("rloo", {"beta": 0.1}, where="algorithms.rloo.")
    assert str(err.value) == "unknown config field 'algorithms.rloo.beta'; valid: eps_high, eps_low, kl_coef, kl_loss_coef"


@pytest.mark.parametrize("values, message", [
    ({"rollout": {"top_p": 0}}, "rollout.top_p: must be above 0, got 0.0"),  # gt
    ({"rollout": {"top_p": 1.5}}, "rollout.top_p: must be at most 1, got 1.5"),  # le
    ({"run": {"seed": -1}}, "run.seed: must be at least 0, got -1"),  # ge
    ({"run": {"seed": 4294}}, "run.seed: must be at most 4293, got 4294"),  # le: seed * 1,000,003 + step < 2**32
    ({"estimate": {"rollout_reserve": 1}}, "estimate.rollout_reserve: must be below 1, got 1.0"),  # lt
    ({"verdict": {"power": 0.4}}, "verdict.power: must be at least 0.5, got 0.4"),
    ({"model": {"precision": "fp8"}}, "model.precision: 'fp8' is not one of: fp32, bf16-mixed, bf16"),
    ({"budget": {"unit": "hours"}}, "budget.unit: 'hours' is not one of: completions, tokens, steps"),
    ({"verdict": {"claim": 0.3, "band": 0.3}}, "verdict.band must lie below verdict.claim (the band is a half-width "
                                               "around the claim), got 0.3 ± 0.3"),
    ({"rollout": {"batch_size": 30}}, "rollout.batch_size=30 is not divisible by the group size"),
])
def test_bounds_choices_and_fields_that_agree(values, message):
    with pytest.raises(UserError) as err:
        Config.parse(values)
    assert str(err.value).startswith(message), err.value


@pytest.mark.parametrize("algo, values, message", [
    ("dapo", {"max_generation_rounds": 0}, "algorithms.dapo.max_generation_rounds: must be at least 1, got 0"),
    ("grpo", {"eps_low": 1.5}, "algorithms.grpo.eps_low: must be at most 1, got 1.5"),
    ("ppo", {"vf_clip": 0}, "algorithms.ppo.vf_clip: must be above 0, got 0.0"),
    ("grpo", {"aggregation": "constant"}, "algorithms.grpo.aggregation: 'constant' is not one of: sequence, token"),
])
def test_option_bounds_and_choices(algo, values, message):
    with pytest.raises(UserError, match=f"^{message.replace('.', '[.]')}$"):
        parse_options(algo, values, where=f"algorithms.{algo}.")


def test_enumerations_are_written_once():
    """The CLI's choices are the schema's (config.choices, harness.algorithms.KL_MODES), not a second copy."""
    flags = {action.dest: action.choices for sub in build_parser()._subparsers._group_actions[0].choices.values()
             for action in sub._actions if action.choices}
    assert tuple(flags["budget_unit"]) == BUDGET_UNITS == ("completions", "tokens", "steps")
    assert tuple(flags["chat_template"]) == CHAT_TEMPLATES
    assert tuple(flags["kl"]) == KL_MODES
    assert tuple(flags["rollout_engine"]) == ROLLOUT_ENGINES
    assert list(flags["device_memory"]) == list(DEVICE_MEMORY_GIB)
    choices = {row.dotted: row.choices for row in field_rows() if row.choices}
    assert choices["model.precision"] == PRECISIONS and choices["budget.unit"] == BUDGET_UNITS
    assert choices["estimate.device_memory"] == tuple(DEVICE_MEMORY_GIB)


def test_list_fields_take_lists_or_commas_and_save_as_before():
    config = load_config("smoke", overrides=["run.eval_tasks=gsm8k, arc_easy", "run.report_to=trackio",
                                             "estimate.at_scale=Qwen/Qwen2.5-7B,Qwen/Qwen2.5-0.5B"])
    assert config.run.eval_tasks == ["gsm8k", "arc_easy"] and config.run.report_to == ["trackio"]
    assert config.estimate.at_scale == ["Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-0.5B"]
    saved = config.to_dict()
    # config.yaml holds them as comma-separated text, as it did when they were text fields
    assert saved["run"]["eval_tasks"] == "gsm8k,arc_easy" and saved["run"]["report_to"] == "trackio"
    assert saved["estimate"]["at_scale"] == "Qwen/Qwen2.5-7B,Qwen/Qwen2.5-0.5B"
    assert config_from_dict(saved) == config
    as_lists = config_from_dict({**saved, "run": {**saved["run"], "eval_tasks": ["gsm8k", "arc_easy"]}})
    assert as_lists == config  # a YAML list reads the same
    empty = load_config("smoke", overrides=["run.eval_tasks=", "run.report_to=none", "estimate.at_scale=none"])
    assert (empty.run.eval_tasks, empty.run.report_to, empty.estimate.at_scale) == ([], [], [])
    assert (empty.to_dict()["run"]["eval_tasks"], empty.to_dict()["run"]["report_to"]) == ("", "none")


def test_a_config_saved_before_the_schema_moved_reads_back():
    """The gate's baseline holds a config.yaml written by the dataclass schema (list fields as text, fields added
    since then absent): it reads, and saves again in the same form."""
    saved = json.loads(BASELINE.read_text())["config"]
    config = config_from_dict(saved)
    assert config.run.eval_tasks == [] and config.run.report_to == []
    again = config.to_dict()
    assert all(again[section][field] == value for section, fields in saved.items() if isinstance(fields, dict)
               for field, value in fields.items()), "a field saved before reads back to another saved form"


def test_fields_set_by_code_are_checked_too():
    config = load_config("smoke")
    config.estimate.at_scale = "none"  # as text, as a user would write it
    assert config.estimate.at_scale == []
    with pytest.raises(UserError, match="^run.eval_every: must be an integer, got 3.5$"):
        config.run.eval_every = 3.5
    assert config.run.eval_every == 0
    config.algorithms["a2c"] = {}  # a mapping changed in place is checked by validate()
    with pytest.raises(UserError, match="unknown section 'algorithms.a2c'"):
        validate(config)


def test_every_field_has_a_one_sentence_description():
    rows = field_rows()
    assert len(rows) > 100
    assert [r.dotted for r in rows if not r.description.endswith(".") or len(r.description) < 6] == []


# ---------------------------------------------------------------- harness config


def test_harness_config_lists_every_field_as_json():
    result = harness("config", "--json", check=True)
    listed = json.loads(result.stdout)
    fields = {f["field"]: f for f in listed["fields"]}
    assert list(fields) == [r.dotted for r in field_rows()]
    assert fields["algorithms.ppo.critic_warmup_steps"] == {
        "field": "algorithms.ppo.critic_warmup_steps", "type": "int", "default": 0, "bounds": {"ge": 0}, "choices": [],
        "allowed": "≥ 0", "description": "First rollout steps that train the critic only (verl critic_warmup); "
                                         "they spend budget."}
    assert fields["rollout.top_p"]["allowed"] == "(0, 1]" and fields["run.seed"]["bounds"] == {"ge": 0, "le": 4293}
    assert fields["model.precision"]["choices"] == ["fp32", "bf16-mixed", "bf16"]
    assert fields["estimate.at_scale"]["type"] == "list[str]"
    assert fields["estimate.at_scale"]["default"] == ["Qwen/Qwen2.5-7B"]


def test_harness_config_with_a_preset_shows_its_values():
    result = harness("config", "rollout", "--preset", "smoke", "--set", "rollout.top_p=0.9", "--json", check=True)
    fields = {f["field"]: f for f in json.loads(result.stdout)["fields"]}
    assert set(fields) == {f"rollout.{name}" for name in Config.model_fields["rollout"].annotation.model_fields}
    assert (fields["rollout.batch_size"]["default"], fields["rollout.batch_size"]["value"]) == (256, 32)
    assert fields["rollout.top_p"]["value"] == 0.9


def test_harness_config_prints_a_table_per_section():
    result = harness("config", "algorithms.ppo", check=True)
    assert result.stdout.startswith("algorithms.ppo: PPO for language models")
    line = next(line for line in result.stdout.splitlines() if "critic_pass" in line)
    assert "choice" in line and "separate" in line and "separate, joint" in line
    bad = harness("config", "rollout.colour")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "harness: error: no config field under 'rollout.colour'; sections: model, task, rollout, budget, optim, run, "
        "verdict, estimate, algorithms.NAME"]


def test_harness_config_of_a_section_does_not_import_torch():
    code = ("import sys; from harness.cli import main; main(['config', 'run', '--preset', 'smoke', '--json']); "
            "print('torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "False"


# ---------------------------------------------------------------- the README's table


def test_the_readmes_configuration_table_is_the_schemas():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_table(readme) == markdown_table(), (
        "README.md's configuration table differs from the schema; regenerate it: harness config --markdown README.md")


def test_harness_config_markdown_rewrites_the_table_between_its_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# Title\n\n{README_BEGIN}\n| section | fields |\n| old | stale |\n{README_END}\n\nAfter.\n")
    result = harness("config", "--markdown", str(path), check=True)
    assert "configuration table rewritten" in result.stdout
    text = path.read_text()
    assert text == f"# Title\n\n{README_BEGIN}\n{markdown_table()}\n{README_END}\n\nAfter.\n"
    assert "up to date" in harness("config", "--markdown", str(path), check=True).stdout
    path.write_text("# no markers\n")
    refused = harness("config", "--markdown", str(path))
    assert refused.returncode == 2 and "no configuration table markers" in refused.stderr
