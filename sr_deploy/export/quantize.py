"""Post-training int8 quantization into one explicitly quantized (Q/DQ) ONNX graph, gated on PSNR (issue 13).

One file serves every runtime: OpenVINO and ONNX Runtime run it on the CPU, TensorRT builds an explicit-precision
engine from it (TensorRT 11 has no implicit INT8 calibration left).

Quantizer: ONNX Runtime's static QDQ quantization (``onnxruntime.quantization.quantize_static``), already a
dependency. Compared on team26, 32 96x96 crops of the DIV2K test LR images, Set5 mean Y-PSNR drop against fp32 with
every conv quantized, each tool placing Q/DQ its own way: ONNX Runtime 0.186 dB (percentile 99.999) and 0.302 dB
(min/max); NNCF 3.4 PTQ (performance preset, fast bias correction) 0.935 dB, 0.219 dB with the Adds ignored. Both put
Q/DQ on IMDN's residual stream by default (ONNX Runtime rewires every consumer of a quantized tensor, NNCF quantizes
the Adds' inputs); `restore_float_consumers` undoes that for ONNX Runtime: 0.141 dB (percentile 99.99). NNCF also
quantizes the image input to uint8, which TensorRT's explicit quantization does not take (signed int8 only), its
full bias correction failed on this graph (duplicate tensor names), and it would add NNCF, SciPy and more.
Measured with NNCF installed beside the project, not as a dependency.

The graph (what TensorRT's explicit quantization accepts, checked by `audit_qdq`):

- weights: int8 initializers, per-channel symmetric (zero point 0) on axis 0, each behind one DequantizeLinear;
- activations: int8, per-tensor symmetric, one QuantizeLinear -> DequantizeLinear pair at the input of each conv;
- nothing else is quantized: biases stay float (TensorRT takes no int32 bias DQ), conv outputs are not quantized
  (a Q/DQ between a conv and its LeakyReLU would split a fusion and add error), nor are Add, Concat, Split or
  DepthToSpace inputs.

The accuracy gate (`Int8Gates`): team26's Set5 mean Y-PSNR may drop at most 0.10 dB against fp32, the output has no
NaN/Inf, and no image's mean brightness moves by more than 0.5 levels (0-255) in any colour channel (a colour cast is
a per-channel shift). It takes the worse of ONNX Runtime and OpenVINO. When quantizing every conv fails the gate,
layers are left in floating point greedily, most sensitive first; a layer's sensitivity is the drop when only that
layer is quantized.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from sr_deploy import __version__
from sr_deploy.archs.base import SRNet
from sr_deploy.archs.spec import ArchSpec
from sr_deploy.compare import Comparison, mean_brightness_shift, psnr_vs_hr
from sr_deploy.errors import GateFailedError, SRDeployError, name_list
from sr_deploy.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    QDQ_OPS,
    GateResult,
    ReferenceImage,
    allowed_ops,
    build_onnx_model,
    op_counts,
)
from sr_deploy.fileio import atomic_path, check_output_path, sha256_file

CALIBRATION_METHODS: tuple[str, ...] = ("percentile", "minmax")
#: Measured on team26 (Set5 Y-PSNR drop with model.0 and model.1.sub.0.conv1.0 in floating point, 32 96x96 crops,
#: seeds 0-3): 99.99 -> 0.082 / 0.116 / 0.076 / 0.092 dB; 99.999 -> 0.095 / 0.073 / 0.139 dB (seeds 0-2); min/max
#: 0.225 / 0.279 dB (seeds 0, 2). SR activations have rare, meaningful peaks (edges): 99.9 clips them (1.1 dB).
DEFAULT_PERCENTILE = 99.99
#: Without this many images the ranges are guesses; with many more, calibration gets slow for little gain.
DEFAULT_CALIB_COUNT = 32
DEFAULT_CROP = 96
#: The issue's limit: beyond two layers in floating point, PTQ is declared insufficient (QAT is the answer).
DEFAULT_MAX_FLOAT_LAYERS = 2
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------- options, gates
@dataclass(frozen=True)
class Int8Gates:
    """The int8 accuracy gate (issue 13)."""

    max_y_drop_db: float = 0.10
    max_brightness_shift: float = 0.5  # levels on the 0-255 scale, per image and colour channel

    def to_dict(self) -> dict[str, float]:
        return {"max_y_drop_db": self.max_y_drop_db, "max_brightness_shift": self.max_brightness_shift}


@dataclass(frozen=True)
class QuantizeOptions:
    """How to calibrate and how far the search for float layers may go."""

    calib_count: int = DEFAULT_CALIB_COUNT
    crop: int = DEFAULT_CROP
    seed: int = 0
    calibration: str = "percentile"
    percentile: float = DEFAULT_PERCENTILE
    max_float_layers: int = DEFAULT_MAX_FLOAT_LAYERS
    #: Also hold the graph to the gate in OpenVINO (where it can run int8): the gate takes the worse runtime.
    check_openvino: bool = True
    gates: Int8Gates = field(default_factory=Int8Gates)

    def validate(self) -> None:
        """One line naming the flag for a bad option, before any work."""
        if self.calib_count < 1:
            raise SRDeployError(f"--calib-count must be >= 1, got {self.calib_count}")
        if self.crop < 8:
            raise SRDeployError(f"--crop must be >= 8 LR pixels, got {self.crop}")
        if self.calibration not in CALIBRATION_METHODS:
            raise SRDeployError(f"--calibration {self.calibration!r}: expected {' or '.join(CALIBRATION_METHODS)}")
        if not 90.0 <= self.percentile <= 100.0:
            raise SRDeployError(f"--percentile must be in [90, 100], got {self.percentile:g}")
        if self.max_float_layers < 0:
            raise SRDeployError(f"--max-float-layers must be >= 0, got {self.max_float_layers}")

    def method_dict(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "method": "ptq",
            "quantizer": f"onnxruntime {ort.__version__} quantize_static, QDQ format",
            "calibration": self.calibration,
            "percentile": self.percentile if self.calibration == "percentile" else None,
            "weights": "int8, per-channel (axis 0) symmetric, zero point 0",
            "activations": "int8, per-tensor symmetric, zero point 0, at conv inputs only",
            "bias": "float (not quantized)",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "calib_count": self.calib_count,
            "crop": self.crop,
            "seed": self.seed,
            "calibration": self.calibration,
            "percentile": self.percentile,
            "max_float_layers": self.max_float_layers,
            "check_openvino": self.check_openvino,
            "gates": self.gates.to_dict(),
        }


# ---------------------------------------------------------------------------------------------- calibration set
@dataclass(frozen=True)
class CalibrationSet:
    """Crops of LR images: the activations' ranges are measured on them. `sha256` names the set exactly."""

    folder: str
    files: tuple[str, ...]
    crop: int
    seed: int
    sha256: str
    crops: tuple[np.ndarray, ...] = field(repr=False, compare=False)
    skipped: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "count": len(self.files),
            "files": list(self.files),
            "crop": self.crop,
            "seed": self.seed,
            "sha256": self.sha256,
            "skipped": dict(self.skipped),
        }


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the file header where that is cheap (PNG), else by decoding; None when unreadable."""
    from sr_deploy.trt_plan.profiles import read_image_size

    try:
        return read_image_size(path)
    except (SRDeployError, OSError):
        return None


def load_calibration_set(folder: str | Path, count: int, crop: int, *, seed: int = 0) -> CalibrationSet:
    """`count` images of `folder` (chosen with `seed` among those at least `crop` x `crop`), one random crop each,
    as 1x3xHxW float32 RGB in [0, 1]. A missing or empty folder, or fewer usable images than `count`, is one line."""
    from sr_deploy.imaging.io import read_image

    root = Path(folder)
    if not root.exists():
        raise SRDeployError(f"--calib-dir {root}: no such folder")
    if not root.is_dir():
        raise SRDeployError(f"--calib-dir {root}: is a file, expected a folder of LR images")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SRDeployError(f"--calib-dir {root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    skipped: dict[str, str] = {}
    usable: list[Path] = []
    for p in files:
        size = _image_size(p)
        if size is None:
            skipped[p.name] = "unreadable"
        elif min(size) < crop:
            skipped[p.name] = f"{size[0]}x{size[1]} is smaller than the {crop}x{crop} crop"
        else:
            usable.append(p)
    if len(usable) < count:
        why = f" ({len(skipped)} skipped: {name_list([f'{k} {v}' for k, v in skipped.items()], 2)})" if skipped else ""
        raise SRDeployError(
            f"--calib-dir {root}: {len(usable)} usable image(s) of at least {crop}x{crop}{why}, "
            f"but --calib-count asks for {count}"
        )
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(usable), size=count, replace=False).tolist())
    crops: list[np.ndarray] = []
    names: list[str] = []
    digest = hashlib.sha256(json.dumps({"crop": crop, "seed": seed, "count": count}).encode())
    for i in chosen:
        path = usable[i]
        try:
            image = read_image(path)
        except SRDeployError as e:
            raise SRDeployError(f"--calib-dir: {e}") from None
        h, w = image.height, image.width
        y = int(rng.integers(0, h - crop + 1))
        x = int(rng.integers(0, w - crop + 1))
        patch = image.rgb[y : y + crop, x : x + crop].astype(np.float32) / float(2**image.bit_depth - 1)
        crops.append(np.ascontiguousarray(patch.transpose(2, 0, 1)[None]))
        names.append(path.name)
        digest.update(path.name.encode())
        digest.update(bytes.fromhex(sha256_file(path)))
    return CalibrationSet(str(root), tuple(names), crop, seed, digest.hexdigest(), tuple(crops), skipped)


# ---------------------------------------------------------------------------------------------- graph facts
@dataclass(frozen=True)
class ConvLayer:
    """A Conv node of the fp32 graph: its node name (what the quantizer takes) and the weights' name (what a person
    recognises, e.g. ``model.1.sub.0.conv1.0``)."""

    node: str
    name: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "layer": self.name}


_WEIGHT_NAME = re.compile(r"^(?:net\.)?(.*?)\.weight(?:_.*)?$")


def layer_name(weight: str) -> str:
    """A conv's weights' name as a person reads it: ``net.model.0.weight`` and the quantizer's
    ``net.model.0.weight_quantized`` are both ``model.0``."""
    m = _WEIGHT_NAME.match(weight)
    return m.group(1) if m else weight


def conv_layers(model: onnx.ModelProto) -> list[ConvLayer]:
    """Every Conv in graph order, named after its weights (``net.X.weight`` -> ``X``)."""
    return [
        ConvLayer(node.name or node.output[0], layer_name(node.input[1]))
        for node in model.graph.node
        if node.op_type == "Conv"
    ]


CENTRE_NODE = "srdeploy_centre_image"


def image_tensor(model: onnx.ModelProto) -> tuple[str, float]:
    """The tensor the first convs read as the image, and its range's midpoint: the graph input ([0, 1]), or the
    input-range Mul's output ([0, k] for weights trained on [0, k])."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Mul" or INPUT_NAME not in node.input:
            continue
        other = [i for i in node.input if i != INPUT_NAME]
        if len(other) == 1 and other[0] in inits and inits[other[0]].size == 1:
            return node.output[0], float(inits[other[0]].reshape(-1)[0]) / 2.0
    return INPUT_NAME, 0.5


