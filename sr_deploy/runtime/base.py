"""The Backend interface that eval, upscale and bench use for every runtime. Which backends exist, and the kinds a
user can name, is sr_deploy.runtime.registry's to say."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape4 = tuple[int, int, int, int]


@dataclass
class TimedOutput:
    """One forward pass: the output and its timings.

    ``forward_ms`` covers the forward pass only, with the input already on the device (the challenge's method);
    ``end_to_end_ms`` adds the host-to-device and device-to-host copies.
    """

    output: np.ndarray
    forward_ms: float
    end_to_end_ms: float


@dataclass
class BackendInfo:
    name: str  # a registered backend's name (sr_deploy.runtime.registry)
    device: str  # "cpu", "cuda:0", ...
    precision: str  # a word of sr_deploy.precision
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}-{self.device}-{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": self.device,
            "precision": self.precision,
            "label": self.label,
            "details": dict(self.details),
        }


class Backend(abc.ABC):
    """NCHW float32 in [0, 1] in and out, whatever the backend computes in."""

    @property
    @abc.abstractmethod
    def info(self) -> BackendInfo: ...

    @abc.abstractmethod
    def prepare(self, max_shape: Shape4) -> None:
        """Allocate or build for inputs up to `max_shape`; later calls with other shapes must still work.

        torch and ONNX Runtime implement this as one warm-up forward (kernel choice, memory planning), so a
        caller that wants a cold first image, like the challenge's timing, must not call it (bench does not).
        """

    @abc.abstractmethod
    def run_timed(self, lr: np.ndarray) -> TimedOutput: ...

    def run(self, lr: np.ndarray) -> np.ndarray:
        return self.run_timed(lr).output

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""
