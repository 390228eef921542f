"""Benchmarks whose output is quoted in notes, never asserted in tests.

`harness bench probes`: what the measured probes cost, as a ratio of step time.
`harness bench memory`: the update phase's peak of live tensors (and a no-grad pass's) with the old log-prob
path, the in-place one (the default) and the chunked LM head (`model.logprob_chunk`).

Runs the same arm with probes on and off, alternating so that drift in the machine's speed hits
both sides alike, and compares the median step time of each side.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from harness.algorithms.batch import RolloutBatch, TrainSettings
from harness.algorithms.grpo import grpo_loss
from harness.algorithms.logprobs import completion_logps, completion_logps_and_entropy
from harness.config.derive import make_task
from harness.measure.live_tensors import LiveTensors
from harness.results.io import read_jsonl
from harness.train.models import char_tokenizer, tiny_model
from harness.train.runner import run_arm


def step_times(run_dir: Path) -> list[float]:
    return [row["time/step"] for row in read_jsonl(run_dir / "steps.jsonl")][1:]  # the first step warms caches


def bench_probes(config, algo: str, repeats: int, echo=print) -> dict[str, float]:
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as scratch:
        for repeat in range(repeats):
            order = (True, False) if repeat % 2 == 0 else (False, True)
            for enabled in order:
                run_dir = Path(scratch) / f"{repeat}-{'on' if enabled else 'off'}"
                summary = run_arm(config, algo, run_dir, probes_enabled=enabled)
                if not summary.ok:
                    raise RuntimeError(f"bench arm failed: {summary.error}")
                times[enabled] += step_times(run_dir)
                echo(f"  repeat {repeat + 1}/{repeats} probes {'on ' if enabled else 'off'}: "
                     f"median step {statistics.median(step_times(run_dir)) * 1000:.1f} ms")
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {"median_step_on_s": on, "median_step_off_s": off, "overhead": on / off - 1,
            "steps_each": len(times[True])}


def bench_probes_command(config, algo: str, repeats: int) -> int:
    """`harness bench probes`: print the median step time with probes on and off, and the overhead."""
    config.run.lm_eval, config.run.eval_every = False, 0  # time the training steps alone
    print(f"bench probes: preset {config.preset}, {algo}, {config.total_steps()} steps per run, {repeats} repeats "
          "(lm-eval and periodic evals off)")
    result = bench_probes(config, algo, repeats)
    verdict = "within" if result["overhead"] < 0.02 else "ABOVE"
    print(f"median step time: probes on {result['median_step_on_s'] * 1000:.2f} ms, "
          f"off {result['median_step_off_s'] * 1000:.2f} ms over {result['steps_each']} steps each")
    print(f"probe overhead: {result['overhead']:+.2%} of step time ({verdict} the 2% target)")
    return 0


# ---------------------------------------------------------------- harness bench memory

# The chunked path's positions per chunk when the config leaves model.logprob_chunk at 0 (off).
BENCH_CHUNK = 16


def old_logprob_path(model, batch, temperature: float = 1.0, chunk: int = 0, entropy: bool = True):
    """How log-probs were computed before this harness followed TRL: logits for every position, a full
    fp32 log_softmax over the vocabulary, and entropy with its gradient. Kept here only to measure it."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    logits = logits[:, batch.prompt_length - 1: -1].float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    logps = log_probs.gather(-1, batch.input_ids[:, batch.prompt_length:].unsqueeze(-1)).squeeze(-1)
    return logps, -(log_probs.exp() * log_probs).sum(-1) if entropy else None


def old_no_grad_path(model, batch, temperature: float = 1.0, chunk: int = 0):
    return old_logprob_path(model, batch, temperature, entropy=False)


def update_logprob_path(model, batch, temperature: float = 1.0, chunk: int = 0):
    """The update's own call (`Algorithm._policy_terms`): completion positions only, the temperature divided
    in place, a selective log-softmax, entropy under no_grad; with `chunk`, the LM head chunk by chunk."""
    settings = TrainSettings(temperature=temperature, logprob_chunk=chunk)
    return completion_logps_and_entropy(model, batch, settings)


def no_grad_logprob_path(model, batch, temperature: float = 1.0, chunk: int = 0):
    """The no-grad passes' own call (`batched_logps` on one part): log-probs only."""
    return completion_logps(model, batch, temperature, chunk=chunk)


# (name, the update's path, the no-grad passes' path, chunked, what it is)
LOGPROB_PATHS = (
    ("old", old_logprob_path, old_no_grad_path, False,
     "logits at every position, full fp32 log_softmax, entropy with grad"),
    ("in-place", update_logprob_path, no_grad_logprob_path, False,
     "completion positions, logits divided in place, selective log-softmax, entropy under no_grad "
     "(model.logprob_chunk=0)"),
    ("chunked", update_logprob_path, no_grad_logprob_path, True,
     "the LM head {chunk} positions at a time, recomputed in backward (model.logprob_chunk={chunk})"),
)


def update_peak(model, batch, path, temperature: float = 1.0, chunk: int = 0) -> dict[str, int]:
    """Peak of live tensors over one forward and backward of GRPO's loss on `batch`, by category, and
    `kept`: the bytes the forward left alive for backward (live tensors after the loss less before it)."""
    live = LiveTensors(trained=[model])
    model.train()
    with live, live.phase("policy_update"):
        before = live.current()["total"]
        logps, entropy = path(model, batch, temperature, chunk)
        loss, _ = grpo_loss(logps, batch.old_logps, batch.advantages, batch.completion_mask, ref_logps=None, beta=0.0)
        loss = loss - 0.0 * entropy.mean()  # the old path kept entropy in the graph; keep its tensors alive alike
        kept = live.current()["total"] - before
        loss.backward()
    model.zero_grad(set_to_none=True)
    return {**live.step_peaks["policy_update"], "kept": kept}