def centre_image_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, float]]:
    """A copy in which each Conv that reads the image reads it centred on zero, and the tensors its Q/DQ pair will
    sit on, with their centre.

    Symmetric int8 (what TensorRT takes) spends half its codes on negative values an image never has: [0, 1] at
    scale 1/127 keeps 7 of the image's 8 bits (team26 on Set5: 0.051 dB, half the int8 budget, with every conv in
    fp32; centred: 0.007 dB). So ``x -> Conv(pads p, W, b)`` becomes ``x -> Sub(c) -> Pad(p, value -c) ->
    Conv(no pads, W, b + c * sum(W))``: the same function, the zero padding included (padding the shifted image with
    -c is padding the image with 0), and the conv's input spans [-c, c]. Conv node names stay, so layer names and the
    search's node lists still hold."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensor, centre = image_tensor(out)
    inits = {i.name: i for i in out.graph.initializer}
    centre_name = "srdeploy_image_centre"
    shifted = f"{tensor}_centred"
    nodes: list[onnx.NodeProto] = []
    centred: dict[str, float] = {}
    for node in out.graph.node:
        if node.op_type != "Conv" or node.input[0] != tensor:
            nodes.append(node)
            continue
        if not centred:
            out.graph.initializer.append(numpy_helper.from_array(np.array(centre, np.float32), centre_name))
            out.graph.initializer.append(numpy_helper.from_array(np.array(-centre, np.float32), centre_name + "_neg"))
            nodes.append(onnx.helper.make_node("Sub", [tensor, centre_name], [shifted], name=CENTRE_NODE))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise SRDeployError(f"Conv {node.name}: auto_pad is not supported when centring the image")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        half = len(pads) // 2
        padded = f"{node.name}_input_centred"
        pads_name = f"{node.name}_centre_pads"
        out.graph.initializer.append(
            numpy_helper.from_array(np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64), pads_name)
        )
        nodes.append(
            onnx.helper.make_node(
                "Pad", [shifted, pads_name, centre_name + "_neg"], [padded], mode="constant", name=f"{padded}_pad"
            )
        )
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        bias = (
            numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2]
            else np.zeros(weight.shape[0])
        )
        bias_name = f"{node.name}_centred_bias"
        out.graph.initializer.append(
            numpy_helper.from_array((bias + centre * weight.sum(axis=(1, 2, 3))).astype(np.float32), bias_name)
        )
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        del conv.input[:]
        conv.input.extend([padded, node.input[1], bias_name])
        for a in conv.attribute:
            if a.name == "pads":
                del a.ints[:]
                a.ints.extend([0] * len(pads))
        nodes.append(conv)
        centred[padded] = centre
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {i for n in out.graph.node for i in n.input}
    unused = [i for i in out.graph.initializer if i.name not in used]  # the replaced biases
    for init in unused:
        out.graph.initializer.remove(init)
    return out, centred


def centred_inputs(model: onnx.ModelProto) -> dict[str, float]:
    """The conv inputs `centre_image_convs` made, with their centre, read back from its graph or from the int8
    graph quantized from it."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        tensor = node.input[0]
        dq = made_by.get(tensor)
        q = made_by.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            tensor = q.input[0]  # an int8 graph: the centred tensor is what its Q/DQ pair quantizes
        pad = made_by.get(tensor)
        sub = made_by.get(pad.input[0]) if pad is not None and pad.op_type == "Pad" else None
        if sub is not None and sub.name == CENTRE_NODE and sub.input[1] in inits:
            out[tensor] = float(inits[sub.input[1]].reshape(-1)[0])
    return out


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """The convs of a Q/DQ graph whose weights are int8 (behind a DequantizeLinear), by layer name."""
    producer = {out: n for n in model.graph.node for out in n.output}
    names: list[str] = []
    for node in model.graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            names.append(layer_name(dq.input[0]))
    return names


