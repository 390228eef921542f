"""The lm-eval bridge: score a policy on its task's held-out split, and on standard benchmarks by name.

Local tasks run fully offline: `harness.tasks.lm_eval.write_local_tasks` writes the held-out split as JSONL
and two lm-eval task YAMLs (greedy -> pass@1; k samples -> pass@k and maj@k), and
`lm_eval.simple_evaluate` scores the in-memory model through `HFLM(pretrained=model, tokenizer=...)`.
Greedy lm-eval generation stops where `harness.train.rollout.greedy_eval` stops (EOS or max_new_tokens,
prompts encoded without special tokens), so pass@1 here equals the harness's own held-out accuracy.

pass@k and maj@k show whether RL sharpened the distribution (maj@k up) or widened what the model can
solve at all (pass@k up); DeepSeekMath (arXiv 2402.03300, section 5.2.2) found the first, not the second.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterable

import numpy as np
import torch

from harness import UserError
from harness.results.io import atomic_file
from harness.tasks.lm_eval import LocalTasks, write_local_tasks
from harness.tasks.lm_eval.metrics import majority_at_k, majority_vote, pass_at_k  # noqa: F401  (the public API)
from harness.tasks.lm_eval.standard import standard_task_index, standard_task_names, task_families, tasks_root
from harness.train.hub import hub_reachable

DEFAULT_K = 8  # samples per prompt for maj@k and pass@k
BATCH_SIZE = 256  # sequences per generate call, as greedy_eval


# ---------------------------------------------------------------- running lm-eval quietly

@contextlib.contextmanager
def preserved_rng():
    """lm-eval seeds the global generators; put them back so that a mid-training eval changes nothing."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


@contextlib.contextmanager
def quiet():
    """lm-eval's progress bars and info logs off; its errors still raise."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import datasets
        bars = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()
    except ImportError:
        bars = False
    try:
        with contextlib.redirect_stderr(io.StringIO()), child_stderr_silenced():
            yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.utils.logging.enable_progress_bar()


@contextlib.contextmanager
def child_stderr_silenced():
    """File descriptor 2 to /dev/null: lm-eval runs `git describe` for its environment record, which
    prints 'fatal: not a git repository' into the user's log when run outside a git checkout."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def eval_mode(model):
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def counting_lm(progress, phase: str):
    """HFLM that reports each generated batch as progress(phase, done, total, {}): lm-eval's own
    progress bars are off (they would flood a log), and a long scoring pass should not look hung."""
    from lm_eval.models.huggingface import HFLM

    class CountingHFLM(HFLM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            self._requests, self._done = len(requests), 0
            progress(phase, 0, self._requests, {})
            return super().generate_until(requests, disable_tqdm)

        def _model_generate(self, context, *args, **kwargs):
            out = super()._model_generate(context, *args, **kwargs)
            self._done += context.shape[0]
            progress(phase, min(self._done, self._requests), self._requests, {})
            return out

    return CountingHFLM


def run_lm_eval(model, tokenizer, task_names: list[str], task_manager, *, seed: int, limit: int | None,
                batch_size: int, add_bos_token: bool | None, log_samples: bool = True, progress=None,
                phase: str = "lm-eval") -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on the in-memory model, every seed set to `seed`, no cache, no bootstrap.

    The global random generators and the model's train/eval mode are left as they were found. Prompts
    go through the chat template exactly when the rollout puts them through it (rollout.use_chat_template).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    model_class = counting_lm(progress, phase) if progress else HFLM
    chat = bool(getattr(tokenizer, "harness_chat_template", False))
    with preserved_rng(), eval_mode(model), quiet():
        lm = model_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos_token)
        return lm_eval.simple_evaluate(
            model=lm, tasks=task_names, task_manager=task_manager, limit=limit, log_samples=log_samples,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            bootstrap_iters=0, apply_chat_template=chat)


def model_max_length(model, tokenizer) -> int:
    from lm_eval.models.utils import resolve_max_length
    return resolve_max_length(model.config, tokenizer)


# ---------------------------------------------------------------- scoring one policy

def metrics_of(entry: dict[str, Any], filter_name: str) -> dict[str, float]:
    """{'pass@4': 0.5, ...} from lm-eval's {'pass@4,samples': 0.5, 'pass@4_stderr,samples': 'N/A', ...}."""
    suffix = f",{filter_name}"
    return {key[: -len(suffix)]: float(value) for key, value in entry.items()
            if key.endswith(suffix) and "_stderr" not in key}


