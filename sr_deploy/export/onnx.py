"""ONNX export of a deploy-form SRNet, in FP32 or FP16, verified against torch before anything is written.

Exporter: torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, onnxscript). In torch 2.13 it gives a
clean graph (Conv, LeakyRelu, Split, Add, Concat, one DepthToSpace in CRD mode; no Shape/Reshape arithmetic, no
Constant nodes) with symbolic batch/height/width. The legacy TorchScript exporter (``dynamo=False``) gives the same
operators plus a Constant and is about 10x faster to trace, but it is deprecated and warns on every call.

FP16 route: the module itself is exported in half, with the casts written out in ``_DeployGraph``, so every Cast in
the graph is one we put there on purpose (checked by ``cast_audit``). Measured with team26's weights on Set5
(Y-PSNR, fp32 = 32.1949 dB): this half export and onnxconverter-common's ``convert_float_to_float16(keep_io_types=
True)`` give the same ONNX Runtime output (80.2 dB from fp32, Y 32.1947), but the converter also clamps small
weights with only a warning and needs one more dependency; ModelOpt AutoCast would be a heavy dependency for a graph
with no overflow risk (no attention, no global reductions). ONNX Runtime's CPU provider has no FP16 Conv on x86: it
computes FP16 graphs in FP32 from FP16 weights, which flatters them. So FP16 exports are also run in torch in real
half arithmetic (73.1 dB, Y 32.1943; with the upsampler conv kept in FP32 74.1 dB, Y 32.1946) and the gates take the
worse of the two.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from sr_deploy import __version__
from sr_deploy.archs.base import SRNet
from sr_deploy.archs.registry import arch_of, check_precision_supported, spec_from_json
from sr_deploy.archs.spec import ArchSpec
from sr_deploy.compare import Comparison, Tolerance, check, psnr_vs_hr
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.fileio import atomic_path, check_output_path, db_or_null, read_error, sha256_file
from sr_deploy.fusion import collapse_verified
from sr_deploy.precision import Precision, parse_precision

#: The precisions an exported graph is written in (bf16 is a runtime's compute precision over the fp32 graph; int8
#: graphs come from `srdeploy quantize`).
GRAPH_PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16")

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
DEFAULT_OPSET = 18
#: The dynamo exporter emits opset 18 natively; 17 is the lowest its down-converter reaches for this graph
#: (below that the ONNX C API version converter has no adapter for the exporter's Shape usage).
MIN_OPSET = 17
#: Highest opset the installed exporter writes; TensorRT 10.x parses up to about 22, so 18 stays the default.
MAX_OPSET = 25

#: Operators every export may contain; each architecture adds its own (``Architecture.onnx_ops``). All are in
#: TensorRT's ONNX parser's supported-operator list (onnx-tensorrt docs/operators.md) for FP32 and FP16; tests hold
#: the exact set per architecture and precision.
COMMON_OPS: frozenset[str] = frozenset({"Conv", "Add", "DepthToSpace", "Cast"})


#: What an explicitly quantized (int8, `srdeploy quantize`) graph adds: TensorRT parses both into IQuantizeLayer /
#: IDequantizeLayer (onnx-tensorrt docs/operators.md), ONNX Runtime and OpenVINO run them on the CPU.
QDQ_OPS: frozenset[str] = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: What an int8 graph adds where a conv reads the image centred on zero (sr_deploy.export.quantize.centre_image_convs).
CENTRING_OPS: frozenset[str] = frozenset({"Sub", "Pad"})


def allowed_ops(spec: ArchSpec, *, quantized: bool = False) -> frozenset[str]:
    """The operator set a deploy graph of `spec` is held to: the common set plus what its architecture needs, plus
    QuantizeLinear/DequantizeLinear (and the Sub and Pad that centre the image) for an int8 (`quantized`) graph."""
    return COMMON_OPS | arch_of(spec).onnx_ops | (QDQ_OPS | CENTRING_OPS if quantized else frozenset())


META_FORMAT = "srdeploy.format"
META_KEYS = ("spec", "scale", "srdeploy_version", "weights_sha256", "precision", "io")

_ONNX_DTYPES: dict[int, str] = {int(onnx.TensorProto.FLOAT): "float32", int(onnx.TensorProto.FLOAT16): "float16"}


def _dtype_name(elem_type: int) -> str:
    return _ONNX_DTYPES.get(int(elem_type), f"onnx type {elem_type}")


#: Names of the two fp16 runtimes the gates compare, as the report and the table print them.
ORT_LABEL = "ONNX Runtime"
HALF_LABEL = "torch half"


# ---------------------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class GateResult:
    name: str
    value: float
    threshold: float
    passed: bool
    rule: str  # "<=", ">=", or "is" for a yes/no check (value and threshold 1.0 = yes, 0.0 = no)
    #: When `value` is the worse of several comparisons: the one that gave it (e.g. "torch half"), else "".
    source: str = ""

    @property
    def yes_no(self) -> bool:
        return self.rule == "is"

    def value_text(self) -> str:
        """The value as a reader wants it: yes/no for a yes/no check, else the number (inf when identical)."""
        if self.yes_no:
            return "yes" if self.value else "no"
        return "inf" if math.isinf(self.value) else f"{self.value:.6g}"

    def rule_text(self) -> str:
        """What the value must be: "yes", or ">= 50"."""
        return ("yes" if self.threshold else "no") if self.yes_no else f"{self.rule} {self.threshold:g}"

    def describe(self) -> str:
        """One line for an error message: name = value (which runtime) (needs rule)."""
        src = f" ({self.source})" if self.source else ""
        return f"{self.name} = {self.value_text()}{src} (needs {self.rule_text()})"

    def to_dict(self) -> dict[str, Any]:
        if self.yes_no:
            return {
                "name": self.name,
                "value": bool(self.value),
                "threshold": bool(self.threshold),
                "rule": self.rule,
                "source": self.source or None,
                "passed": self.passed,
            }
        return {
            "name": self.name,
            **db_or_null("value", self.value),
            "threshold": self.threshold,
            "rule": self.rule,
            "source": self.source or None,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class ExportGates:
    """Thresholds of the verification that every export runs (issue 5, item 3)."""

    fp32_max_abs: float = 1e-4
    fp16_min_psnr_db: float = 50.0
    fp16_max_y_psnr_drop_db: float = 0.02

    def to_dict(self) -> dict[str, float]:
        return {
            "fp32_max_abs": self.fp32_max_abs,
            "fp16_min_psnr_db": self.fp16_min_psnr_db,
            "fp16_max_y_psnr_drop_db": self.fp16_max_y_psnr_drop_db,
        }

    def tolerance(self, precision: Precision) -> Tolerance:
        """The bound on an export's output against torch FP32: max abs for fp32, PSNR for fp16."""
        if precision == "fp32":
            return Tolerance(max_abs=self.fp32_max_abs)
        return Tolerance(min_psnr_db=self.fp16_min_psnr_db)