def is_quantized(model: onnx.ModelProto) -> bool:
    """True when the graph holds QuantizeLinear/DequantizeLinear nodes (an explicitly quantized graph)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


@dataclass(frozen=True)
class QdqAudit:
    """What TensorRT's explicit quantization would make of the graph's Q/DQ nodes. `problems` empty: accepted."""

    quantized_convs: int
    float_convs: int
    activation_pairs: int
    weight_dqs: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantized_convs": self.quantized_convs,
            "float_convs": self.float_convs,
            "activation_pairs": self.activation_pairs,
            "weight_dqs": self.weight_dqs,
            "problems": list(self.problems),
            "ok": self.ok,
        }


def audit_qdq(model: onnx.ModelProto) -> QdqAudit:
    """Check Q/DQ placement against what TensorRT's explicit quantization takes and fuses (pure; tested).

    - every Q/DQ has an int8 zero point of 0 (TensorRT quantization is symmetric) and a positive, finite constant scale;
    - a per-channel DQ dequantizes an int8 initializer on axis 0 and feeds only Conv weights;
    - an activation Q is per-tensor and feeds only DQs; an activation DQ feeds only Conv data inputs;
    - a Conv is quantized whole (data and weights) or not at all; biases are float initializers, never a DQ.
    """
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in model.graph.node:
        for k, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, k))
    problems: list[str] = []
    pairs = weight_dqs = 0

    def where(n: onnx.NodeProto) -> str:
        return f"{n.op_type} {n.name or n.output[0]}"

    for n in model.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        if len(n.input) < 3 or not n.input[2] or n.input[2] not in inits:
            problems.append(f"{where(n)}: no constant zero point (TensorRT needs an explicit int8 zero point 0)")
        else:
            zp = inits[n.input[2]]
            if zp.data_type != onnx.TensorProto.INT8:
                kind = onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name
                problems.append(f"{where(n)}: zero point is {kind}, not int8 (TensorRT's int8 is signed)")
            elif np.any(numpy_helper.to_array(zp) != 0):
                problems.append(f"{where(n)}: zero point is not 0 (TensorRT quantization is symmetric)")
        scale = inits.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            problems.append(f"{where(n)}: the scale is not a constant")
            continue
        s = numpy_helper.to_array(scale).astype(np.float64)
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            problems.append(f"{where(n)}: scales must be positive and finite")
        users = consumers.get(n.output[0], [])
        per_channel = s.size > 1
        if n.op_type == "QuantizeLinear":
            if per_channel:
                problems.append(f"{where(n)}: activations must be quantized per tensor")
            if any(u.op_type != "DequantizeLinear" for u, _ in users):
                problems.append(f"{where(n)}: feeds something other than a DequantizeLinear")
            continue
        src = n.input[0]
        if src in inits:  # a weight
            weight_dqs += 1
            if inits[src].data_type != onnx.TensorProto.INT8:
                problems.append(f"{where(n)}: weights are not int8")
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)  # ONNX's default axis is 1
            if per_channel and axis != 0:
                problems.append(f"{where(n)}: per-channel weights must be quantized on axis 0 (output channels)")
            if not users or any(u.op_type != "Conv" or k != 1 for u, k in users):
                problems.append(f"{where(n)}: dequantized weights must feed only Conv weight inputs")
            continue
        q = producer.get(src)
        if q is None or q.op_type != "QuantizeLinear":
            problems.append(f"{where(n)}: dequantizes something that no QuantizeLinear produced")
        else:
            pairs += 1
        if per_channel:
            problems.append(f"{where(n)}: activations must be dequantized per tensor")
        if not users or any(u.op_type != "Conv" or k != 0 for u, k in users):
            names = ", ".join(sorted({u.op_type for u, k in users if u.op_type != "Conv" or k != 0})) or "nothing"
            problems.append(f"{where(n)}: Q/DQ on an input of {names}; only conv inputs are quantized")

    quantized = floating = 0
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        data_dq = producer.get(n.input[0])
        weight_dq = producer.get(n.input[1])
        data_q = data_dq is not None and data_dq.op_type == "DequantizeLinear"
        weight_q = weight_dq is not None and weight_dq.op_type == "DequantizeLinear"
        if data_q != weight_q:
            problems.append(f"{where(n)}: {'data' if data_q else 'weights'} quantized but not the other")
        quantized += int(data_q and weight_q)
        floating += int(not data_q and not weight_q)
        if len(n.input) > 2 and n.input[2] and n.input[2] not in inits:
            problems.append(f"{where(n)}: bias is not a float constant (TensorRT takes no int32 bias DQ)")
    return QdqAudit(quantized, floating, pairs, weight_dqs, tuple(problems))


# ---------------------------------------------------------------------------------------------- quantizing
@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization prints progress and warns about pre-processing we do not need (no shape inference
    is missing in our graphs); none of it means anything to a user."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _CropReader:
    """onnxruntime's CalibrationDataReader protocol over the calibration crops."""

    def __init__(self, crops: Sequence[np.ndarray]) -> None:
        self._crops = list(crops)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._crops):
            return None
        self._next += 1
        return {INPUT_NAME: self._crops[self._next - 1]}

    def __len__(self) -> int:
        return len(self._crops)

    def rewind(self) -> None:
        self._next = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self._crops = self._crops[start_index:end_index]
        self._next = 0