def write_samples(path: Path, samples: list[dict[str, Any]]) -> None:
    """Each prompt's completions and extracted answers, for a look at what a policy got right."""
    with atomic_file(path, "w") as handle:
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            answers = sample["filtered_resps"]
            answers = answers[0] if answers and isinstance(answers[0], list) else answers  # repeats: one list
            row = {"doc_id": sample["doc_id"], "prompt": sample["doc"]["prompt"], "target": sample["target"],
                   "completions": list(sample["resps"][0]), "answers": list(answers)}
            handle.write(json.dumps(row, default=str) + "\n")


def score_policy(model, tokenizer, task, *, k: int = DEFAULT_K, seed: int = 0, max_new_tokens: int,
                 work_dir: Path, temperature: float = 1.0, top_p: float = 1.0, label: str = "policy",
                 limit: int | None = None, extra_tasks: Iterable[str] = (), batch_size: int = BATCH_SIZE,
                 log=print, progress=None) -> dict[str, Any]:
    """Score `model` on `task`'s held-out split with lm-eval: greedy pass@1, and maj@k / pass@k from
    k samples per prompt (k = 0: greedy only). Plain JSON-able figures; see the module docstring.

    The JSONL split and task YAMLs go to `work_dir` (absolute paths; reusable with `lm_eval`), and
    each prompt's completions to `work_dir/samples_<label>_<lm-eval task>.jsonl`. `extra_tasks` are
    standard lm-eval task names (gsm8k, ...), scored by `score_standard`. `progress(phase, done, total,
    info)`, if given, hears of every generated batch (phase "lm-eval <label>").
    """
    from lm_eval.tasks import TaskManager
    if k < 0:
        raise ValueError(f"k must be 0 (greedy only) or more, got {k}")
    started = time.perf_counter()
    limit_length = model_max_length(model, tokenizer)
    if max_new_tokens >= limit_length:
        raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's "
                        f"{limit_length} positions; lower rollout.max_new_tokens")
    check_prompts(tokenizer, task)
    stop = [tokenizer.eos_token] if tokenizer.eos_token else []
    local: LocalTasks = write_local_tasks(task, work_dir, max_gen_toks=max_new_tokens, stop=stop, k=k,
                                          temperature=temperature, top_p=top_p)
    names = [local.greedy] + ([local.sampled] if local.sampled else [])
    with quiet():
        task_manager = TaskManager(include_path=str(local.folder), include_defaults=False)
    # Prompts are encoded without special tokens (no BOS), as the rollout encodes them.
    output = run_lm_eval(model, tokenizer, names, task_manager, seed=seed, limit=limit, batch_size=batch_size,
                         add_bos_token=False, progress=progress, phase=f"lm-eval {label}")
    results = output["results"]
    for name in names:
        write_samples(local.folder / f"samples_{label}_{name}.jsonl", output["samples"][name])
    greedy = metrics_of(results[local.greedy], "answer")
    sampled = metrics_of(results[local.sampled], "samples") if local.sampled else {}
    score = {
        "task": task.name, "lm_eval_task": local.greedy, "lm_eval_task_sampled": local.sampled,
        "n": len(output["samples"][local.greedy]), "k": k,
        "pass@1": greedy["exact_match"],
        "maj@k": sampled.get(f"maj@{k}"), "pass@k": sampled.get(f"pass@{k}"),
        "sampled": sampled,  # pass@j and maj@j for j = 1, 2, 4, ... k, from the same k samples
        "temperature": temperature, "top_p": top_p, "seed": seed, "max_new_tokens": max_new_tokens,
        "work_dir": str(local.folder), "lm_eval_version": lm_eval_version(),
    }
    score["seconds"] = round(time.perf_counter() - started, 3)
    extra = list(extra_tasks)
    if extra:
        score["extra"] = score_standard(model, tokenizer, extra, seed=seed, limit=limit,
                                        batch_size=batch_size, log=log, progress=progress)
    return score


def check_prompts(tokenizer, task) -> None:
    """One clear line when the tokenizer cannot spell the task's prompts (a tiny model of another task)."""
    for example in task.eval_examples():
        ids = tokenizer.encode(example.prompt, add_special_tokens=False)
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        if not ids or tokenizer.unk_token_id in ids or decoded.replace(" ", "") != example.prompt.replace(" ", ""):
            raise UserError(f"this model's tokenizer cannot spell {task.name}'s prompts ('{example.prompt}' reads "
                            f"back as '{decoded}'); score it on the task it was trained for")


