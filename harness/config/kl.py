"""The KL to the reference of every arm of a comparison (--kl, --kl-coef): one setting, applied alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness import UserError
from harness.algorithms import KL_MODES

# --kl without --kl-coef: GRPO's paper beta in the loss (DeepSeekMath), PPO's former TRL default in the reward.
KL_DEFAULT_COEF = {"loss": 0.04, "reward": 0.05}


@dataclass
class KLSetting:
    """The KL to the reference of every arm of a comparison (--kl, --kl-coef)."""

    mode: str = "native"  # native | off | loss | reward
    coef: float | None = None  # loss and reward: the coefficient (default KL_DEFAULT_COEF)

    def __post_init__(self):
        if self.mode not in KL_MODES:
            raise UserError(f"--kl '{self.mode}' is not one of: {', '.join(KL_MODES)}")
        if self.coef is not None and self.mode not in ("loss", "reward"):
            raise UserError(f"--kl-coef sets the coefficient of --kl loss or reward; --kl {self.mode} has none")
        if self.coef is not None and not (self.coef > 0 and self.coef < float("inf")):
            raise UserError(f"--kl-coef must be a positive number, got {self.coef}")
        if self.mode in KL_DEFAULT_COEF and self.coef is None:
            self.coef = KL_DEFAULT_COEF[self.mode]

    def words(self) -> str:
        return {"native": "native: each algorithm's own default (GRPO: k3 in the loss; PPO: k1 in the reward)",
                "off": "off: no KL term and no reference model in any arm",
                "loss": f"matched: k3 in the loss with coefficient {self.coef} in every arm",
                "reward": f"matched: k1 in the reward with coefficient {self.coef} in every arm"}[self.mode]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "coef": self.coef}