@dataclass(frozen=True)
class ReferenceImage:
    """A verification input: LR as 1x3xHxW float32 in [0, 1], optionally its HR as HxWx3 uint8 RGB."""

    name: str
    lr: np.ndarray
    hr: np.ndarray | None = None


@dataclass
class VerificationReport:
    """ONNX Runtime's output against torch FP32's on the same inputs (polygraphy-style statistics)."""

    inputs: str  # "Set5 (5 images)" or "random (2 inputs, seed 0)"
    real_images: bool
    onnx: Comparison  # ONNX Runtime vs torch FP32 output, peak 1.0, unclamped outputs
    y_psnr_torch_fp32: float | None = None  # mean Y-PSNR against HR (when HR images were given)
    y_psnr_onnx: float | None = None
    # FP16 only: the same graph run by torch in real half arithmetic on the CPU. ONNX Runtime's CPU provider
    # has no FP16 Conv on x86 and computes it in FP32 from FP16 weights, which flatters FP16 by ~7 dB; TensorRT
    # and torch really compute in half, so the gates take the worse of the two.
    torch_half: Comparison | None = None
    y_psnr_torch_half: float | None = None
    gates: list[GateResult] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return self.onnx.max_abs

    @property
    def mean_abs(self) -> float:
        return self.onnx.mean_abs

    @property
    def psnr_db(self) -> float:
        return self.onnx.psnr_db

    @property
    def psnr_db_torch_half(self) -> float | None:
        return None if self.torch_half is None else self.torch_half.psnr_db

    @property
    def finite(self) -> bool:
        return not (self.onnx.nonfinite or (self.torch_half is not None and self.torch_half.nonfinite))

    def comparisons(self) -> dict[str, Comparison]:
        """Each runtime's comparison against torch FP32, by the label the gates name it with."""
        both = {ORT_LABEL: self.onnx, HALF_LABEL: self.torch_half}
        return {k: v for k, v in both.items() if v is not None}

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        # PSNRs of identical outputs are +inf, which JSON cannot hold: null, with the reason beside it.
        return {
            "inputs": self.inputs,
            "real_images": self.real_images,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            **db_or_null("psnr_db", self.psnr_db),
            "finite": self.finite,
            **db_or_null("y_psnr_torch_fp32", self.y_psnr_torch_fp32, infinite="identical to HR"),
            **db_or_null("y_psnr_onnx", self.y_psnr_onnx, infinite="identical to HR"),
            **db_or_null("psnr_db_torch_half", self.psnr_db_torch_half),
            **db_or_null("y_psnr_torch_half", self.y_psnr_torch_half, infinite="identical to HR"),
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
        }


