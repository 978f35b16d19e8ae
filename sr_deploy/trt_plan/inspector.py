"""The engine inspector's JSON (10.x and 11.x layouts) and the precision audit: what precision a built engine really
computes in, against what was asked for."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sr_deploy.errors import SRDeployError
from sr_deploy.precision import Precision, parse_precision
from sr_deploy.trt_plan.versions import TRT_PRECISIONS

# Order matters: "BF16" before "FP16", "Half" maps to fp16, "Float" (11.x DataType) to fp32.
_DTYPE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(bf16|bfloat16)\b", re.I), "bf16"),
    (re.compile(r"\b(fp16|half|float16)\b", re.I), "fp16"),
    (re.compile(r"\b(fp8|e4m3|float8)\b", re.I), "fp8"),
    (re.compile(r"\b(fp32|float|float32)\b", re.I), "fp32"),
    (re.compile(r"\b(int8)\b", re.I), "int8"),
    (re.compile(r"\b(int32)\b", re.I), "int32"),
    (re.compile(r"\b(int64)\b", re.I), "int64"),
    (re.compile(r"\b(bool)\b", re.I), "bool"),
    (re.compile(r"\b(uint8)\b", re.I), "uint8"),
)


def normalize_dtype(text: str) -> str:
    """'Half', 'FP16', 'Row major linear FP16 format', 'Float', 'DataType.FLOAT' -> 'fp16' / 'fp32' / ..."""
    cleaned = text.replace("DataType.", " ").replace("_", " ")
    for pattern, name in _DTYPE_PATTERNS:
        if pattern.search(cleaned):
            return name
    return "unknown"


@dataclass(frozen=True)
class LayerPrecision:
    name: str
    layer_type: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]

    @property
    def precision(self) -> str:
        """What the layer computes in, judged by its outputs (inputs may be a reformat away)."""
        kinds = set(self.output_dtypes) or set(self.input_dtypes)
        if not kinds:
            return "unknown"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.layer_type,
            "precision": self.precision,
            "inputs": list(self.input_dtypes),
            "outputs": list(self.output_dtypes),
        }


@dataclass(frozen=True)
class EngineIO:
    name: str
    mode: str  # "input" / "output"
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "dtype": self.dtype}


@dataclass(frozen=True)
class InspectorReport:
    layout: str  # "10.x" or "11.x"
    layers: tuple[LayerPrecision, ...]
    io: tuple[EngineIO, ...]

    @property
    def tensor_dtypes(self) -> list[str]:
        return [d for layer in self.layers for d in (*layer.input_dtypes, *layer.output_dtypes)]

    @property
    def fp16_tensor_fraction(self) -> float:
        """Fraction of layer I/O tensors held in half precision (rf-detr #1453's '% Half')."""
        dtypes = [d for d in self.tensor_dtypes if d != "unknown"]
        return sum(d == "fp16" for d in dtypes) / len(dtypes) if dtypes else 0.0

    @property
    def fp16_layer_fraction(self) -> float:
        """Fraction of layers whose outputs are all half precision."""
        return sum(layer.precision == "fp16" for layer in self.layers) / len(self.layers) if self.layers else 0.0

    def fp32_layers_by_type(self) -> dict[str, int]:
        """Compute layers left in FP32, by type. Reformats are left out: they only convert (e.g. the FP32 I/O
        of an FP16 engine), so listing them would hide the layers that matter, convolutions above all."""
        counts = Counter(
            layer.layer_type for layer in self.layers if layer.precision == "fp32" and layer.layer_type != "Reformat"
        )
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def io_dtypes(self) -> dict[str, str]:
        return {t.name: t.dtype for t in self.io}

    @property
    def conv_layers(self) -> tuple[LayerPrecision, ...]:
        """Convolution layers (fused ones included: "/c1/Conv + /act/LeakyRelu" is one CaskConvolution)."""
        return tuple(layer for layer in self.layers if "conv" in layer.layer_type.lower())

    @property
    def int8_conv_layers(self) -> int:
        """Convolutions that compute on int8 data: an int8 input (their output may be int8, or float when the next
        layer is not quantized). A standalone dequantize has an int8 input too, but is no convolution."""
        return sum("int8" in layer.input_dtypes for layer in self.conv_layers)

    @property
    def int8_tensor_fraction(self) -> float:
        dtypes = [d for d in self.tensor_dtypes if d != "unknown"]
        return sum(d == "int8" for d in dtypes) / len(dtypes) if dtypes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "num_layers": len(self.layers),
            "fp16_tensor_fraction": self.fp16_tensor_fraction,
            "fp16_layer_fraction": self.fp16_layer_fraction,
            "int8_conv_layers": self.int8_conv_layers,
            "conv_layers": len(self.conv_layers),
            "int8_tensor_fraction": self.int8_tensor_fraction,
            "fp32_layers_by_type": self.fp32_layers_by_type(),
            "io": [t.to_dict() for t in self.io],
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _field(d: Mapping[str, Any], *names: str) -> Any:
    """First present key among `names`, case-insensitively (TensorRT has spelt DataType both ways)."""
    lowered = {k.lower(): v for k, v in d.items()}
    for n in names:
        if n.lower() in lowered:
            return lowered[n.lower()]
    return None


def _tensor_dtype(t: Any) -> str:
    if not isinstance(t, Mapping):
        return "unknown"
    # 11.x: separate "Datatype"; 10.x: one "Format/Datatype" string that names the type inside the format.
    dt = _field(t, "Datatype", "DataType", "Data Type")
    if isinstance(dt, str):
        return normalize_dtype(dt)
    fmt = _field(t, "Format/Datatype", "Format")
    return normalize_dtype(fmt) if isinstance(fmt, str) else "unknown"


def _parse_layer(raw: Any, index: int) -> LayerPrecision:
    if isinstance(raw, str):
        raise SRDeployError(
            "inspector JSON lists layer names only: the engine was not built with "
            "ProfilingVerbosity.DETAILED, so its precision cannot be audited"
        )
    if not isinstance(raw, Mapping):
        raise SRDeployError(f"inspector JSON: layer {index} is {type(raw).__name__}, expected an object")
    # ParameterType says what the layer does ("Convolution"); LayerType how ("CaskConvolution", "Reformat").
    kind = _field(raw, "ParameterType") or _field(raw, "LayerType") or "unknown"
    inputs = _field(raw, "Inputs") or []
    outputs = _field(raw, "Outputs") or []
    return LayerPrecision(
        name=str(_field(raw, "Name") or f"layer{index}"),
        layer_type=str(kind),
        input_dtypes=tuple(_tensor_dtype(t) for t in inputs),
        output_dtypes=tuple(_tensor_dtype(t) for t in outputs),
    )


def _io_from_bindings(names: Sequence[Any], layers: Sequence[Mapping[str, Any]]) -> tuple[EngineIO, ...]:
    """10.x lists binding names only; their dtype is that of the layer tensor with the same name."""
    seen_in: dict[str, str] = {}
    seen_out: dict[str, str] = {}
    for raw in layers:
        for t in _field(raw, "Inputs") or []:
            if isinstance(t, Mapping):
                seen_in.setdefault(str(_field(t, "Name")), _tensor_dtype(t))
        for t in _field(raw, "Outputs") or []:
            if isinstance(t, Mapping):
                seen_out[str(_field(t, "Name"))] = _tensor_dtype(t)
    io: list[EngineIO] = []
    for n in names:
        name = str(n)
        if name in seen_out and name not in seen_in:
            io.append(EngineIO(name, "output", seen_out[name]))
        elif name in seen_in:
            io.append(EngineIO(name, "input", seen_in[name]))
        else:
            io.append(EngineIO(name, "unknown", "unknown"))
    return tuple(io)


def _io_from_tensors(entries: Sequence[Any]) -> tuple[EngineIO, ...]:
    io: list[EngineIO] = []
    for e in entries:
        if not isinstance(e, Mapping):
            raise SRDeployError("inspector JSON: an 'I/O Tensors' entry is not an object")
        mode = str(_field(e, "IOMode") or "unknown").lower()
        io.append(EngineIO(str(_field(e, "Name")), mode, _tensor_dtype(e)))
    return tuple(io)


def parse_inspector_json(data: str | Mapping[str, Any]) -> InspectorReport:
    """Per-layer precisions and engine I/O from `get_engine_information(LayerInformationFormat.JSON)`.

    10.x: top-level "Bindings" (names) and per-tensor "Format/Datatype" strings.
    11.x: top-level "I/O Tensors" (objects with DataType) and separate per-tensor "Format" and "Datatype".
    """
    if isinstance(data, str):
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as e:
            raise SRDeployError(f"inspector JSON does not parse: {e.msg} at line {e.lineno}") from None
    else:
        parsed = data
    if not isinstance(parsed, Mapping):
        raise SRDeployError("inspector JSON: expected an object with 'Layers'")
    raw_layers = parsed.get("Layers")
    if not isinstance(raw_layers, list):
        raise SRDeployError("inspector JSON: no 'Layers' list")
    layers = tuple(_parse_layer(raw, i) for i, raw in enumerate(raw_layers))
    if "I/O Tensors" in parsed:
        return InspectorReport("11.x", layers, _io_from_tensors(parsed["I/O Tensors"]))
    if "Bindings" in parsed:
        return InspectorReport("10.x", layers, _io_from_bindings(parsed["Bindings"], raw_layers))
    raise SRDeployError("inspector JSON: neither 'Bindings' (TensorRT 10) nor 'I/O Tensors' (TensorRT 11) present")


@dataclass(frozen=True)
class PrecisionAudit:
    """The precision an engine really has. `ok` False: do not keep it, never label it `requested`."""

    requested: Precision
    actual: str  # "fp16", "fp32", "mixed"
    fp16_tensor_fraction: float
    fp16_layer_fraction: float
    fp32_layers_by_type: dict[str, int]
    io_dtypes: dict[str, str]
    ok: bool
    message: str
    warnings: tuple[str, ...] = ()
    #: Convolutions computing on int8 data, and all convolutions (the int8 audit's figures).
    int8_conv_layers: int = 0
    conv_layers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "actual": self.actual,
            "fp16_tensor_fraction": self.fp16_tensor_fraction,
            "fp16_layer_fraction": self.fp16_layer_fraction,
            "fp32_layers_by_type": dict(self.fp32_layers_by_type),
            "io_dtypes": dict(self.io_dtypes),
            "ok": self.ok,
            "message": self.message,
            "warnings": list(self.warnings),
            "int8_conv_layers": self.int8_conv_layers,
            "conv_layers": self.conv_layers,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecisionAudit:
        return cls(
            requested=parse_precision(str(d["requested"]), "precision audit", TRT_PRECISIONS),
            actual=str(d["actual"]),
            fp16_tensor_fraction=float(d["fp16_tensor_fraction"]),
            fp16_layer_fraction=float(d["fp16_layer_fraction"]),
            fp32_layers_by_type={str(k): int(v) for k, v in d.get("fp32_layers_by_type", {}).items()},
            io_dtypes={str(k): str(v) for k, v in d.get("io_dtypes", {}).items()},
            ok=bool(d["ok"]),
            message=str(d["message"]),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
            int8_conv_layers=int(d.get("int8_conv_layers", 0)),
            conv_layers=int(d.get("conv_layers", 0)),
        )


def audit_int8(report: InspectorReport, expected_int8_convs: int | None = None) -> PrecisionAudit:
    """An "int8" engine must compute convolutions on int8 data; with none it is refused (an engine that looks int8 by
    name and runs in floating point is the int8 twin of rf-detr #1453). `expected_int8_convs`: how many convs the Q/DQ
    graph quantizes; fewer in the engine is a warning (TensorRT may run a Q/DQ'd conv on dequantized floats when it
    finds no int8 kernel), and the count is kept in the sidecar."""
    convs = len(report.conv_layers)
    int8 = report.int8_conv_layers
    io = report.io_dtypes()
    fp16 = report.fp16_tensor_fraction
    by_type = report.fp32_layers_by_type()
    if not report.layers:
        return PrecisionAudit(
            "int8", "unknown", 0.0, 0.0, {}, io, False,
            "the inspector reported no layers; cannot tell the engine's precision",
        )  # fmt: skip
    if all(d == "unknown" for d in report.tensor_dtypes):
        return PrecisionAudit(
            "int8", "unknown", fp16, report.fp16_layer_fraction, by_type, io, False,
            "the inspector shows no tensor data types; inspect with an execution context whose shapes are set",
        )  # fmt: skip
    if int8 == 0:
        return PrecisionAudit(
            "int8", "fp16" if fp16 > 0 else "fp32", fp16, report.fp16_layer_fraction, by_type, io, False,
            f"requested int8 but none of the {convs} convolutions computes on int8 data: this is a floating-point "
            "engine; build from the Q/DQ graph (srdeploy quantize), strongly typed",
            (), int8, convs,
        )  # fmt: skip
    warnings: list[str] = []
    if expected_int8_convs is not None and int8 < expected_int8_convs:
        warnings.append(f"{int8} convolutions in int8, the Q/DQ graph quantizes {expected_int8_convs}")
    float_convs = convs - int8
    message = f"int8 engine: {int8} of {convs} convolutions on int8 data" + (
        f" ({float_convs} in floating point)" if float_convs else ""
    )
    return PrecisionAudit(
        "int8", "int8" if float_convs == 0 else "mixed", fp16, report.fp16_layer_fraction, by_type, io, True, message,
        tuple(warnings), int8, convs,
    )  # fmt: skip


def audit_precision(
    report: InspectorReport,
    requested: Precision,
    *,
    min_fp16_fraction: float = 0.05,
    warn_fp16_fraction: float = 0.5,
) -> PrecisionAudit:
    """Compare what was asked for with what the inspector saw.

    An "fp16" engine with (about) no half tensors is an error: that is the silent FP32 engine of
    rf-detr #1453. An "fp32" engine with half tensors is an error too: an FP16 graph was fed where FP32
    was meant. An "int8" engine: `audit_int8`; an fp32 or fp16 engine with int8 convolutions is refused (the Q/DQ
    graph was given where a float graph was meant).
    """
    if requested == "int8":
        return audit_int8(report)
    frac = report.fp16_tensor_fraction
    fp32_by_type = report.fp32_layers_by_type()
    actual = "fp16" if frac >= 1.0 - 1e-9 else ("fp32" if frac == 0.0 else "mixed")
    warnings: list[str] = []
    if not report.layers:
        return PrecisionAudit(
            requested, "unknown", 0.0, 0.0, {}, report.io_dtypes(), False,
            "the inspector reported no layers; cannot tell the engine's precision",
        )  # fmt: skip
    if all(d == "unknown" for d in report.tensor_dtypes):
        # 10.x leaves formats (and so data types) out when no execution context with input shapes is set.
        return PrecisionAudit(
            requested, "unknown", 0.0, 0.0, {}, report.io_dtypes(), False,
            "the inspector shows no tensor data types; inspect with an execution context whose shapes are set",
        )  # fmt: skip
    if report.int8_conv_layers:
        return PrecisionAudit(
            requested, "int8", frac, report.fp16_layer_fraction, fp32_by_type, report.io_dtypes(), False,
            f"requested {requested} but {report.int8_conv_layers} convolutions compute on int8 data "
            "(was the int8 Q/DQ graph given?)",
            (), report.int8_conv_layers, len(report.conv_layers),
        )  # fmt: skip
    if requested == "fp16":
        if frac < min_fp16_fraction:
            ok = False
            message = (
                f"requested fp16 but only {frac:.1%} of layer tensors are FP16: this is an FP32 engine; "
                "on TensorRT 11 build from the FP16 ONNX (strongly typed)"
            )
        else:
            ok = True
            message = f"fp16 engine: {frac:.1%} of layer tensors in FP16"
            if frac < warn_fp16_fraction:
                warnings.append(f"only {frac:.1%} of layer tensors are FP16; expect little speed-up")
            if fp32_by_type:
                top = ", ".join(f"{k} x{v}" for k, v in fp32_by_type.items())
                warnings.append(f"layers left in FP32: {top}")
    else:
        ok = frac == 0.0
        message = (
            "fp32 engine: no half-precision tensors"
            if ok
            else f"requested fp32 but {frac:.1%} of layer tensors are FP16 (was the FP16 ONNX given?)"
        )
    return PrecisionAudit(
        requested, actual, frac, report.fp16_layer_fraction, fp32_by_type, report.io_dtypes(), ok, message,
        tuple(warnings),
    )  # fmt: skip
