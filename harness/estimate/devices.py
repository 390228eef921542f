"""The GPUs an estimate is read against: memory, HBM bandwidth and dense peak FLOP/s (vendor datasheets).

`--fit H100-80GB` (or h100, A100-40GB, a100-80, H200, L40S, or a number of GiB) names one. Memory is
the nominal capacity in GiB, as `estimate.device_memory` reads it; the bandwidth and the bf16 / fp32 dense
peaks (without sparsity) are the datasheets' for the SXM parts (H100 SXM5 80 GB, H200 SXM 141 GB,
A100 SXM4 40 and 80 GB) and the L40S (PCIe), and feed the roofline GPU time only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness import UserError
from harness.config.choices import DEVICE_MEMORY_GIB
from harness.results.units import GIB



@dataclass(frozen=True)
class Gpu:
    key: str  # a key of DEVICE_MEMORY_GIB, or "custom"
    label: str
    memory: int  # bytes
    bandwidth: float | None  # HBM bytes/s
    peak_bf16: float | None  # dense FLOP/s
    peak_fp32: float | None

    def peak(self, precision: str) -> float | None:
        return self.peak_fp32 if precision == "fp32" else self.peak_bf16


# key: (HBM bandwidth bytes/s, bf16 dense FLOP/s, fp32 FLOP/s); memory and label from DEVICE_MEMORY_GIB
DATASHEETS = {"h100": (3.35e12, 989e12, 67e12), "h200": (4.8e12, 989e12, 67e12), "a100-40": (1.555e12, 312e12, 19.5e12),
              "a100-80": (2.039e12, 312e12, 19.5e12), "l40s": (0.864e12, 362e12, 91.6e12)}


def gpu(key: str) -> Gpu:
    label, gib = DEVICE_MEMORY_GIB[key]
    bandwidth, bf16, fp32 = DATASHEETS[key]
    return Gpu(key, label, gib * GIB, bandwidth, bf16, fp32)


def parse_gpu(text: str) -> Gpu:
    """'H100-80GB', 'h100', 'A100-40GB', 'a100-80', 'H200', 'L40S' or a number of GiB ('96')."""
    raw = text.strip().lower().replace("_", "-")
    try:
        gib = float(raw.removesuffix("gib").removesuffix("gb"))
    except ValueError:
        gib = None
    if gib is not None:
        if gib <= 0:
            raise UserError(f"--fit {text}: a device's memory must be positive")
        return Gpu("custom", f"{gib:g} GiB device", round(gib * GIB), None, None, None)
    match = re.fullmatch(r"(h100|h200|a100|l40s)(?:-?(\d+)\s*gb?)?", raw.replace(" ", ""))
    key = None
    if match:
        name, size = match.groups()
        key = f"{name}-{size or 80}" if name == "a100" else name
        if size and key in DEVICE_MEMORY_GIB and int(size) != DEVICE_MEMORY_GIB[key][1]:
            key = None
    if key not in DEVICE_MEMORY_GIB:
        raise UserError(f"--fit {text}: not a known GPU (H100-80GB, H200, A100-40GB, A100-80GB, L40S) "
                        "or a number of GiB")
    return gpu(key)