def _ort_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return CalibrationMethod.Percentile if name == "percentile" else CalibrationMethod.MinMax


def calibrate(fp32_path: Path, calib: CalibrationSet, options: QuantizeOptions, cache_path: Path) -> Path:
    """Measure every conv input's range on the calibration crops once and keep it in onnxruntime's calibration cache
    (`cache_path`), so that each graph of the search is quantized from the same ranges without recalibrating."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    extra: dict[str, Any] = {"symmetric": True}
    if options.calibration == "percentile":
        extra["percentile"] = options.percentile
    with _quiet_quantizer():
        calibrator = create_calibrator(
            fp32_path,
            ["Conv"],
            augmented_model_path=str(cache_path.with_suffix(".augmented.onnx")),
            calibrate_method=_ort_method(options.calibration),
            extra_options=extra,
        )
        calibrator.collect_data(_CropReader(calib.crops))
        save_tensors_data(calibrator.compute_data(), cache_path)
    return cache_path


def quantize_qdq(
    fp32_path: Path,
    cache_path: Path,
    options: QuantizeOptions,
    *,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """The Q/DQ graph with the cached ranges: every conv except `exclude`, or only the convs in `only`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        # Float bias: TensorRT has no int32 bias DQ; every runtime adds a float bias to the int32 accumulators.
        "QuantizeBias": False,
        # Inputs of convs only: no Q/DQ between a conv and its LeakyReLU (see the module docstring).
        "OpTypesToExcludeOutputQuantization": ["Conv"],
    }
    with tempfile.TemporaryDirectory(prefix="srdeploy-qdq-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "q.onnx"
        quantize_static(
            str(fp32_path),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_ort_method(options.calibration),
            nodes_to_quantize=list(only) or None,
            nodes_to_exclude=list(exclude) or None,
            extra_options=extra,
            calibration_cache_path=str(cache_path),
        )
        return restore_float_consumers(onnx.load(str(out)))


def restore_float_consumers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every consumer that is not a quantized conv the float tensor back (in place; returns `model`).

    onnxruntime's quantizer rewires every consumer of a quantized tensor to its DequantizeLinear, not just the conv it
    quantized it for: IMDN's residual stream (each block's output feeds the next block's first conv and its residual
    Add) then goes through Q/DQ seven times, and a conv left in floating point would read int8 data. The pair stays
    in front of the quantized conv; the Add, Concat or float conv read the tensor as it was. It is also what TensorRT
    should see: a Q/DQ pair on the Add's input would make it quantize the residual stream. Measured on team26 (two
    float layers, percentile 99.999, three calibration draws): Set5 Y-PSNR drop 0.108 / 0.098 / 0.152 dB before,
    0.095 / 0.073 / 0.139 dB after."""
    producer = {out: n for n in model.graph.node for out in n.output}
    inits = {i.name for i in model.graph.initializer}

    def quantized_conv(node: onnx.NodeProto) -> bool:
        weight = producer.get(node.input[1]) if len(node.input) > 1 else None
        return node.op_type == "Conv" and weight is not None and weight.op_type == "DequantizeLinear"

    for node in model.graph.node:
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            if not (k == 0 and quantized_conv(node)):
                node.input[k] = q.input[0]
    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    # Pairs nothing reads any more (a tensor whose only consumers were restored): drop them.
    while True:
        dead = [n for n in model.graph.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
        used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


# ---------------------------------------------------------------------------------------------- evaluation
#: Runs a serialized ONNX graph on one 1x3xHxW float32 input.
Runner = Callable[[np.ndarray], np.ndarray]
#: Makes a Runner for a serialized graph (ONNX Runtime, OpenVINO).
RunnerFactory = Callable[[bytes], Runner]


def ort_runner(graph: bytes) -> Runner:
    """ONNX Runtime on the CPU (one thread per physical core), the graph as given."""
    import onnxruntime as ort

    from sr_deploy.runtime.torch_backend import physical_cores

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = physical_cores()
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)

    return run


def openvino_runner(graph: bytes) -> Runner:
    """The OpenVINO backend exactly as `--backend openvino --precision int8` runs it."""
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    backend = OpenVinoBackend(graph, precision="int8")
    return backend.run


def openvino_bf16_remainder_runner(graph: bytes) -> Runner:
    """The OpenVINO int8 backend with the graph's float remainder in bf16 (`int8_remainder="bf16"`)."""
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    backend = OpenVinoBackend(graph, precision="int8", int8_remainder="bf16")
    return backend.run