@dataclass
class OnnxExportReport:
    path: str
    sha256: str
    precision: Precision
    io: Precision
    opset: int
    static_hw: tuple[int, int] | None
    keep_last_conv_fp32: bool
    spec: ArchSpec
    weights_sha256: str
    ops: dict[str, int]
    casts: list[dict[str, str]]
    size_bytes: int
    verification: VerificationReport | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "precision": self.precision,
            "io": self.io,
            "opset": self.opset,
            "static_hw": list(self.static_hw) if self.static_hw else None,
            "keep_last_conv_fp32": self.keep_last_conv_fp32,
            "spec": self.spec.to_dict(),
            "weights_sha256": self.weights_sha256,
            "ops": dict(self.ops),
            "casts": [dict(c) for c in self.casts],
            "size_bytes": self.size_bytes,
            "verification": self.verification.to_dict() if self.verification else None,
        }


@dataclass(frozen=True)
class OnnxMetadata:
    """What srdeploy wrote into an ONNX file's metadata_props, read back."""

    path: str
    spec: ArchSpec
    scale: int
    srdeploy_version: str
    weights_sha256: str
    precision: str
    io: str
    opset: int
    input_dtype: str
    static_hw: tuple[int, int] | None
    props: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "spec": self.spec.to_dict(),
            "scale": self.scale,
            "srdeploy_version": self.srdeploy_version,
            "weights_sha256": self.weights_sha256,
            "precision": self.precision,
            "io": self.io,
            "opset": self.opset,
            "input_dtype": self.input_dtype,
            "static_hw": list(self.static_hw) if self.static_hw else None,
            "props": dict(self.props),
        }