def lm_eval_version() -> str:
    from importlib.metadata import version
    return version("lm_eval")


# ---------------------------------------------------------------- standard benchmarks by name

def split_task_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(local gym tasks, standard lm-eval tasks); one clear error for any other name."""
    from harness.tasks.gym import task_names
    local, standard = [], []
    for name in names:
        if name in task_names():
            local.append(name)
        elif name in standard_task_names():
            standard.append(name)
        else:
            raise UserError(f"unknown task '{name}'; local tasks: {', '.join(task_names())}; "
                            f"or an lm-eval task such as gsm8k, gsm8k_cot, minerva_math (list: lm_eval ls tasks)")
    return local, standard


def task_manager_for(name: str):
    """A TaskManager that indexes only the task families that define `name` (all of them if needed)."""
    from lm_eval.tasks import TaskManager
    root = tasks_root()
    _, members = standard_task_index()
    wanted = {name} | members.get(name, set())
    families = sorted(task_families(name))
    with quiet():
        if families:
            manager = TaskManager(include_path=[str(root / f) for f in families], include_defaults=False)
            if wanted <= set(manager.all_tasks):
                return manager
        return TaskManager()


@contextlib.contextmanager
def hub_offline():
    """Offline mode for `datasets` and `huggingface_hub` for a while: data from the local cache or a
    quick failure, instead of half a minute of retries against a Hub that cannot be reached."""
    import datasets.config
    import huggingface_hub.constants
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def not_available(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"not available: {type(err).__name__}: {lines[0] if lines else 'no message'}"


def score_standard(model, tokenizer, names: Iterable[str], *, seed: int = 0, limit: int | None = None,
                   batch_size: int = BATCH_SIZE, log=print, progress=None) -> dict[str, Any]:
    """Standard lm-eval tasks by name, each on its own so that one that cannot run spoils no other.

    Returns {name: {"results": {task or subtask: {metric: value}}, "seconds": s}} or, where the data
    cannot be had (offline, gated) or the task cannot run on this model, {name: "not available: ..."}.
    """
    out: dict[str, Any] = {}
    names = list(names)
    offline = bool(names) and not hub_reachable()
    for name in names:
        started = time.perf_counter()
        try:
            with hub_offline() if offline else contextlib.nullcontext():
                output = run_lm_eval(model, tokenizer, [name], task_manager_for(name), seed=seed, limit=limit,
                                     batch_size=batch_size, add_bos_token=None, log_samples=False,
                                     progress=progress, phase=f"lm-eval {name}")
        except Exception as err:  # data unreachable, gated, or a task this model cannot run
            out[name] = not_available(err) + (" (no connection to the Hub: only locally cached data)" if offline else "")
            log(f"lm-eval task '{name}' {out[name]}; going on with the local tasks")
            continue
        results = {entry: {key: value for key, value in metrics.items()
                           if isinstance(value, (int, float)) and "_stderr" not in key}
                   for entry, metrics in output["results"].items()}
        out[name] = {"results": results, "seconds": round(time.perf_counter() - started, 3)}
    return out


# ---------------------------------------------------------------- the base model's score, once per comparison

BASE_SCORES = "base_lm_eval"  # the folder, inside a comparison or sweep folder, of its base models' scores
GROUP_FILES = ("comparison.json", "sweep.json")  # what marks an arm's parent folder as a comparison or sweep


def shared_base_score(run_dir: Path, config, model_path: str) -> Path | None:
    """Where the base model's lm-eval score is shared among the arms of one comparison (or sweep):
    `<folder>/base_lm_eval/<hash>.json`, or None for an arm run on its own. The hash is of what determines
    the score: the model (the seed's warm start), the seed, k, lengths, sampling, precision and the task.
    Both arms of a seed share the warm start, so the first to start scores it and the others read its file;
    a comparison killed before the file was written scores it again on resume."""
    from harness.config.schema import config_hash
    folder = Path(run_dir).parent
    if not any((folder / name).exists() for name in GROUP_FILES):
        return None
    run, rollout = config.run, config.rollout
    settings = {"model": model_path, "seed": run.seed, "k": run.lm_eval_k, "tasks": list(run.eval_tasks),
                "max_new_tokens": rollout.max_new_tokens, "temperature": rollout.temperature, "top_p": rollout.top_p,
                "precision": config.model.precision, "task": config.task.model_dump(mode="json"), "split": run.eval_split}
    return folder / BASE_SCORES / f"{config_hash(settings)}.json"