@dataclass(frozen=True)
class RuntimeScore:
    """One runtime's int8 output against the fp32 reference on the gate's images."""

    runtime: str
    mean_y_psnr: float
    y_drop_db: float
    finite: bool
    brightness_shift: float  # worst |mean(int8) - mean(fp32)| over images and colour channels, 0-255 levels
    psnr_vs_fp32_db: float  # all images pooled, peak 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "mean_y_psnr": self.mean_y_psnr if math.isfinite(self.mean_y_psnr) else None,
            "y_drop_db": self.y_drop_db if math.isfinite(self.y_drop_db) else None,
            "finite": self.finite,
            "brightness_shift": self.brightness_shift if math.isfinite(self.brightness_shift) else None,
            "psnr_vs_fp32_db": self.psnr_vs_fp32_db if math.isfinite(self.psnr_vs_fp32_db) else None,
        }


@dataclass(frozen=True)
class Fp32Reference:
    """The fp32 graph's outputs on the gate's images (ONNX Runtime) and their mean Y-PSNR against HR."""

    outputs: tuple[np.ndarray, ...]
    mean_y_psnr: float


def fp32_reference(fp32_graph: bytes, refs: Sequence[ReferenceImage], border: int) -> Fp32Reference:
    run = ort_runner(fp32_graph)
    outs = tuple(run(r.lr) for r in refs)
    ys = [psnr_vs_hr(o, r.hr, border).y_db for o, r in zip(outs, refs, strict=True) if r.hr is not None]
    return Fp32Reference(outs, float(np.mean(ys)))


def score(
    run: Runner, runtime: str, refs: Sequence[ReferenceImage], reference: Fp32Reference, border: int
) -> RuntimeScore:
    """Mean Y-PSNR (against HR) and its drop, NaN/Inf, brightness shift and PSNR against fp32 of one runtime."""
    ys: list[float] = []
    finite = True
    shift = 0.0
    # Against fp32 on what is displayed: both clipped to [0, 1], a NaN counted as 0 (`finite` reports it).
    shown = Comparison()
    for r, expected in zip(refs, reference.outputs, strict=True):
        got = run(r.lr)
        finite = finite and bool(np.isfinite(got).all())
        if r.hr is not None:
            ys.append(psnr_vs_hr(got, r.hr, border).y_db)
        shift = max(shift, mean_brightness_shift(expected, got))
        shown.add(np.clip(expected, 0.0, 1.0), np.clip(np.nan_to_num(got, nan=0.0), 0.0, 1.0))
    mean_y = float(np.mean(ys)) if ys else math.nan
    return RuntimeScore(
        runtime=runtime,
        mean_y_psnr=mean_y,
        y_drop_db=reference.mean_y_psnr - mean_y if finite else math.inf,
        finite=finite,
        brightness_shift=shift if finite else math.inf,
        psnr_vs_fp32_db=shown.psnr_db,
    )