# ---------------------------------------------------------------------------------------------- detection
def is_onnx_file(path: str | Path) -> bool:
    """True when `path` is an ONNX model, by extension or by content (weights are zip/pickle/safetensors)."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return True
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(2)
    except OSError:
        return False  # unreadable: whoever reads it next says why
    # A ModelProto starts with field 1 (ir_version, varint: tag 0x08) followed by a small version number;
    # torch zips start with "PK", pickles with 0x80, safetensors with an 8-byte little-endian length.
    if len(head) < 2 or head[0] != 0x08 or not 3 <= head[1] <= 20:
        return False
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # protobuf raises its own DecodeError type; anything unreadable is simply "not ONNX"
        return False
    return len(model.graph.node) > 0


def model_file_kind(path: str | Path) -> Literal["onnx", "tensorrt-engine", "weights"]:
    """What a file given to a command that takes either a model graph or weights is, by content where it can be."""
    p = Path(path)
    if is_onnx_file(p):
        return "onnx"
    if p.suffix.lower() in (".engine", ".plan", ".trt"):
        return "tensorrt-engine"
    return "weights"


def require_weights_path(path: str | Path, flag: str = "--weights") -> Path:
    """Refuse an ONNX file where weights are expected, naming the flag."""
    p = Path(path)
    if is_onnx_file(p):
        raise SRDeployError(f"{flag} {p}: is an ONNX model, expected weights (.safetensors or .pth)")
    return p


def require_onnx_path(path: str | Path, flag: str = "--onnx") -> Path:
    """Refuse weights (or anything not ONNX) where an ONNX model is expected, naming the flag."""
    p = Path(path)
    if not p.is_file():
        raise SRDeployError(f"{flag} {p}: no such file")
    if not is_onnx_file(p):
        raise SRDeployError(f"{flag} {p}: is not an ONNX model (weights? export one with srdeploy export-onnx)")
    return p


def read_onnx_metadata(path: str | Path) -> OnnxMetadata:
    """The spec, precision and provenance srdeploy stored in an ONNX file."""
    p = require_onnx_path(path, "ONNX file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except OSError as e:
        raise read_error(e, p) from None
    except Exception as e:  # protobuf's DecodeError (a file cut short) has no common base worth naming
        raise SRDeployError(f"{p}: not a readable ONNX file ({type(e).__name__}: {str(e)[:120]})") from None
    props = {m.key: m.value for m in model.metadata_props}
    missing = [k for k in META_KEYS if k not in props]
    if missing:
        raise SRDeployError(f"{p}: not written by srdeploy export-onnx (metadata lacks {', '.join(missing)})")
    spec = spec_from_json(props["spec"], str(p))
    inp = model.graph.input[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.shape.dim]
    static = (int(dims[2]), int(dims[3])) if len(dims) == 4 and dims[2] and dims[3] else None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not props["scale"].isdigit():
        raise SRDeployError(f"{p}: damaged metadata (scale {props['scale']!r} is not a number)")
    return OnnxMetadata(
        path=str(p),
        spec=spec,
        scale=int(props["scale"]),
        srdeploy_version=props["srdeploy_version"],
        weights_sha256=props["weights_sha256"],
        precision=props["precision"],
        io=props["io"],
        opset=int(opset),
        input_dtype=_dtype_name(inp.elem_type),
        static_hw=static,
        props=props,
    )


# ---------------------------------------------------------------------------------------------- graph
class _DeployGraph(nn.Module):
    """A deploy-form SRNet with the precision plan written out as explicit casts, so the exported Casts are exactly
    these. The weights' value range (``input_range``) is scaled inside the graph: [0, 1] in, [0, 1] out."""

    def __init__(self, model: SRNet, compute: torch.dtype, io_dtype: torch.dtype, last_fp32: bool) -> None:
        super().__init__()
        # A copy: nn.Module.to() converts in place, and the caller's FP32 model is the verification reference.
        self.net = copy.deepcopy(model).to(compute)
        self.up_dtype = torch.float32 if last_fp32 else compute
        self.up = self.net.output_stage().to(self.up_dtype)
        self.compute = compute
        self.io_dtype = io_dtype
        self.input_range = model.input_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # .to() with the same dtype is a no-op in the exported graph, so no Cast appears unless types change.
        x = x.to(self.compute)
        if self.input_range != 1.0:
            x = x * self.input_range
        out: torch.Tensor = self.up(self.net.features(x).to(self.up_dtype))
        if self.input_range != 1.0:
            out = out / self.input_range
        return out.to(self.io_dtype)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs torchvision notices and deprecation chatter that mean nothing to a user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_export_args(precision: str, io_: str, opset: int, static_hw: tuple[int, int] | None) -> None:
    """Refuse bad export options with one line naming the flag, before any weights are loaded."""
    parse_precision(precision, "--precision", GRAPH_PRECISIONS)
    parse_precision(io_, "--io", GRAPH_PRECISIONS)
    if io_ == "fp16" and precision == "fp32":
        raise SRDeployError("--io fp16 needs --precision fp16 (an FP32 graph keeps FP32 inputs and outputs)")
    if opset < MIN_OPSET:
        raise SRDeployError(
            f"--opset {opset}: too old; the exporter needs opset >= {MIN_OPSET} for this graph "
            "(Split with a sizes input, DepthToSpace in CRD mode)"
        )
    if opset > MAX_OPSET:
        raise SRDeployError(f"--opset {opset}: newer than the exporter supports (max {MAX_OPSET})")
    if static_hw is not None and (len(static_hw) != 2 or any(int(v) <= 0 for v in static_hw)):
        raise SRDeployError(f"--static {static_hw}: height and width must be positive integers")


