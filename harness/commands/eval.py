"""`harness eval`: lm-eval scores of a saved policy (a run folder's final_model/, or a model folder)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from harness import UserError
from harness.commands.terminal import ArmProgress, quiet_libraries
from harness.config.derive import make_task
from harness.config.schema import RolloutConfig, TaskConfig
from harness.results.arm_config import read_arm_config
from harness.results.io import FolderLock, check_writable, command_line, write_json
from harness.tasks.data import is_data_task
from harness.tasks.gym import load_task
from harness.train.lm_eval_bridge import (BATCH_SIZE, DEFAULT_K, check_prompts, score_policy, score_standard,
                              split_task_names)
from harness.train.models import check_device, load_policy
from harness.train.rollout import use_chat_template


def eval_target(target: Path):
    """(model folder, saved Config or None) for a run folder or a saved model folder."""
    if not target.exists():
        raise UserError(f"{target} does not exist; give a run folder (with final_model/) or a saved model folder")
    if (target / "comparison.json").exists():
        arms = sorted(p.name for p in target.iterdir() if (p / "final_model" / "config.json").exists())
        example = f"e.g. harness eval {target / arms[0]}" if arms else "none of its arms has finished yet"
        raise UserError(f"{target} is a comparison folder; pass one of its arm folders ({example})")
    if (target / "config.yaml").exists():
        if not (target / "final_model" / "config.json").exists():
            raise UserError(f"run folder {target} has no final_model/: the run has not finished "
                            f"(finish it with: harness run --run-dir {target} --resume)")
        return target / "final_model", read_arm_config(target)[0]
    if (target / "config.json").exists():
        return target, None
    raise UserError(f"{target} is neither a run folder (config.yaml + final_model/) nor a saved model (config.json)")


def format_score(name: str, score: dict[str, Any] | str) -> str:
    if isinstance(score, str):
        return f"{name:16s} {score}"
    if "pass@1" in score:
        sampled = (f"   maj@{score['k']} {score['maj@k']:6.1%}   pass@{score['k']} {score['pass@k']:6.1%}"
                   if score.get("maj@k") is not None else "")
        return (f"{name:16s} pass@1 {score['pass@1']:6.1%}{sampled}   "
                f"(n={score['n']}, k={score['k']}, {score['seconds']:.1f} s)")
    parts = [f"{entry} {metric} {value:.3f}" for entry, metrics in score["results"].items()
             for metric, value in metrics.items() if metric != "sample_len"]
    return f"{name:16s} " + "   ".join(parts) + f"   ({score['seconds']:.1f} s)"


def evaluate(target: Path | str, tasks: str | None = None, k: int = DEFAULT_K, limit: int | None = None,
             seed: int = 0, max_new_tokens: int | None = None, device: str = "cpu", out: Path | str | None = None) -> int:
    """`harness eval`: score a run's final policy, or a saved model folder, with lm-eval; print and save the scores."""
    target = Path(target)
    model_dir, config = eval_target(target)
    names = [n.strip() for n in (tasks or "").split(",") if n.strip()]
    if not names:
        if config is None:
            raise UserError("a model folder needs --tasks, e.g. --tasks chain_sum (or gsm8k on a machine with the data)")
        names = [config.task.name]
    own = config is not None and is_data_task(config.task.name) and config.task.name in names
    local, standard = split_task_names([n for n in names if not (own and n == config.task.name)])
    if k < 0 or (limit is not None and limit <= 0) or (max_new_tokens is not None and max_new_tokens <= 0):
        raise UserError("--k must be 0 or more, --limit and --max-new-tokens positive")
    task_cfg = config.task if config else TaskConfig()
    rollout = config.rollout if config else RolloutConfig()
    max_new_tokens = max_new_tokens or rollout.max_new_tokens
    quiet_libraries()
    check_device(device)
    out = Path(out) if out else (target / "lm_eval" if config else None)
    if out is not None:
        check_writable(out, "eval output folder")
    # a run folder has one writer at a time: not while its arm trains, not two evals at once
    with FolderLock(target, command_line()) if config else contextlib.nullcontext():
        model, tokenizer = load_policy(str(model_dir), config.model.precision if config else "fp32", device)
        if out is None:  # a model folder's scores: a new temporary folder, once the model loaded
            out = Path(tempfile.mkdtemp(prefix=f"harness-eval-{model_dir.name}-"))
        use_chat_template(tokenizer, task_cfg.chat_template)
        # The run's own task keeps its options; every task its eval size and data seed.
        local_tasks = [load_task(name, eval_size=task_cfg.eval_size, seed=task_cfg.seed,
                                 options=task_cfg.options if name == task_cfg.name else None) for name in local]
        if own:
            local_tasks.insert(0, make_task(config))
        for task in local_tasks:
            check_prompts(tokenizer, task)
        scores: dict[str, Any] = {}
        with ArmProgress(target.name) as progress:
            for task in local_tasks:
                scores[task.name] = score_policy(model, tokenizer, task, k=k, seed=seed, max_new_tokens=max_new_tokens,
                                                 work_dir=out, temperature=rollout.temperature, top_p=rollout.top_p,
                                                 label="eval", limit=limit, progress=progress)
                print(format_score(task.name, scores[task.name]))
            if standard:
                for name, score in score_standard(model, tokenizer, standard, seed=seed, limit=limit,
                                                  log=lambda line: None, progress=progress).items():
                    scores[name] = score
                    print(format_score(name, score))
        write_json(out / "scores.json", {"model": str(model_dir), "seed": seed, "scores": scores})
    print(f"results: {out / 'scores.json'}")
    lm_eval_names = [name for t in local_tasks
                     for name in (scores[t.name]["lm_eval_task"], scores[t.name]["lm_eval_task_sampled"]) if name]
    if local_tasks:
        print("rerun with lm_eval: " + lm_eval_command(model_dir, out, lm_eval_names, device=device, seed=seed,
                                                       limit=limit, chat=tokenizer.harness_chat_template))
    return 0


def lm_eval_command(model_dir: Path, include_path: Path, names: list[str], *, device: str, seed: int,
                    limit: int | None, chat: bool) -> str:
    """The plain `lm_eval` command that scores the same prompts the same way (same batch size, seed, limit).

    >>> command = lm_eval_command(Path("m"), Path("o"), ["harness_chain_sum"], device="cpu", seed=0, limit=5, chat=False)
    >>> print(command.replace(" --", "\\n  --"))
    lm_eval
      --model hf
      --model_args pretrained=m,add_bos_token=False
      --include_path o
      --tasks harness_chain_sum
      --device cpu
      --batch_size 256
      --seed 0
      --limit 5
    """
    return (f"lm_eval --model hf --model_args pretrained={model_dir},add_bos_token=False --include_path {include_path} "
            f"--tasks {','.join(names)} --device {device} --batch_size {BATCH_SIZE} --seed {seed}"
            + (f" --limit {limit}" if limit is not None else "") + (" --apply_chat_template" if chat else ""))
