"""The config's enumerations, each written once: the schema types its fields with them and the CLI offers them
as a flag's choices. Only `typing` is imported here, so that `harness --help` stays light."""

from __future__ import annotations

from typing import Literal, get_args

BudgetUnit = Literal["completions", "tokens", "steps"]
Precision = Literal["fp32", "bf16-mixed", "bf16"]
ChatTemplate = Literal["auto", "none"]
EvalSplit = Literal["test", "validation"]
RolloutBackend = Literal["hf", "vllm"]
RolloutEngine = Literal["resident", "asleep"]  # harness estimate: a colocated rollout engine during training
Tracker = Literal["trackio", "wandb", "tensorboard", "mlflow"]
IntervalMethod = Literal["paired_t", "bootstrap"]  # the quality interval the plan names (harness.report.stats)

# Device memory of the GPUs `harness estimate` checks a step against, in GiB (nominal capacities).
DEVICE_MEMORY_GIB = {"h100": ("H100 80 GB", 80), "h200": ("H200 141 GB", 141), "a100-40": ("A100 40 GB", 40),
                     "a100-80": ("A100 80 GB", 80)}
DeviceMemory = Literal[tuple(DEVICE_MEMORY_GIB)]

BUDGET_UNITS = get_args(BudgetUnit)
PRECISIONS = get_args(Precision)
CHAT_TEMPLATES = get_args(ChatTemplate)
EVAL_SPLITS = get_args(EvalSplit)
ROLLOUT_ENGINES = get_args(RolloutEngine)
TRACKERS = get_args(Tracker)