def _deploy_model(model: SRNet) -> SRNet:
    """A float32 CPU eval copy in deploy form; a training-time (CLB) model is collapsed with its proof."""
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    if m.spec.training_form:
        collapsed, _ = collapse_verified(m)
        assert isinstance(collapsed, SRNet)
        m = collapsed.float().eval()
    return m


def build_onnx_model(
    model: SRNet,
    *,
    precision: Precision = "fp32",
    io: Precision = "fp32",
    opset: int = DEFAULT_OPSET,
    static_hw: tuple[int, int] | None = None,
    keep_last_conv_fp32: bool = False,
) -> onnx.ModelProto:
    """Trace `model` (deploy form, float32) into an ONNX ModelProto without metadata or checks."""
    compute = torch.float16 if precision == "fp16" else torch.float32
    io_dtype = torch.float16 if io == "fp16" else torch.float32
    graph = _DeployGraph(model, compute, io_dtype, keep_last_conv_fp32 and precision == "fp16").eval()
    least = arch_of(model.spec).min_input_size
    if static_hw is not None:
        if min(static_hw) < least:
            raise SRDeployError(
                f"--static {static_hw[0]}x{static_hw[1]}: {model.spec.name} needs at least {least}x{least}"
            )
        example = torch.rand(1, model.spec.in_channels, *static_hw, dtype=io_dtype)
        dynamic: dict[str, Any] | None = None
    else:
        # Batch 2 and odd sizes: torch.export specialises dimensions whose example size is 0 or 1.
        # Also at least the architecture's smallest input (ESA's pool needs 15 pixels).
        h, w = max(13, least + 2) | 1, max(11, least) | 1
        example = torch.rand(2, model.spec.in_channels, h, w, dtype=io_dtype)
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        dynamic = {"x": dims}
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            None,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic,
            verbose=False,
            optimize=True,
        )
    if program is None:  # only the legacy exporter returns None
        raise SRDeployError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if got != opset:
        raise SRDeployError(f"--opset {opset}: the exporter could not write it (got opset {got})")
    return proto


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def cast_audit(model: onnx.ModelProto) -> list[dict[str, str]]:
    """Every Cast as {node, input, output, from, to, consumer} after shape inference; raises on a wrong target.

    A Cast is wrong when it does not change the type (dead weight that hides a precision mistake) or when its
    result is not the type its consumer computes in (a Conv whose weights are of another type, or a graph output
    declared otherwise). Strict shape inference already rejects the second case; this names the node.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as e:
        raise GateFailedError(f"exported graph fails type inference: {str(e).strip().splitlines()[0]}") from None
    types: dict[str, int] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in inferred.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name: o.type.tensor_type.elem_type for o in inferred.graph.output}
    audit: list[dict[str, str]] = []
    for node in inferred.graph.node:
        if node.op_type != "Cast":
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        src = types.get(node.input[0], 0)
        where = f"Cast node {node.name or node.output[0]}"
        if src == to:
            raise GateFailedError(f"{where} casts {_dtype_name(src)} to itself")
        out = node.output[0]
        if out in outputs and outputs[out] != to:
            raise GateFailedError(f"{where} targets {_dtype_name(to)} but output {out} is declared otherwise")
        users = consumers.get(out, [])
        for user in users:
            if user.op_type == "Conv" and len(user.input) > 1 and types.get(user.input[1], to) != to:
                raise GateFailedError(f"{where} feeds {user.name} whose weights are not {_dtype_name(to)}")
        audit.append(
            {
                "node": node.name,
                "input": node.input[0],
                "output": out,
                "from": _dtype_name(src),
                "to": _dtype_name(to),
                "consumer": ",".join(u.op_type for u in users) or ("graph output" if out in outputs else ""),
            }
        )
    return audit


def _add_metadata(
    model: onnx.ModelProto, spec: ArchSpec, weights_sha256: str, precision: str, io_: str, keep_last: bool
) -> None:
    del model.metadata_props[:]
    props = {
        META_FORMAT: "srdeploy-onnx/1",
        "spec": spec.to_json(),
        "arch": spec.name,
        "scale": str(spec.scale),
        "srdeploy_version": __version__,
        "weights_sha256": weights_sha256,
        "precision": precision,
        "io": io_,
        "keep_last_conv_fp32": str(bool(keep_last)).lower(),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "layout": "NCHW RGB in [0, 1]",
    }
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "srdeploy"
    model.producer_version = __version__
    model.doc_string = f"{spec.name} x{spec.scale} super-resolution, {precision} (I/O {io_})"


# ---------------------------------------------------------------------------------------------- verification
def random_references(
    spec: ArchSpec, *, seed: int = 0, shapes: Sequence[tuple[int, int]] = ((37, 29), (16, 48))
) -> list[ReferenceImage]:
    """Seeded image-like inputs in [0, 1] at odd, non-square sizes: the fallback when no real images are at hand.

    Uniform noise at a quarter of the size, upsampled bilinearly: smooth regions and edges like an LR photo. White
    noise is out of distribution: it drives FMEN's sigmoid gates to pre-activations of ~1e7, where float32 rounding
    alone moves an output pixel by 1e-3 in any runtime, and would test the input, not the export.
    """
    rng = np.random.default_rng(seed)
    refs = []
    for i, (h, w) in enumerate(shapes):
        coarse = torch.from_numpy(rng.random((1, spec.in_channels, h // 4 + 2, w // 4 + 2), dtype=np.float32))
        lr = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        refs.append(ReferenceImage(f"random{i}", np.ascontiguousarray(lr.clamp(0, 1).numpy())))
    return refs


def load_reference_images(folder: str | Path, *, scale: int = 4) -> list[ReferenceImage]:
    """A test set laid out like ../shared/data/Set5: ``LR_bicubic_x{scale}/*.png`` and optionally ``HR/*.png``.

    Private reader (cv2, BGR -> RGB, /255) until sr_deploy.imaging.io can take this over.
    """
    import cv2

    root = Path(folder)
    lr_dir = root / f"LR_bicubic_x{scale}"
    if not lr_dir.is_dir():
        raise SRDeployError(f"{root}: no LR_bicubic_x{scale} folder of verification images")
    refs: list[ReferenceImage] = []
    for lr_path in sorted(lr_dir.glob("*.png")):
        bgr = cv2.imread(str(lr_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SRDeployError(f"{lr_path}: not a readable image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        lr = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
        hr: np.ndarray | None = None
        hr_path = root / "HR" / lr_path.name
        if hr_path.is_file():
            hr_bgr = cv2.imread(str(hr_path), cv2.IMREAD_COLOR)
            if hr_bgr is not None:
                h, w = rgb.shape[0] * scale, rgb.shape[1] * scale
                # modcrop: the HR the LR was made from is the top-left multiple of `scale`.
                hr = np.ascontiguousarray(cv2.cvtColor(hr_bgr, cv2.COLOR_BGR2RGB)[:h, :w])
        refs.append(ReferenceImage(lr_path.stem, lr, hr))
    if not refs:
        raise SRDeployError(f"{lr_dir}: no PNG images")
    return refs


def default_reference_folder() -> Path | None:
    """Set5 from $SRDEPLOY_SHARED, or from the shared/ beside a source checkout, when present (developer and CI
    machines); never relative to the current directory. See sr_deploy.references."""
    from sr_deploy.references import find_reference_folder

    return find_reference_folder().folder


def verify_onnx(
    onnx_source: str | Path | bytes,
    model: SRNet,
    references: Sequence[ReferenceImage],
    *,
    precision: Precision,
    real_images: bool,
    label: str,
    gates: ExportGates = ExportGates(),
    half_graph: nn.Module | None = None,
) -> VerificationReport:
    """Run the ONNX graph in ONNX Runtime (CPU) and `model` in torch FP32 on the same inputs; apply the gates.

    `half_graph` (FP16 exports): the exported torch module, run as well for real half arithmetic.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        onnx_source if isinstance(onnx_source, bytes) else str(onnx_source),
        opts,
        providers=["CPUExecutionProvider"],
    )
    in_dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
    border = model.spec.scale
    fp32_y: list[float] = []
    onnx_y: list[float] = []
    half_y: list[float] = []
    onnx_cmp = Comparison()
    half_cmp = Comparison() if half_graph is not None else None
    for ref in references:
        lr32 = np.ascontiguousarray(ref.lr, dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(lr32)).numpy()
        got = np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: lr32.astype(in_dtype)})[0]).astype(np.float32)
        if got.shape != expected.shape:
            raise GateFailedError(f"ONNX output shape {got.shape} != torch's {expected.shape} on {ref.name}")
        onnx_cmp.add(expected, got)
        if ref.hr is not None:
            fp32_y.append(psnr_vs_hr(expected, ref.hr, border).y_db)
            onnx_y.append(psnr_vs_hr(got, ref.hr, border).y_db)
        if half_graph is not None and half_cmp is not None:
            with torch.inference_mode():
                half = half_graph(torch.from_numpy(lr32.astype(in_dtype))).float().numpy()
            half_cmp.add(expected, half)
            if ref.hr is not None:
                half_y.append(psnr_vs_hr(half, ref.hr, border).y_db)
    report = VerificationReport(
        inputs=label,
        real_images=real_images,
        onnx=onnx_cmp,
        y_psnr_torch_fp32=_mean_or_none(fp32_y),
        y_psnr_onnx=_mean_or_none(onnx_y),
        torch_half=half_cmp,
        y_psnr_torch_half=_mean_or_none(half_y),
    )
    report.gates.extend(_gates(report, precision, gates))
    return report


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _gates(r: VerificationReport, precision: Precision, g: ExportGates) -> list[GateResult]:
    finite = GateResult("finite (no NaN/Inf)", 1.0 if r.finite else 0.0, 1.0, r.finite, "is")
    tol = g.tolerance(precision)
    checks = {k: check(c, tol, k) for k, c in r.comparisons().items()}
    if precision == "fp32":
        ort = checks[ORT_LABEL]
        return [finite, GateResult("max abs vs torch fp32", r.max_abs, g.fp32_max_abs, ort.passed, "<=")]
    # The gates take the worse of ONNX Runtime and torch half (see VerificationReport) and say which it was.
    worst_src = min(checks, key=lambda k: checks[k].comparison.psnr_db)
    worst = checks[worst_src]
    out = [
        finite,
        GateResult(
            "PSNR vs torch fp32 (dB)", worst.comparison.psnr_db, g.fp16_min_psnr_db, worst.passed, ">=", worst_src
        ),
    ]
    ys = {k: v for k, v in ((ORT_LABEL, r.y_psnr_onnx), (HALF_LABEL, r.y_psnr_torch_half)) if v is not None}
    if r.y_psnr_torch_fp32 is not None and ys:
        y_src = min(ys, key=lambda k: ys[k])
        drop = r.y_psnr_torch_fp32 - ys[y_src]
        out.append(
            GateResult(
                "mean Y-PSNR drop vs fp32 (dB)",
                drop,
                g.fp16_max_y_psnr_drop_db,
                drop <= g.fp16_max_y_psnr_drop_db,
                "<=",
                y_src,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- export
def export_onnx(
    model: SRNet,
    path: str | Path,
    *,
    precision: Precision = "fp32",
    io: Precision = "fp32",
    opset: int = DEFAULT_OPSET,
    static_hw: tuple[int, int] | None = None,
    keep_last_conv_fp32: bool = False,
    weights_sha256: str = "",
    verify: bool = True,
    references: Sequence[ReferenceImage] | None = None,
    reference_label: str = "",
    seed: int = 0,
    gates: ExportGates = ExportGates(),
) -> OnnxExportReport:
    """Export `model` to `path`, check it, verify it in ONNX Runtime against torch FP32 and only then keep it.

    `references`: real images to verify on (their ``hr`` enables the Y-PSNR gate); without them, seeded random
    inputs. On a failed check or gate, GateFailedError is raised and `path` is left untouched.
    """
    check_export_args(precision, io, opset, static_hw)
    check_output_path(path, "ONNX output")
    check_precision_supported(model.spec, precision)
    deploy = _deploy_model(model)
    proto = build_onnx_model(
        deploy, precision=precision, io=io, opset=opset, static_hw=static_hw, keep_last_conv_fp32=keep_last_conv_fp32
    )
    _add_metadata(proto, deploy.spec, weights_sha256, precision, io, keep_last_conv_fp32)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise GateFailedError(f"exported graph fails onnx.checker: {str(e).splitlines()[0]}") from None
    ops = op_counts(proto)
    foreign = sorted(set(ops) - allowed_ops(deploy.spec))
    if foreign:
        raise GateFailedError(f"exported graph has operators outside the TensorRT-supported set: {foreign}")
    casts = cast_audit(proto)

    real = references is not None
    if references is None:
        refs: Sequence[ReferenceImage] = random_references(deploy.spec, seed=seed)
        label = f"random ({len(refs)} inputs, seed {seed})"
    else:
        refs = references
        label = reference_label or f"{len(refs)} reference images"
    if static_hw is not None:
        # A static graph takes one size only: verify on crops/tiles of that size.
        refs = [_fit(r, static_hw) for r in refs]

    verification: VerificationReport | None = None
    with atomic_path(path, "ONNX output") as tmp:
        onnx.save_model(proto, str(tmp))
        if verify:
            half = (
                _DeployGraph(
                    deploy, torch.float16, torch.float16 if io == "fp16" else torch.float32, keep_last_conv_fp32
                ).eval()
                if precision == "fp16"
                else None
            )
            verification = verify_onnx(
                tmp, deploy, refs, precision=precision, real_images=real, label=label, gates=gates, half_graph=half
            )
            failed = [g for g in verification.gates if not g.passed]
            if failed:
                what = "; ".join(g.describe() for g in failed)
                raise GateFailedError(f"{path}: not written, verification failed on {label}: {what}")
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
    return OnnxExportReport(
        path=str(path),
        sha256=digest,
        precision=precision,
        io=io,
        opset=opset,
        static_hw=tuple(static_hw) if static_hw else None,  # type: ignore[arg-type]
        keep_last_conv_fp32=keep_last_conv_fp32,
        spec=deploy.spec,
        weights_sha256=weights_sha256,
        ops=ops,
        casts=casts,
        size_bytes=size,
        verification=verification,
    )


def _fit(ref: ReferenceImage, hw: tuple[int, int]) -> ReferenceImage:
    """`ref` cropped (or edge-padded) to exactly `hw`; HR is dropped since it no longer lines up."""
    h, w = hw
    lr = ref.lr[:, :, :h, :w]
    ph, pw = h - lr.shape[2], w - lr.shape[3]
    if ph or pw:
        lr = np.pad(lr, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
    return ReferenceImage(ref.name, np.ascontiguousarray(lr, dtype=np.float32), None)


def dumps_report(report: OnnxExportReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False)