def no_grad_peak(model, batch, path, temperature: float = 1.0, chunk: int = 0) -> int:
    """Peak of live tensors over one no-grad pass on `batch` (the old and reference log-probs' kind)."""
    live = LiveTensors(frozen=[model])
    model.eval()
    with live, live.phase("old_logprobs"), torch.no_grad():
        path(model, batch, temperature, chunk)
    return live.step_peaks["old_logprobs"]["total"]


def synthetic_batch(config, vocabulary: int, rows: int) -> RolloutBatch:
    """A minibatch of the config's shapes: prompts of the task's length, full-length completions."""
    task = make_task(config)
    prompt = max(len(e.prompt) for e in task.eval_examples())
    completion = config.rollout.max_new_tokens
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocabulary, (rows, prompt + completion), generator=generator)
    mask = torch.ones(rows, completion)
    return RolloutBatch(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=mask,
                        prompt_length=prompt, scores=torch.rand(rows, generator=generator),
                        group_size=config.rollout.samples_per_prompt, old_logps=-torch.rand(rows, completion),
                        advantages=torch.randn(rows, completion, generator=generator))


def bench_memory(config) -> tuple[dict[str, dict[str, int]], dict]:
    """({path: update peak by category}, the shapes) on this config's shapes, random weights (memory does not
    depend on them): the old path, the in-place path (model.logprob_chunk=0) and the chunked one."""
    task = make_task(config)
    tokenizer = char_tokenizer(task.alphabet)
    torch.manual_seed(0)
    model = tiny_model(config.model, tokenizer)
    rows = config.rollout.batch_size // config.optim.minibatches
    batch = synthetic_batch(config, len(tokenizer), rows)
    chunk = config.model.logprob_chunk or BENCH_CHUNK
    temperature = config.rollout.temperature
    peaks = {name: {**update_peak(model, batch, path, temperature, chunk if chunked else 0),
                    "no_grad": no_grad_peak(model, batch, no_grad_path, temperature, chunk if chunked else 0)}
             for name, path, no_grad_path, chunked, _ in LOGPROB_PATHS}
    return peaks, {"vocabulary": model.config.vocab_size, "rows": rows, "prompt": batch.prompt_length,
                   "completion": batch.completion_mask.shape[1], "chunk": chunk, "temperature": temperature,
                   "tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight}


def bench_memory_command(config) -> int:
    """`harness bench memory`: the update phase's peak of live tensors with the old log-prob path, the
    in-place one and the chunked one, on this config's shapes."""
    peaks, shape = bench_memory(config)
    print(f"bench memory: preset {config.preset}, vocabulary {shape['vocabulary']:,} rows, a minibatch of "
          f"{shape['rows']} sequences ({shape['prompt']} prompt + {shape['completion']} completion tokens), fp32, "
          f"temperature {shape['temperature']:g}; measured: peaks of live tensors over one forward and backward "
          "(the update's), and over one no-grad pass of the same rows (old and reference log-probs')")
    for name, _, _, _, label in LOGPROB_PATHS:
        parts = ", ".join(f"{k} {v / 2**20:,.1f}" for k, v in peaks[name].items()
                          if k not in ("total", "kept", "no_grad"))
        print(f"  {name}: peak {peaks[name]['total'] / 2**20:,.1f} MiB, kept for backward "
              f"{peaks[name]['kept'] / 2**20:,.1f} MiB, a no-grad pass {peaks[name]['no_grad'] / 2**20:,.1f} MiB  "
              f"({label.format(chunk=shape['chunk'])}; update peak MiB by category: {parts})")
    for name in ("in-place", "chunked"):
        print(f"old / {name}: update peak {peaks['old']['total'] / peaks[name]['total']:.3f}x, kept for backward "
              f"{peaks['old']['kept'] / peaks[name]['kept']:.1f}x, no-grad pass "
              f"{peaks['old']['no_grad'] / peaks[name]['no_grad']:.3f}x")
    ratio = peaks["old"]["total"] / peaks["chunked"]["total"]
    print(f"old / chunked update peak: {'meets' if ratio >= 4 else 'BELOW'} the 4x target")
    if shape["tied"]:
        weight = shape["vocabulary"] * config.model.hidden_size * 4
        params = peaks["chunked"].get("params", 0)
        floor, floor_in_place = params + 3 * weight, params + 2 * weight
        print(f"  arithmetic: the tied embedding's gradient meets the LM head's in backward, and autograd sums the "
              f"two out of place while a dispatch mode runs (this tracker, as in a run with probes on; in place "
              f"without one): 3 x {weight / 2**20:,.1f} MiB (vocabulary x hidden x 4 bytes) live at once over "
              f"{params / 2**20:,.1f} MiB of parameters: a floor of {floor / 2**20:,.1f} MiB that the update's "
              f"backward holds whatever the log-prob path: old / floor = {peaks['old']['total'] / floor:.3f}x "
              f"(2 x, summed in place: {floor_in_place / 2**20:,.1f} MiB, "
              f"{peaks['old']['total'] / floor_in_place:.3f}x)")
    return 0