def gate_results(scores: Sequence[RuntimeScore], gates: Int8Gates) -> list[GateResult]:
    """The gate over every runtime: each figure is the worse runtime's, named as the source."""
    finite = all(s.finite for s in scores)
    worst_drop = max(scores, key=lambda s: s.y_drop_db)
    worst_shift = max(scores, key=lambda s: s.brightness_shift)
    several = len(scores) > 1
    return [
        GateResult("finite (no NaN/Inf)", 1.0 if finite else 0.0, 1.0, finite, "is"),
        GateResult(
            "mean Y-PSNR drop vs fp32 (dB)",
            worst_drop.y_drop_db,
            gates.max_y_drop_db,
            worst_drop.y_drop_db <= gates.max_y_drop_db,
            "<=",
            worst_drop.runtime if several else "",
        ),
        GateResult(
            "mean brightness shift (levels of 255)",
            worst_shift.brightness_shift,
            gates.max_brightness_shift,
            worst_shift.brightness_shift <= gates.max_brightness_shift,
            "<=",
            worst_shift.runtime if several else "",
        ),
    ]


BF16_REMAINDER_KEY = "openvino_bf16_remainder"
#: The metadata key of the tensors a conv reads the image through, centred on zero, with their centre.
CENTRED_KEY = "centred_image_inputs"


def bf16_remainder_verdict(
    graph: bytes, references: Sequence[ReferenceImage], reference: Fp32Reference, border: int, gates: Int8Gates
) -> dict[str, Any] | None:
    """Whether OpenVINO may run `graph`'s float remainder in bf16 (measured ~13% faster on team26): the same gate,
    on OpenVINO with that remainder alone, recorded in the metadata under BF16_REMAINDER_KEY so that the backend
    decides from a measurement, never on its own. None where OpenVINO has no native bf16 or int8 here."""
    from sr_deploy.runtime.ov_backend import bf16_capable, int8_capable, openvino_status

    if openvino_status() is not None or int8_capable() is not None or bf16_capable() is not None:
        return None
    got = score(openvino_bf16_remainder_runner(graph), "openvino, bf16 remainder", references, reference, border)
    passed = all(g.passed for g in gate_results([got], gates))
    return {"passed": passed, **got.to_dict()}


# ---------------------------------------------------------------------------------------------- the search
@dataclass(frozen=True)
class LayerSensitivity:
    """The Y-PSNR drop (ONNX Runtime, gate images) when only this conv is quantized."""

    layer: ConvLayer
    y_drop_db: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.layer.to_dict(), "y_drop_db": self.y_drop_db}


@dataclass(frozen=True)
class SearchStep:
    """One candidate of the greedy search: these layers left in floating point, and how it scored."""

    float_layers: tuple[str, ...]
    scores: tuple[RuntimeScore, ...]
    gates: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def y_drop_db(self) -> float:
        return max(s.y_drop_db for s in self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_layers": list(self.float_layers),
            "y_drop_db": self.y_drop_db if math.isfinite(self.y_drop_db) else None,
            "scores": [s.to_dict() for s in self.scores],
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
        }


def greedy_order(sensitivities: Sequence[LayerSensitivity]) -> list[ConvLayer]:
    """Layers to leave in floating point, most sensitive first (ties: graph order, so the search is reproducible)."""
    indexed = list(enumerate(sensitivities))
    indexed.sort(key=lambda t: (-t[1].y_drop_db, t[0]))
    return [s.layer for _, s in indexed]


@dataclass
class QuantizeReport:
    path: str
    sha256: str
    size_bytes: int
    spec: ArchSpec
    weights_sha256: str
    options: QuantizeOptions
    calibration: CalibrationSet
    reference_label: str
    fp32_mean_y_psnr: float
    layers: list[ConvLayer]
    sensitivities: list[LayerSensitivity]
    steps: list[SearchStep]
    float_layers: list[str]
    audit: QdqAudit
    ops: dict[str, int]
    seconds: dict[str, float]

    @property
    def final(self) -> SearchStep:
        return self.steps[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "spec": self.spec.to_dict(),
            "weights_sha256": self.weights_sha256,
            "options": self.options.to_dict(),
            "method": self.options.method_dict(),
            "calibration": self.calibration.to_dict(),
            "reference_images": self.reference_label,
            "fp32_mean_y_psnr": self.fp32_mean_y_psnr,
            "layers": len(self.layers),
            "sensitivities": [s.to_dict() for s in self.sensitivities],
            "steps": [s.to_dict() for s in self.steps],
            "float_layers": list(self.float_layers),
            "y_drop_all_quantized_db": self.steps[0].y_drop_db if self.steps else None,
            "y_drop_db": self.final.y_drop_db if self.steps else None,
            "gates": [g.to_dict() for g in self.final.gates] if self.steps else [],
            "audit": self.audit.to_dict(),
            "ops": dict(self.ops),
            "seconds": dict(self.seconds),
        }


