"""What each arm costs, beside the live-tensor peaks of harness.measure.live_tensors: model-state bytes (arithmetic:
they follow from the sizes), GPU allocator and NVML figures, RSS and time (measured), FLOPs (arithmetic).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import psutil
import torch

NO_GPU = "not measured: no NVIDIA GPU"

# Dense peak FLOP/s by device name fragment and dtype (vendor datasheets, without sparsity).
DEVICE_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},  # SXM
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "L40S": {"bfloat16": 362e12, "float16": 362e12, "float32": 91.6e12},
    "A10G": {"bfloat16": 70e12, "float16": 70e12, "float32": 35e12},
    "L4": {"bfloat16": 121e12, "float16": 121e12, "float32": 30e12},
    "T4": {"float16": 65e12, "float32": 8.1e12},
}


# ---------------------------------------------------------------- exact accounting

def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes this process holds of a tensor: its shard, for a tensor sharded across ranks (FSDP2)."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(tensor_bytes(p) for p in model.parameters())


def gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes the gradients of the trainable parameters take once backward has run."""
    return sum(tensor_bytes(p) for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps (AdamW: exp_avg, exp_avg_sq and a step counter)."""
    return sum(tensor_bytes(v) for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def model_state_bytes(trained: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                      frozen: dict[str, torch.nn.Module]) -> dict[str, dict[str, int]]:
    """{model: {params, grads, optimizer, total}} for trained and frozen (reference) models.

    Under LoRA each trained model's params split into `frozen` (its base), `adapters` and `value_head`, and
    only the trained ones have gradients and optimizer state. Each parameter is counted once, in the model
    that trains it (the shared critic's adapter lives in the policy's modules, and is the critic's), else in
    the first model that holds it (a base shared by the policy and the critic is the policy's)."""
    from harness.algorithms.adapters import adapter_modules, trained_parameters, tuner_layers
    owner: dict[int, str] = {}
    for name, model in trained.items():
        owner.update({id(p): name for p in trained_parameters(model)})
    adapters = {id(p) for model in trained.values() for layer in tuner_layers(model)
                for adapter in layer._all_available_adapter_names()
                for module in adapter_modules(layer, adapter) for p in module.parameters()}
    out: dict[str, dict[str, int]] = {}
    for name, model in trained.items():
        split = {"frozen": 0, "adapters": 0, "value_head": 0, "other": 0}
        grads, own = 0, {id(p) for p in trained_parameters(model)}
        for param_name, p in model.named_parameters():
            if owner.setdefault(id(p), name) != name:
                continue  # another model's: trained there, or a base counted with the model that holds it first
            size = tensor_bytes(p)
            if id(p) not in own or not p.requires_grad:
                split["frozen" if id(p) not in adapters else "adapters"] += size
                continue
            grads += size
            kind = "adapters" if id(p) in adapters else "value_head" if "value_head" in param_name else "other"
            split[kind] += size
        row = {"params": sum(split.values()), "grads": grads,
               "optimizer": optimizer_state_bytes(optimizers[name]) if name in optimizers else 0}
        if split["adapters"]:  # the LoRA breakdown of params (kept out of the total: params already hold it)
            row.update({k: split[k] for k in ("frozen", "adapters", "value_head")})
        out[name] = {**row, "total": row["params"] + row["grads"] + row["optimizer"]}
    for name, model in frozen.items():
        size = parameter_bytes(model)
        out[name] = {"params": size, "grads": 0, "optimizer": 0, "total": size}
    return out


def model_flops(parameters: int, tokens: int, backward: bool) -> float:
    """2 N per token forward, 6 N with backward (Kaplan et al. 2020), attention left out."""
    return (6 if backward else 2) * parameters * tokens


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """The device's dense peak FLOP/s for the compute dtype of `precision` (fp32, bf16-mixed, bf16)."""
    if not device_name:
        return None
    dtype = "float32" if precision == "fp32" else "bfloat16"
    for fragment, table in DEVICE_PEAK_FLOPS.items():
        if fragment in device_name:
            return table.get(dtype)
    return None


# ---------------------------------------------------------------- samplers

class Sampler:
    """A daemon thread calling `read()` every `interval` seconds until stopped; keeps peaks."""

    def __init__(self, read, interval: float = 0.05, name: str = "sampler"):
        self._read, self.interval, self.name = read, interval, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peaks: dict[str, float] = {}
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def _sample_once(self) -> None:
        for key, value in self._read().items():
            self.peaks[key] = max(self.peaks.get(key, value), value)
            self.sums[key] += value
        self.count += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_once()

    def start(self) -> Sampler:
        self._sample_once()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample_once()

    def reset_peaks(self) -> None:
        self.peaks = {}

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def rss_reader(baseline: int):
    process = psutil.Process(os.getpid())

    def read() -> dict[str, float]:
        rss = process.memory_info().rss
        return {"rss": rss, "rss_net": rss - baseline}
    return read


def open_nvml(device_index: int):
    """(pynvml module, handle) or (None, reason in words)."""
    try:
        import pynvml
    except ImportError:
        return None, "not measured: nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"{NO_GPU} ({type(err).__name__})"


def nvml_reader(pynvml, handle):
    pid = os.getpid()

    def read() -> dict[str, float]:
        row = {"nvml_used": float(pynvml.nvmlDeviceGetMemoryInfo(handle).used),
               "util_gpu": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
               "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0}
        try:
            mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == pid]
            if mine and mine[0] is not None:
                row["nvml_process"] = float(mine[0])
        except pynvml.NVMLError:
            pass
        return row
    return read


# ---------------------------------------------------------------- the probe set of one arm

class Probes:
    """Phase timers, allocator peaks per phase, RSS and NVML samplers for one arm."""

    def __init__(self, device: str, enabled: bool = True, interval: float = 0.05):
        self.device = torch.device(device)
        self.enabled = enabled
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.phase_time: dict[str, float] = defaultdict(float)
        self.phase_cuda: dict[str, dict[str, int]] = {}
        self.gpu_reason: str | None = None if self.cuda else NO_GPU
        self.rss = Sampler(rss_reader(psutil.Process().memory_info().rss), interval, "rss-sampler")
        self.nvml = None
        self._nvml_module = None
        self._energy_start = None
        self.interval = interval

    def start(self) -> Probes:
        """Start the samplers; the RSS baseline is taken now (after imports and model loading)."""
        if not self.enabled:
            return self
        self.rss = Sampler(rss_reader(psutil.Process().memory_info().rss), self.interval, "rss-sampler").start()
        if self.cuda:
            module, handle = open_nvml(self.device.index or 0)
            if module is None:
                self.gpu_reason = handle
            else:
                self._nvml_module, self._nvml_handle = module, handle
                self.nvml = Sampler(nvml_reader(module, handle), self.interval, "nvml-sampler").start()
                try:
                    self._energy_start = module.nvmlDeviceGetTotalEnergyConsumption(handle)
                except module.NVMLError:
                    self._energy_start = None
        return self

    def stop(self) -> None:
        for sampler in (self.rss, self.nvml):
            if sampler is not None:
                sampler.stop()

    def __enter__(self) -> Probes:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextmanager
    def phase(self, name: str):
        if self.cuda and self.enabled:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda and self.enabled:
                torch.cuda.synchronize(self.device)
                peak = self.phase_cuda.setdefault(name, {"allocated": 0, "reserved": 0})
                peak["allocated"] = max(peak["allocated"], torch.cuda.max_memory_allocated(self.device))
                peak["reserved"] = max(peak["reserved"], torch.cuda.max_memory_reserved(self.device))
            self.phase_time[name] += time.perf_counter() - start

    def take_step_times(self) -> dict[str, float]:
        """Phase seconds since the last call (the step's), then start counting afresh."""
        times = dict(self.phase_time)
        self.phase_time.clear()
        return times

    def energy_joules(self) -> float | None:
        if self._nvml_module is None or self._energy_start is None:
            return None
        now = self._nvml_module.nvmlDeviceGetTotalEnergyConsumption(self._nvml_handle)
        return (now - self._energy_start) / 1000.0  # millijoules

    def device_name(self) -> str | None:
        return torch.cuda.get_device_name(self.device) if self.cuda else None

    def step_memory(self) -> dict[str, float]:
        """Measured figures for steps.jsonl: RSS now and peak, allocator and NVML peaks so far."""
        row: dict[str, float] = {}
        if self.enabled and self.rss.peaks:
            row["mem/rss_peak_net"] = self.rss.peaks["rss_net"]
        for phase, peak in self.phase_cuda.items():
            row[f"mem/cuda_allocated_peak/{phase}"] = peak["allocated"]
            row[f"mem/cuda_reserved_peak/{phase}"] = peak["reserved"]
        if self.nvml is not None and self.nvml.peaks:
            row["mem/nvml_used_peak"] = self.nvml.peaks.get("nvml_used", 0)
        return row

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.enabled:
            out["rss_peak_net"] = self.rss.peaks.get("rss_net")
            out["rss_peak"] = self.rss.peaks.get("rss")
        if not self.cuda or not self.enabled:
            out["gpu"] = self.gpu_reason or "not measured: probes off"
            return out
        out["cuda_allocated_peak"] = {k: v["allocated"] for k, v in self.phase_cuda.items()}
        out["cuda_reserved_peak"] = {k: v["reserved"] for k, v in self.phase_cuda.items()}
        out["device_name"] = self.device_name()
        if self.nvml is None:
            out["nvml"] = self.gpu_reason
        else:
            means = self.nvml.means()
            out["nvml"] = {"used_peak": self.nvml.peaks.get("nvml_used"),
                           "process_peak": self.nvml.peaks.get("nvml_process"),
                           "util_mean": means.get("util_gpu"), "power_mean_w": means.get("power_w"),
                           "power_peak_w": self.nvml.peaks.get("power_w"), "energy_j": self.energy_joules()}
        return out
