"""GPU validation of `harness estimate`: estimate vs the CUDA allocator's peak, per phase, at real shapes.

For Qwen2.5-0.5B- and 1.5B-shaped models (random weights, built from the shipped config.json facts), at
512-token prompts and 1024-token completions, bf16-mixed with activation checkpointing, GRPO and PPO: a
real arm on one GPU (`harness run --device cuda`, live tensors and allocator peaks recorded on every step)
against `harness estimate` of the same config and shapes. Each phase's estimate must lie within 5% of the
allocator's peak (`torch.cuda.max_memory_allocated`, which also holds cuBLAS's workspaces, about 65 MiB on
an H200, and the allocator's rounding), and within 1% of the measured live tensors.

    python tests/gpu/validate_estimate.py --out /tmp/validate            # on a machine with a GPU
    python tests/gpu/validate_estimate.py --device cpu --shapes Qwen/Qwen2.5-0.5B --prompt 16 --completion 16 \\
        --out /tmp/validate-cpu                                           # the plumbing, on the CPU (live tensors only)

Writes results.json (every figure) to --out and prints a table; exits 1 when a phase is off.

The model folder gets a character-level tokenizer padded with filler tokens to the model's vocabulary (the
weights are random, so what it reads does not matter); the task is a JSONL file of prompts of exactly
`--prompt` characters, one token each. A random model seldom samples its end-of-sequence token, so
completions run to `--completion` tokens (the run's completion/len_mean says whether they did).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SHAPES = ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B")
ALGOS = ("grpo", "ppo")
TOLERANCE_ALLOCATOR, TOLERANCE_LIVE = 0.05, 0.01
MIB = 2 ** 20


def build_model(shape: str, folder: Path, device: str) -> None:
    """A random-weight model of `shape`'s architecture and a tokenizer that covers its vocabulary."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from harness.config.load import load_config
    from harness.estimate.model_specs import resolve_model
    if (folder / "config.json").exists():
        return
    config = resolve_model(shape, load_config("smoke")).config
    specials, chars = ["<pad>", "<eos>", "<unk>"], list("0123456789+=abcdefghijklmnopqrstuvwxyz ")
    fillers = [f"<t{i}>" for i in range(config.vocab_size - len(specials) - len(chars))]
    vocab = {token: i for i, token in enumerate([*specials, *chars, *fillers])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>", padding_side="left", model_max_length=10 ** 6)
    config.pad_token_id, config.eos_token_id, config.bos_token_id = 0, 1, 1
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_task(path: Path, prompt: int, count: int = 64) -> None:
    import random
    rng = random.Random(0)
    with path.open("w") as handle:
        for _ in range(count):
            handle.write(json.dumps({"prompt": "".join(rng.choice("0123456789") for _ in range(prompt)), "answer": "7"}) + "\n")


def overrides(args, model: Path, task: Path, algo: str) -> list[str]:
    """The run's config: the same for the run and its estimate."""
    return [f"model.name={model}", f"task.name=data:{task}", "task.reward=exact", "task.chat_template=none",
            "task.eval_size=4", "task.validation_size=0", f"run.device={args.device}", "run.lm_eval=false",
            "run.memory_every=1", "run.eval_every=0", "run.checkpoint_every=0", "model.precision=bf16-mixed",
            "model.gradient_checkpointing=true", f"rollout.max_new_tokens={args.completion}", "rollout.batch_size=16",
            "rollout.samples_per_prompt=4", "rollout.logprob_batch_size=4", "rollout.temperature=1.0",
            "optim.minibatches=2", "optim.micro_batch_size=2", "budget.unit=completions", "budget.total=48"]


def run_arm(args, shape: str, algo: str, model: Path, task: Path, out: Path) -> dict:
    folder = out / f"{shape.replace('/', '__')}__{algo}"
    if not (folder / "summary.json").exists():
        command = [sys.executable, "-m", "harness", "run", "--algo", algo, "--out", str(folder)]
        for item in overrides(args, model, task, algo):
            command += ["--set", item]
        subprocess.run(command, check=True)
    steps = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
    return {"folder": str(folder), "steps": steps[1:]}  # the first step has no AdamW state yet


def estimate_arm(args, algo: str, model: Path, task: Path, completion: int) -> dict:
    from harness.config.load import load_config
    from harness.estimate.estimator import estimate
    config = load_config("tiny", overrides=[*overrides(args, model, task, algo), f"estimate.prompt_length={args.prompt}",
                                            f"estimate.completion_length={completion}"])
    return estimate(config, [algo], use_cache=False, cuda_optimizer=args.device.startswith("cuda"))["arms"][algo]


def compare(arm: dict, measured_steps: list[dict]) -> list[dict]:
    rows = []
    for phase, figures in arm["phases"].items():
        live = min(step.get(f"mem/live/{phase}/total", 0) for step in measured_steps)
        allocated = min(step.get(f"mem/cuda_allocated_peak/{phase}", 0) for step in measured_steps) or None
        row = {"phase": phase, "estimate": figures["total"], "live": live, "allocated": allocated,
               "live_error": (figures["total"] - live) / live if live else None,
               "allocated_error": (figures["total"] - allocated) / allocated if allocated else None}
        row["ok"] = ((row["live_error"] is None or abs(row["live_error"]) <= TOLERANCE_LIVE)
                     and (row["allocated_error"] is None or abs(row["allocated_error"]) <= TOLERANCE_ALLOCATOR))
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a folder for the runs and results.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="shipped model names, comma-separated")
    parser.add_argument("--algos", default=",".join(ALGOS))
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--completion", type=int, default=1024)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task = out / f"task-{args.prompt}.jsonl"
    write_task(task, args.prompt)
    results, failed = [], False
    for shape in args.shapes.split(","):
        model = out / "models" / shape.replace("/", "__")
        build_model(shape, model, "cuda" if args.device.startswith("cuda") else "cpu")
        for algo in args.algos.split(","):
            measured = run_arm(args, shape, algo, model, task, out)
            # generate runs until every row has ended: a random model's rows run to the cap (len_mean shows it)
            completion = args.completion
            lengths = [step["completion/len_mean"] for step in measured["steps"]]
            arm = estimate_arm(args, algo, model, task, completion)
            rows = compare(arm, measured["steps"])
            failed |= not all(r["ok"] for r in rows)
            results.append({"shape": shape, "algo": algo, "completion": completion, "completion_len_mean": lengths,
                            "rows": rows, "run": measured["folder"]})
            print(f"{shape} {algo.upper()} (prompt {args.prompt}, completion {completion}):")
            for r in rows:
                allocated = f"{r['allocated'] / MIB:10.1f}" if r["allocated"] else "         —"
                error = f"{r['allocated_error']:+.2%}" if r["allocated_error"] is not None else "—"
                print(f"  {r['phase']:<14} estimate {r['estimate'] / MIB:10.1f} MiB  live {r['live'] / MIB:10.1f}  "
                      f"allocated {allocated}  estimate-allocated {error}  {'ok' if r['ok'] else 'OFF'}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out / 'results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