def add_int8_metadata(
    model: onnx.ModelProto,
    spec: ArchSpec,
    weights_sha256: str,
    options: QuantizeOptions,
    calib: CalibrationSet,
    float_layers: Sequence[str],
    step: SearchStep,
    *,
    method: dict[str, Any] | None = None,
    data_sha256: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    """The export's metadata (so `read_onnx_metadata` and every backend read it as usual) with precision int8, plus
    what made this graph: the calibration set's hash, the method, the layers left in floating point and the tensors
    through which a conv reads the image centred.

    `method` and `extra` let quantization-aware training say what it did (its steps, learning rate, data) in the
    same keys; `data_sha256` names the data the scales came from when that is not the calibration set alone."""
    del model.metadata_props[:]
    method = method or options.method_dict()
    quant = {
        "method": method,
        "calibration": {k: v for k, v in calib.to_dict().items() if k not in ("files", "skipped")},
        "float_layers": list(float_layers),
        "y_drop_db": step.y_drop_db,
        "gates": options.gates.to_dict(),
        CENTRED_KEY: centred_inputs(model),
        **(extra or {}),
    }
    props = {
        "srdeploy.format": "srdeploy-onnx/1",
        "spec": spec.to_json(),
        "arch": spec.name,
        "scale": str(spec.scale),
        "srdeploy_version": __version__,
        "weights_sha256": weights_sha256,
        "precision": "int8",
        "io": "fp32",
        "keep_last_conv_fp32": "false",
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "layout": "NCHW RGB in [0, 1]",
        "calibration_sha256": data_sha256 or calib.sha256,
        "quantization_method": str(method["quantizer"]),
        "float_layers": ",".join(float_layers),
        "quantization": json.dumps(quant, sort_keys=True),
    }
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "srdeploy"
    model.producer_version = __version__
    model.doc_string = f"{spec.name} x{spec.scale} super-resolution, int8 Q/DQ (I/O fp32)"


def deploy_fp32(model: SRNet) -> SRNet:
    """A float32 CPU eval copy of `model` in deploy form (a training-time model collapsed with its proof)."""
    from sr_deploy.export.onnx import _deploy_model

    return _deploy_model(model)


def check_for_tensorrt(
    graph: onnx.ModelProto, spec: ArchSpec, path: str | Path, float_convs: int | None = None
) -> tuple[QdqAudit, dict[str, int]]:
    """The Q/DQ placement audit and the operator set TensorRT takes (and, given, the number of float convs); a
    GateFailedError naming `path` (not written) otherwise. Returns the audit and the op counts."""
    audit = audit_qdq(graph)
    if not audit.ok or (float_convs is not None and audit.float_convs != float_convs):
        problem = audit.problems[0] if audit.problems else f"{audit.float_convs} conv(s) left in floating point"
        raise GateFailedError(f"{path}: not written, Q/DQ placement TensorRT would refuse: {problem}")
    ops = op_counts(graph)
    foreign = sorted(set(ops) - allowed_ops(spec, quantized=True))
    if foreign:
        raise GateFailedError(f"{path}: not written, operators outside the TensorRT-supported set: {foreign}")
    return audit, ops


def save_int8_graph(graph: onnx.ModelProto, path: str | Path) -> tuple[str, int]:
    """onnx.checker's full check, then an atomic write of `path`; its sha256 and size."""
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as e:
        raise GateFailedError(f"{path}: not written, fails onnx.checker: {str(e).splitlines()[0]}") from None
    with atomic_path(path, "--output") as out:
        onnx.save_model(graph, str(out))
        return sha256_file(out), out.stat().st_size


def quantize_model(
    model: SRNet,
    path: str | Path,
    calib: CalibrationSet,
    references: Sequence[ReferenceImage],
    *,
    weights_sha256: str = "",
    options: QuantizeOptions = QuantizeOptions(),
    reference_label: str = "",
    runners: dict[str, RunnerFactory] | None = None,
    progress: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Quantize `model`, search for the fewest float layers that pass the gate, write `path` only if it passes.

    `references` must carry HR images (the gate is a Y-PSNR drop). `runners`: the runtimes the gate holds the graph
    to, by name (default ONNX Runtime, and OpenVINO where it runs int8 here); the first also ranks sensitivities.
    Raises GateFailedError (nothing written) when no graph with at most `options.max_float_layers` float layers passes.
    """
    options.validate()
    check_output_path(path, "--output")
    if not references or any(r.hr is None for r in references):
        raise SRDeployError("the int8 gate needs reference images with HR (a folder laid out like Set5)")
    say = progress or (lambda _msg: None)
    runtimes = dict(runners) if runners is not None else default_runners(options)
    first = next(iter(runtimes))
    deploy = deploy_fp32(model)
    spec = deploy.spec
    border = spec.scale
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srdeploy-quantize-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        original = build_onnx_model(deploy)
        fp32_proto, _ = centre_image_convs(original)
        onnx.save_model(fp32_proto, str(fp32_path))
        layers = conv_layers(fp32_proto)
        if not layers:
            raise SRDeployError(f"{spec.name}: the graph has no Conv to quantize")
        reference = fp32_reference(original.SerializeToString(), references, border)
        say(f"calibrating on {len(calib.crops)} crops of {calib.crop}x{calib.crop} ({options.calibration})")
        cache = calibrate(fp32_path, calib, options, Path(tmp) / "ranges.json")
        seconds["calibrate"] = time.perf_counter() - t0

        def graph(exclude: Sequence[str] = (), only: Sequence[str] = ()) -> onnx.ModelProto:
            return quantize_qdq(fp32_path, cache, options, only=only, exclude=exclude)

        def evaluate(proto: onnx.ModelProto, names: Sequence[str]) -> list[RuntimeScore]:
            data = proto.SerializeToString()
            return [score(runtimes[n](data), n, references, reference, border) for n in names]

        t1 = time.perf_counter()
        say("quantizing every conv")
        full = graph()
        scores = evaluate(full, list(runtimes))
        steps = [SearchStep((), tuple(scores), tuple(gate_results(scores, options.gates)))]
        sensitivities: list[LayerSensitivity] = []
        chosen = full
        if not steps[0].passed and options.max_float_layers > 0:
            for i, layer in enumerate(layers):
                say(f"sensitivity {i + 1}/{len(layers)}: {layer.name}")
                only = evaluate(graph(only=[layer.node]), [first])[0]
                sensitivities.append(LayerSensitivity(layer, only.y_drop_db))
            seconds["sensitivity"] = time.perf_counter() - t1
            order = greedy_order(sensitivities)
            for k in range(1, min(options.max_float_layers, len(order)) + 1):
                left = order[:k]
                say(f"leaving {k} layer(s) in floating point: {', '.join(x.name for x in left)}")
                candidate = graph(exclude=[x.node for x in left])
                scores = evaluate(candidate, list(runtimes))
                steps.append(
                    SearchStep(tuple(x.name for x in left), tuple(scores), tuple(gate_results(scores, options.gates)))
                )
                chosen = candidate
                if steps[-1].passed:
                    break
        seconds["search"] = time.perf_counter() - t1
        final = steps[-1]
        if not final.passed:
            raise GateFailedError(_failure_line(path, steps, options))
        float_layers = list(final.float_layers)
        audit, ops = check_for_tensorrt(chosen, spec, path)
        say("gating the bf16 remainder (OpenVINO)")
        remainder = bf16_remainder_verdict(chosen.SerializeToString(), references, reference, border, options.gates)
        extra = {BF16_REMAINDER_KEY: remainder} if remainder is not None else None
        add_int8_metadata(chosen, spec, weights_sha256, options, calib, float_layers, final, extra=extra)
        digest, size = save_int8_graph(chosen, path)
    seconds["total"] = time.perf_counter() - t0
    return QuantizeReport(
        path=str(path),
        sha256=digest,
        size_bytes=size,
        spec=spec,
        weights_sha256=weights_sha256,
        options=options,
        calibration=calib,
        reference_label=reference_label or f"{len(references)} reference images",
        fp32_mean_y_psnr=reference.mean_y_psnr,
        layers=layers,
        sensitivities=sensitivities,
        steps=steps,
        float_layers=float_layers,
        audit=audit,
        ops=ops,
        seconds=seconds,
    )


def default_runners(options: QuantizeOptions) -> dict[str, RunnerFactory]:
    """ONNX Runtime always; OpenVINO too where it is installed and this CPU has int8 (the gate takes the worse)."""
    runners: dict[str, RunnerFactory] = {"onnxruntime": ort_runner}
    if options.check_openvino:
        from sr_deploy.runtime.ov_backend import int8_capable, openvino_status

        if openvino_status() is None and int8_capable() is None:
            runners["openvino"] = openvino_runner
    return runners


def _failure_line(path: str | Path, steps: Sequence[SearchStep], options: QuantizeOptions) -> str:
    """One line: by how much the best candidate missed, which layers were tried, and what to do next."""
    last = steps[-1]
    failed = "; ".join(g.describe() for g in last.gates if not g.passed)
    tried = ", ".join(last.float_layers) if last.float_layers else "none"
    history = ", ".join(f"{len(s.float_layers)} float: {s.y_drop_db:.3f} dB" for s in steps)
    limit = options.max_float_layers
    return (
        f"{path}: not written, the int8 gate fails with {len(last.float_layers)} layer(s) in floating point "
        f"({tried}): {failed}; Y-PSNR drop by float layers: {history}; PTQ cannot pass with <= {limit} float "
        f"layer(s): allow more with --max-float-layers, or fine-tune with quantization-aware training"
    )


# ---------------------------------------------------------------------------------------------- using the graph
@dataclass(frozen=True)
class Int8Graph:
    """An int8 graph given to a runtime (`--onnx`), checked against the weights it is meant to stand for."""

    path: Path
    calibration_sha256: str
    float_layers: tuple[str, ...]
    y_drop_db: float | None
    method: str = "ptq"
    #: The gate passed on OpenVINO with the float remainder in bf16 too (see bf16_remainder_verdict).
    bf16_remainder_passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "calibration_sha256": self.calibration_sha256,
            "float_layers": list(self.float_layers),
            "y_drop_db": self.y_drop_db,
            "method": self.method,
            "bf16_remainder_passed": self.bf16_remainder_passed,
        }


def check_int8_graph(
    path: str | Path, spec: ArchSpec | None = None, weights_sha256: str = "", flag: str = "--onnx"
) -> Int8Graph:
    """`path` if it is an int8 graph written by `srdeploy quantize` for these weights; else one line naming `flag`.

    The decision (issue 13): a runtime takes the int8 graph as a file the user names, never a cache it fills on its
    own, because quantizing is a minutes-long search whose outcome (which layers stay in floating point) the user
    should see once; the graph's metadata ties it to the weights' sha256, so a stale graph is refused."""
    from sr_deploy.export.onnx import read_onnx_metadata, require_onnx_path

    p = require_onnx_path(path, flag)
    meta = read_onnx_metadata(p)
    model = onnx.load(str(p), load_external_data=False)
    if meta.precision != "int8" or not is_quantized(model):
        raise SRDeployError(
            f"{flag} {p}: is an {meta.precision} graph without QuantizeLinear/DequantizeLinear; --precision int8 "
            "needs the graph `srdeploy quantize` writes"
        )
    if spec is not None and meta.spec != spec.collapsed():
        raise SRDeployError(f"{flag} {p}: is a {meta.spec.name} graph, the weights are {spec.collapsed().name}")
    if weights_sha256 and meta.weights_sha256 and meta.weights_sha256 != weights_sha256:
        raise SRDeployError(
            f"{flag} {p}: was quantized from other weights (sha256 {meta.weights_sha256[:12]}, these are "
            f"{weights_sha256[:12]}); quantize these weights with srdeploy quantize"
        )
    try:
        quant = json.loads(meta.props.get("quantization", "{}"))
    except json.JSONDecodeError:
        quant = {}
    quant = quant if isinstance(quant, dict) else {}
    drop = quant.get("y_drop_db")
    floats = tuple(x for x in meta.props.get("float_layers", "").split(",") if x)
    method = quant.get("method")
    remainder = quant.get(BF16_REMAINDER_KEY)
    return Int8Graph(
        p,
        meta.props.get("calibration_sha256", ""),
        floats,
        float(drop) if drop is not None else None,
        method=str(method.get("method", "ptq")) if isinstance(method, dict) else "ptq",
        bf16_remainder_passed=isinstance(remainder, dict) and remainder.get("passed") is True,
    )
