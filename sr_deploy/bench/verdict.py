"""The runtime budget and the verdict on a challenge mean."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sr_deploy.errors import SRDeployError

#: The paper's runtime budget: mean per-image x4 upscale of the DIV2K validation LR images, forward pass only.
DEFAULT_BUDGET_MS = 49.42


@dataclass(frozen=True)
class Verdict:
    """PASS when the challenge mean is within the budget. ``ratio`` = mean / budget (<= 1 passes)."""

    passed: bool
    mean_ms: float
    budget_ms: float
    ratio: float
    label: str
    device: str
    message: str

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def gpu_budget_on_cpu(self) -> bool:
        return not self.device.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "passed": self.passed,
            "mean_ms": self.mean_ms,
            "budget_ms": self.budget_ms,
            "ratio": self.ratio,
            "label": self.label,
            "device": self.device,
            "gpu_budget_on_cpu": self.gpu_budget_on_cpu,
            "message": self.message,
        }


def check_budget(budget_ms: float) -> float:
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise SRDeployError(f"--budget-ms must be a positive number of milliseconds, got {budget_ms:g}")
    return float(budget_ms)


def make_verdict(mean_ms: float, budget_ms: float, *, label: str, device: str) -> Verdict:
    """Judge the challenge mean against the budget; on a CPU say plainly that the budget is a GPU budget."""
    check_budget(budget_ms)
    ratio = mean_ms / budget_ms
    passed = mean_ms <= budget_ms
    status = "PASS" if passed else "FAIL"
    relation = "within" if passed else "over"
    message = (
        f"{status}: challenge mean {mean_ms:.2f} ms is {ratio:.2f}x the {budget_ms:g} ms budget "
        f"({relation} it) for {label}"
    )
    if not device.startswith("cuda"):
        # The budget comes from a GPU harness; a CPU time neither confirms nor refutes a GPU claim.
        message += (
            f". Measured on {device}, but the budget is a GPU budget (the challenge timed the forward pass on a "
            "GPU with CUDA events), so this says how this machine does, not whether the model meets the budget"
        )
    message += "."
    return Verdict(
        passed=passed, mean_ms=mean_ms, budget_ms=budget_ms, ratio=ratio, label=label, device=device, message=message
    )
