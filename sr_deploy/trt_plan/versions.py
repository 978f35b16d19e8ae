"""TensorRT versions and the precision plan: which network flags, builder flags and ONNX graph each precision needs
on TensorRT 10.x and 11.x, and the precisions (and routes) TensorRT builds here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from sr_deploy.errors import SRDeployError
from sr_deploy.precision import FLOAT_PRECISIONS, Precision, parse_precision

Route = Literal["plain", "strongly-typed", "builder-flag"]
ROUTES: tuple[Route, ...] = ("plain", "strongly-typed", "builder-flag")

#: The precisions srdeploy builds TensorRT engines in.
TRT_PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")

#: The floating-point ones: the ONNX graphs (FP32, FP16) the builder takes, and what `--precision both` builds.
TRT_FLOAT_PRECISIONS: tuple[Precision, ...] = tuple(p for p in TRT_PRECISIONS if p in FLOAT_PRECISIONS)

#: `--precision` words: each TensorRT precision alone, or "both" float ones.
PRECISION_CHOICES: dict[str, tuple[Precision, ...]] = {
    **{p: (p,) for p in TRT_PRECISIONS},
    "both": TRT_FLOAT_PRECISIONS,
}


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0
    build: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def full(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}.{self.build}"


_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_trt_version(text: str) -> TrtVersion:
    """'10.13.0.35' / '11.4.0' / '11.4.0.post1' -> TrtVersion; only 10.x and later are supported."""
    m = _VERSION_RE.match(text)
    if m is None:
        raise SRDeployError(f"TensorRT version {text!r}: expected MAJOR.MINOR[.PATCH[.BUILD]]")
    v = TrtVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), int(m.group(4) or 0))
    if v.major < 10:
        raise SRDeployError(f"TensorRT {text}: srdeploy needs TensorRT 10 or 11 (name-based I/O, execute_async_v3)")
    return v


@dataclass(frozen=True)
class PrecisionPlan:
    """How to build one precision on one TensorRT version.

    `network_flags` names `NetworkDefinitionCreationFlag` members to OR together; it never holds
    EXPLICIT_BATCH (a no-op since 10.0, removed in 11). `onnx_graph` says which ONNX export to parse:
    "fp16" is the half graph.
    """

    precision: Precision
    route: Route
    trt_major: int
    network_flags: tuple[str, ...]
    set_fp16_flag: bool
    clear_tf32_flag: bool
    onnx_graph: Precision
    note: str
    #: 10.x weakly typed int8 only ("builder-flag" route): BuilderFlag.INT8 with the Q/DQ graph.
    set_int8_flag: bool = False

    @property
    def strongly_typed(self) -> bool:
        # TensorRT 11 has no weak typing at all, whatever flags are passed.
        return self.trt_major >= 11 or "STRONGLY_TYPED" in self.network_flags

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "route": self.route,
            "trt_major": self.trt_major,
            "network_flags": list(self.network_flags),
            "strongly_typed": self.strongly_typed,
            "set_fp16_flag": self.set_fp16_flag,
            "set_int8_flag": self.set_int8_flag,
            "clear_tf32_flag": self.clear_tf32_flag,
            "onnx_graph": self.onnx_graph,
            "note": self.note,
        }


def plan_precision(precision: Precision, version: TrtVersion, route: Route | None = None) -> PrecisionPlan:
    """The precision route for `precision` on TensorRT `version`.

    - fp32: the FP32 graph as is. TF32 is cleared because it is on by default and costs ~1e-3 relative
      accuracy on Ampere and later, which the FP32 gate (max abs <= 1e-3) is there to catch.
    - fp16 on 11.x: only strongly typed from the FP16 ONNX; BuilderFlag.FP16 no longer exists, and building
      without it silently gives FP32 (roboflow/rf-detr #1453).
    - fp16 on 10.x: strongly typed from the FP16 ONNX by default (what 11 requires, recommended since 10.12);
      route="builder-flag" sets BuilderFlag.FP16 on the FP32 graph and lets TensorRT choose per layer.
    - int8: see `plan_int8`.
    """
    checked = parse_precision(precision, "--precision", TRT_PRECISIONS)
    if checked == "int8":
        return plan_int8(version, route)
    if checked == "fp32":
        if route not in (None, "plain"):
            raise SRDeployError(f"--route {route!r}: fp32 engines have one route, 'plain'")
        return PrecisionPlan(
            "fp32", "plain", version.major, (), False, True, "fp32",
            "FP32 graph; TF32 cleared so convolutions stay IEEE FP32",
        )  # fmt: skip
    chosen = route or "strongly-typed"
    if chosen == "strongly-typed":
        # 11.x: every network is strongly typed; passing the flag is accepted but ignored, so we pass none.
        flags = ("STRONGLY_TYPED",) if version.major == 10 else ()
        return PrecisionPlan(
            "fp16", "strongly-typed", version.major, flags, False, False, "fp16",
            "strongly typed network from the FP16 ONNX graph; layer types come from the graph",
        )  # fmt: skip
    if chosen == "builder-flag":
        if version.major >= 11:
            raise SRDeployError(
                f"--route builder-flag: TensorRT {version} removed BuilderFlag.FP16; "
                "use --route strongly-typed (the FP16 ONNX graph)"
            )
        return PrecisionPlan(
            "fp16", "builder-flag", version.major, (), True, False, "fp32",
            "weakly typed FP32 graph with BuilderFlag.FP16 (deprecated since 10.12); "
            "TensorRT picks per layer",
        )  # fmt: skip
    raise SRDeployError(f"--route {route!r}: expected strongly-typed or builder-flag")


def plan_int8(version: TrtVersion, route: Route | None = None) -> PrecisionPlan:
    """An explicit-precision int8 engine from the Q/DQ graph (`srdeploy quantize`).

    TensorRT reads the precision from the QuantizeLinear/DequantizeLinear nodes (explicit quantization); no
    calibrator, no dynamic ranges. NVIDIA: use explicit quantization with strong typing, precision flags are neither
    needed nor wanted; 11.x removed BuilderFlag.INT8 and the calibrators ("Removed Python APIs and Replacements":
    BuilderFlag.INT8 -> explicit quantization with Q/DQ nodes).

    - 11.x: the only route, "strongly-typed"; every network is strongly typed, so no flag is passed at all.
    - 10.x: "strongly-typed" by default (STRONGLY_TYPED, no precision flag: what 11 requires); "builder-flag" is the
      older documented route for a Q/DQ network in a weakly typed network: BuilderFlag.INT8 set so the builder may
      use the int8 kernels the Q/DQ nodes ask for (TensorRT 8-10 refuse int8 layers in a weakly typed network
      without it). What is not quantized then stays FP32 (no FP16 flag: the gate compares with FP32).
    TF32 is cleared on both: the layers left in floating point are the accuracy-critical ones.
    """
    chosen = route or "strongly-typed"
    if chosen == "strongly-typed":
        flags = ("STRONGLY_TYPED",) if version.major == 10 else ()
        return PrecisionPlan(
            "int8", "strongly-typed", version.major, flags, False, True, "int8",
            "explicit quantization: strongly typed network from the int8 Q/DQ graph; no precision flag",
        )  # fmt: skip
    if chosen == "builder-flag":
        if version.major >= 11:
            raise SRDeployError(
                f"--route builder-flag: TensorRT {version} removed BuilderFlag.INT8 (and the calibrators); "
                "int8 is the Q/DQ graph, strongly typed: use --route strongly-typed"
            )
        return PrecisionPlan(
            "int8", "builder-flag", version.major, (), False, True, "int8",
            "explicit quantization in a weakly typed network: the Q/DQ graph with BuilderFlag.INT8 (10.x)",
            set_int8_flag=True,
        )  # fmt: skip
    raise SRDeployError(f"--route {route!r}: expected strongly-typed or builder-flag")


def parse_route(text: str, flag: str = "--route") -> Route:
    """`text` as a Route, or a one-line SRDeployError naming `flag`."""
    for route in ROUTES:
        if text == route:
            return route
    raise SRDeployError(f"{flag} {text!r}: expected one of {', '.join(ROUTES)}")


def expand_precisions(text: str, flag: str = "--precision") -> tuple[Precision, ...]:
    """`--precision` text -> the precisions to build, in order ("both" is fp32 then fp16)."""
    if text not in PRECISION_CHOICES:
        raise SRDeployError(f"{flag} {text!r}: expected one of {', '.join(PRECISION_CHOICES)}")
    return PRECISION_CHOICES[text]
