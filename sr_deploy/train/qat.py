"""Quantization-aware training (issue 13): when PTQ cannot pass the int8 gate with at most two layers left in
floating point, fine-tune the weights with the deployed int8 arithmetic simulated, then write the same Q/DQ graph
as `srdeploy quantize` with the scales the fine-tuning learned, held to the same gate.

The simulation mirrors the export's placement exactly (see `sr_deploy.export.quantize`), so what is trained is what
runs:

- each conv's weights: int8, per output channel, symmetric, scale = max|w| / 127 recomputed from the current weights
  every step (what onnxruntime's quantizer computes from the final weights), `torch.fake_quantize_per_channel_affine`;
- each conv's input: int8 per tensor, symmetric, saturating to [-128, 127] like ONNX QuantizeLinear, one scale per
  tensor (convs reading the same tensor share it, as the graph's single Q/DQ pair does); initialised from PTQ's
  calibration (the same ranges, so step 0 is the PTQ graph with every conv int8), then learned with LSQ's gradient
  (`torch._fake_quantize_learnable_per_tensor_affine`) on a log scale with its own learning rate: the scales span
  two orders of magnitude across layers, and Adam's step is absolute;
- biases, residual Adds, Concat, Split and the pixel shuffle stay float.

Both fake-quantize ops pass straight-through gradients (clipped outside the range). Data: without HR images the
model learns from itself: L1 between the fake-quantized student and the frozen fp32 teacher (the weights given) on
random LR crops of a folder (`--calib-dir`); with HR pairs (`--hr-dir` or a config's [data]) the loss is L1 against
HR, as in training. The gate's images are never trained on.

The gate is PTQ's (`Int8Gates`, the worse of ONNX Runtime and OpenVINO) against the fp32 graph of the ORIGINAL
weights: the drop counts from the model the user trained, not from the fine-tuned float weights (whose own fp32
PSNR is reported too). The graph's metadata names the original weights' sha256, so a runtime given those weights
accepts it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional

from sr_deploy.archs.base import SRNet
from sr_deploy.archs.spec import ArchSpec
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.export.onnx import ReferenceImage, build_onnx_model
from sr_deploy.export.quantize import (
    BF16_REMAINDER_KEY,
    IMAGE_SUFFIXES,
    CalibrationSet,
    QdqAudit,
    QuantizeOptions,
    RunnerFactory,
    RuntimeScore,
    SearchStep,
    add_int8_metadata,
    bf16_remainder_verdict,
    calibrate,
    centre_image_convs,
    centred_inputs,
    check_for_tensorrt,
    conv_layers,
    default_runners,
    deploy_fp32,
    fp32_reference,
    gate_results,
    layer_name,
    quantize_qdq,
    save_int8_graph,
    score,
)
from sr_deploy.fileio import check_output_path, sha256_file

#: ONNX QuantizeLinear saturates int8 to [-128, 127]; the activations' simulation must clip where the runtime does.
ACT_QMIN, ACT_QMAX = -128, 127
#: onnxruntime's symmetric int8 weights use [-127, 127]: scale = max|w| / 127.
WEIGHT_QMAX = 127
DEFAULT_STEPS = 300
DEFAULT_LR = 2e-5
#: Log-scale steps of the activation scales: 300 steps can move a scale by up to ~35%, enough to trade clipping
#: against rounding, not enough to wander far from calibration.
DEFAULT_SCALE_LR = 1e-3
DEFAULT_BATCH = 8
#: 48 LR pixels (192 HR): the border, where zero padding stands in for the image, is a small part of a crop, and a
#: step of team26 (batch 6) takes 2-6 s on 2 shared cores; larger crops cost time for little more context.
DEFAULT_CROP = 48
MAX_STEPS = 10**7

Progress = Callable[[int, int, float], None]


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class QatOptions:
    """The fine-tuning (`steps`, `lr`, ...) and, in `quantize`, the calibration that initialises the scales, the
    gate and the runtimes it is held to (as for PTQ). `float_layers`: convs left in floating point, by layer name
    (none by default; at most `quantize.max_float_layers`, the issue's limit)."""

    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    scale_lr: float = DEFAULT_SCALE_LR
    batch_size: int = DEFAULT_BATCH
    crop: int = DEFAULT_CROP
    seed: int = 0
    learn_scales: bool = True
    device: str = "cpu"
    float_layers: tuple[str, ...] = ()
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)

    def validate(self) -> None:
        """One line naming the flag for a bad option, before any work."""
        if not 1 <= self.steps <= MAX_STEPS:
            raise SRDeployError(f"--steps must be in 1..{MAX_STEPS}, got {self.steps}")
        for flag, value in (("--lr", self.lr), ("--scale-lr", self.scale_lr)):
            if not (math.isfinite(value) and 0 < value < 1):
                raise SRDeployError(f"{flag} must be a finite number in (0, 1), got {value:g}")
        if not 1 <= self.batch_size <= 4096:
            raise SRDeployError(f"--batch-size must be in 1..4096, got {self.batch_size}")
        if self.crop < 8:
            raise SRDeployError(f"--crop must be >= 8 LR pixels, got {self.crop}")
        if self.seed < 0:
            raise SRDeployError(f"--seed must be >= 0, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SRDeployError(f"--device {self.device!r}: expected auto, cpu or cuda")
        if len(self.float_layers) > self.quantize.max_float_layers:
            raise SRDeployError(
                f"--float-layer: {len(self.float_layers)} layers, at most {self.quantize.max_float_layers} may stay "
                "in floating point"
            )
        self.quantize.validate()

    def method_dict(self, data: TrainingData) -> dict[str, Any]:
        base = self.quantize.method_dict()
        return {
            **base,
            "quantizer": f"srdeploy quantization-aware training, exported with {base['quantizer']}",
            "method": "qat",
            "steps": self.steps,
            "lr": self.lr,
            "scale_lr": self.scale_lr if self.learn_scales else None,
            "batch_size": self.batch_size,
            "crop": self.crop,
            "seed": self.seed,
            "activation_scales": "learned (LSQ), initialised from calibration"
            if self.learn_scales
            else "fixed from calibration",
            "loss": "L1 against HR" if data.supervised else "L1 against the fp32 teacher (distillation)",
            "data_sha256": data.sha256,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "lr": self.lr,
            "scale_lr": self.scale_lr,
            "batch_size": self.batch_size,
            "crop": self.crop,
            "seed": self.seed,
            "learn_scales": self.learn_scales,
            "device": self.device,
            "float_layers": list(self.float_layers),
            "quantize": self.quantize.to_dict(),
        }


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainingData:
    """Images to crop from: LR alone (distillation) or LR with HR (`hr` not empty). `sha256` names the files."""

    source: str
    files: tuple[str, ...]
    lr: tuple[np.ndarray, ...] = field(repr=False, compare=False)
    hr: tuple[np.ndarray, ...] = field(repr=False, compare=False)
    scale: int
    sha256: str

    @property
    def supervised(self) -> bool:
        return bool(self.hr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "images": len(self.files),
            "supervised": self.supervised,
            "sha256": self.sha256,
        }


def _read_rgb8(path: Path, flag: str) -> np.ndarray:
    from sr_deploy.train.data import read_rgb8

    try:
        return read_rgb8(path)
    except SRDeployError as e:
        raise SRDeployError(f"{flag}: {e}") from None


def load_lr_folder(folder: str | Path, crop: int, scale: int, flag: str = "--calib-dir") -> TrainingData:
    """Every image of `folder` at least `crop` x `crop`, as uint8 RGB (a distillation set). Missing, empty, or
    nothing large enough: one line naming `flag`."""
    root = Path(folder)
    if not root.is_dir():
        raise SRDeployError(f"{flag} {root}: {'is a file, expected' if root.exists() else 'no such'} folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SRDeployError(f"{flag} {root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images: list[np.ndarray] = []
    names: list[str] = []
    digest = hashlib.sha256(b"qat-lr")
    for p in files:
        img = _read_rgb8(p, flag)
        if min(img.shape[:2]) < crop:
            continue
        images.append(img)
        names.append(p.name)
        digest.update(p.name.encode())
        digest.update(bytes.fromhex(sha256_file(p)))
    if not images:
        raise SRDeployError(f"{flag} {root}: no image is at least {crop}x{crop} (--crop)")
    return TrainingData(str(root), tuple(names), tuple(images), (), scale, digest.hexdigest())


def load_hr_pairs(
    hr_dirs: Sequence[str | Path], lr_dirs: Sequence[str | Path], crop: int, scale: int, cache: Path | None = None
) -> TrainingData:
    """HR images with their LR (given, or made with the MATLAB bicubic as `srdeploy train` does), those whose LR is
    at least `crop` x `crop`."""
    from sr_deploy.train.data import find_pairs, select_for_crop

    pairs = select_for_crop(find_pairs(hr_dirs, lr_dirs, scale, cache=cache), crop).pairs
    lrs: list[np.ndarray] = []
    hrs: list[np.ndarray] = []
    names: list[str] = []
    digest = hashlib.sha256(b"qat-hr")
    for pair in pairs:
        lr = _read_rgb8(pair.lr, "--lr-dir")
        hr = _read_rgb8(pair.hr, "--hr-dir")
        h, w = lr.shape[:2]
        if hr.shape[0] < h * scale or hr.shape[1] < w * scale:
            raise SRDeployError(f"--hr-dir {pair.hr}: smaller than {scale} x its LR {pair.lr} ({h}x{w})")
        lrs.append(lr)
        hrs.append(np.ascontiguousarray(hr[: h * scale, : w * scale]))
        names.append(str(pair.hr))
        digest.update(bytes.fromhex(sha256_file(pair.hr)))
        digest.update(bytes.fromhex(sha256_file(pair.lr)))
    source = ", ".join(str(d) for d in hr_dirs)
    return TrainingData(source, tuple(names), tuple(lrs), tuple(hrs), scale, digest.hexdigest())


def sample_batch(
    data: TrainingData, rng: np.random.Generator, batch: int, crop: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`batch` random crops (and their HR when there is HR), each flipped and transposed at random (the 8
    symmetries of a square), as NCHW float32 in [0, 1]."""
    s = data.scale
    lrs: list[np.ndarray] = []
    hrs: list[np.ndarray] = []
    for _ in range(batch):
        i = int(rng.integers(len(data.lr)))
        img = data.lr[i]
        y = int(rng.integers(img.shape[0] - crop + 1))
        x = int(rng.integers(img.shape[1] - crop + 1))
        flips = rng.integers(2, size=3)
        pieces = [img[y : y + crop, x : x + crop]]
        if data.hr:
            pieces.append(data.hr[i][y * s : (y + crop) * s, x * s : (x + crop) * s])
        out = []
        for p in pieces:
            if flips[0]:
                p = p[:, ::-1]
            if flips[1]:
                p = p[::-1]
            if flips[2]:
                p = p.transpose(1, 0, 2)
            out.append(np.ascontiguousarray(p.transpose(2, 0, 1)))
        lrs.append(out[0])
        if data.hr:
            hrs.append(out[1])

    def tensor(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)

    return tensor(lrs), (tensor(hrs) if hrs else None)


# ---------------------------------------------------------------------------------------------- fake quantization
class ActivationFakeQuant(nn.Module):
    """Per-tensor symmetric int8 of a conv input, the scale learned on a log scale (or fixed)."""

    def __init__(self, scale: float, learn: bool) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor([math.log(scale)], dtype=torch.float32), requires_grad=learn)
        self.zero_point: torch.Tensor
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.float32))
        self.learn = learn

    @property
    def scale(self) -> float:
        """The scale in float32, as the graph stores it."""
        return float(torch.exp(self.log_scale.detach()).to(torch.float32).item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.exp(self.log_scale)
        if self.learn and self.training:
            # LSQ's gradient scaling (1/sqrt(N * Qp)) keeps the scale's gradient comparable across tensor sizes.
            grad_factor = 1.0 / math.sqrt(x.numel() * ACT_QMAX)
            zp = self.zero_point
            return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, ACT_QMIN, ACT_QMAX, grad_factor)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, 0, ACT_QMIN, ACT_QMAX)


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel max|w| / 127 (float32; an all-zero channel gets a harmless tiny scale)."""
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
    return (absmax / WEIGHT_QMAX).clamp(min=torch.finfo(torch.float32).tiny).to(torch.float32)


class FakeQuantConv2d(nn.Module):
    """A Conv2d whose input and weights pass through int8 fake quantization exactly as the Q/DQ graph runs it."""

    def __init__(self, conv: nn.Conv2d, act: ActivationFakeQuant, centre: float = 0.0) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise SRDeployError(f"quantization-aware training: a conv pads with {conv.padding_mode!r}, not zeros")
        self.conv = conv
        self.act = act
        #: The graph quantizes this conv's input centred on zero (export.quantize.centre_image_convs).
        self.centre = centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        scales = weight_scales(w)
        zeros = torch.zeros_like(scales, dtype=torch.int32)
        wq = torch.fake_quantize_per_channel_affine(w, scales, zeros, 0, -WEIGHT_QMAX, WEIGHT_QMAX)
        if not self.centre:
            out: torch.Tensor = self.conv._conv_forward(self.act(x), wq, self.conv.bias)
            return out
        # As centre_image_convs's graph computes it: Sub(c) -> Pad(-c) -> Q/DQ -> Conv(no pads), bias + c * sum(W)
        # with the float W (the graph folds the centre into the bias before the weights are quantized).
        c = self.centre
        conv = self.conv
        if isinstance(conv.padding, str):
            raise SRDeployError(f"quantization-aware training: the conv reading the image pads {conv.padding!r}")
        ph, pw = conv.padding
        xq = self.act(functional.pad(x - c, (pw, pw, ph, ph), value=-c))
        bias = c * w.sum(dim=(1, 2, 3)) + (conv.bias if conv.bias is not None else 0.0)
        return functional.conv2d(xq, wq, bias, conv.stride, 0, conv.dilation, conv.groups)


def conv_input_tensors(fp32: onnx.ModelProto) -> dict[str, str]:
    """Each Conv's layer name (after its weights) -> the tensor it reads."""
    return {layer_name(n.input[1]): n.input[0] for n in fp32.graph.node if n.op_type == "Conv"}


def _weight_key(weight: np.ndarray) -> str:
    w = np.ascontiguousarray(weight, dtype=np.float32)
    return hashlib.sha256(str(w.shape).encode() + w.tobytes()).hexdigest()


def _graph_convs(fp32: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Each Conv of the graph by its weights' bytes -> (layer name, input tensor). The weights are how a module
    is found again: the exporter names modules by the path it traced (an output stage built in `forward` gets a
    name of its own), the values are the same."""
    inits = {i.name: i for i in fp32.graph.initializer}
    out: dict[str, tuple[str, str]] = {}
    for node in fp32.graph.node:
        if node.op_type != "Conv":
            continue
        if node.input[1] not in inits:
            raise SRDeployError(f"quantization-aware training: Conv {node.name} has weights that are not a constant")
        key = _weight_key(numpy_helper.to_array(inits[node.input[1]]))
        if key in out and out[key][1] != node.input[0]:
            raise SRDeployError(
                f"quantization-aware training: layers {out[key][0]} and {layer_name(node.input[1])} have identical "
                "weights, so the graph cannot tell them apart"
            )
        out[key] = (layer_name(node.input[1]), node.input[0])
    return out


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@dataclass
class QatModel:
    """The student (`net`, every conv wrapped) and, per graph tensor, the quantizer of that conv input."""

    net: nn.Module
    quantizers: dict[str, ActivationFakeQuant]  # by the ONNX tensor name
    layers: dict[str, str]  # layer name -> ONNX tensor name

    def scales(self) -> dict[str, float]:
        """The activation scales by tensor name (what goes into the graph)."""
        return {t: q.scale for t, q in self.quantizers.items()}


def wrap_for_qat(
    model: SRNet,
    fp32: onnx.ModelProto,
    scales: dict[str, float],
    *,
    learn: bool,
    float_layers: Sequence[str] = (),
) -> QatModel:
    """A copy of `model` (deploy form) with every conv fake-quantized; `fp32` is its exported graph (with the image
    centred as `centre_image_convs` leaves it, when it is), which says what tensor each conv reads (convs reading
    one tensor share one quantizer), and `scales` the initial scale per tensor. A conv of the graph without a module
    of that name, or the reverse, is an error: the simulation would not be what is deployed."""
    net = copy.deepcopy(model).float()
    graph = _graph_convs(fp32)
    # A conv may be reachable under two names (kept in a list and as an attribute): wrap it under all of them.
    aliases: dict[int, list[str]] = {}
    modules: dict[str, nn.Conv2d] = {}
    for name, m in net.named_modules(remove_duplicate=False):
        if isinstance(m, nn.Conv2d):
            aliases.setdefault(id(m), []).append(name)
            modules[_weight_key(m.weight.detach().cpu().numpy())] = m
    odd = [graph[k][0] for k in sorted(set(graph) - set(modules))]
    odd += [aliases[id(modules[k])][0] for k in sorted(set(modules) - set(graph))]
    if odd:
        raise SRDeployError(
            f"{model.spec.name}: convs and graph Conv nodes do not match one to one ({', '.join(odd[:3])}); "
            "quantization-aware training needs each conv to be one Conv node"
        )
    unknown = sorted(set(float_layers) - {layer for layer, _ in graph.values()})
    if unknown:
        names = ", ".join(layer for layer, _ in list(graph.values())[:4])
        raise SRDeployError(f"--float-layer {unknown[0]}: no such conv in {model.spec.name} (e.g. {names})")
    graph = {k: v for k, v in graph.items() if v[0] not in float_layers}
    layers = {layer: tensor for layer, tensor in graph.values()}
    missing = sorted(set(layers.values()) - set(scales))
    if missing:
        raise SRDeployError(f"quantization-aware training: no calibrated range for {', '.join(missing[:3])}")
    quantizers = {t: ActivationFakeQuant(scales[t], learn) for t in sorted(set(layers.values()))}
    centres = centred_inputs(fp32)  # where the graph quantizes the image centred on zero
    for key, (_, tensor) in graph.items():
        wrapped = FakeQuantConv2d(modules[key], quantizers[tensor], centres.get(tensor, 0.0))
        for name in aliases[id(modules[key])]:
            _set_submodule(net, name, wrapped)
    return QatModel(net, quantizers, layers)


def unwrap(qat: QatModel) -> SRNet:
    """A plain copy of the fine-tuned float model: every FakeQuantConv2d back to its Conv2d (same names)."""
    net = copy.deepcopy(qat.net)
    wrapped = [(n, m) for n, m in net.named_modules(remove_duplicate=False) if isinstance(m, FakeQuantConv2d)]
    for name, module in wrapped:
        _set_submodule(net, name, module.conv)
    assert isinstance(net, SRNet)
    return net.eval()


def calibrated_scales(cache_path: Path) -> dict[str, float]:
    """Per tensor the symmetric scale onnxruntime derives from a calibration cache: max(|low|, |high|) / 127."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(cache_path)
    out: dict[str, float] = {}
    for name, td in data.items():
        low, high = (float(np.asarray(v, dtype=np.float64)) for v in td.range_value)
        out[name] = float(np.float32(max(abs(low), abs(high)) / WEIGHT_QMAX))
    return out


def write_scales_cache(scales: dict[str, float], options: QuantizeOptions, cache_path: Path) -> Path:
    """A calibration cache from which onnxruntime's quantizer derives exactly these scales (to float32 rounding;
    `set_activation_scales` then writes them exactly)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    method = CalibrationMethod.Percentile if options.calibration == "percentile" else CalibrationMethod.MinMax
    data = {
        t: TensorData(lowest=np.float32(-s * WEIGHT_QMAX), highest=np.float32(s * WEIGHT_QMAX))
        for t, s in scales.items()
    }
    save_tensors_data(TensorsData(method, data), cache_path)
    return cache_path


def set_activation_scales(model: onnx.ModelProto, scales: dict[str, float]) -> onnx.ModelProto:
    """Write each activation QuantizeLinear's scale (shared with its DequantizeLinear) exactly (in place)."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in scales:
            value = np.asarray(scales[node.input[0]], dtype=np.float32).reshape(
                numpy_helper.to_array(inits[node.input[1]]).shape
            )
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(value, node.input[1]))
    return model


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """The scale of each activation QuantizeLinear of a Q/DQ graph, by the tensor it quantizes."""
    inits = {i.name: i for i in model.graph.initializer}
    return {
        n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


def qat_graph(
    model: SRNet | onnx.ModelProto,
    scales: dict[str, float],
    options: QuantizeOptions,
    float_layers: Sequence[str] = (),
) -> onnx.ModelProto:
    """The Q/DQ graph of `model` (deploy form, or its fp32 graph) with these activation scales, every conv but
    `float_layers` int8: onnxruntime's quantizer places Q/DQ as for PTQ (weights quantized from the model's weights),
    then the scales are set exactly."""
    fp32, _ = centre_image_convs(model if isinstance(model, onnx.ModelProto) else build_onnx_model(model))
    with tempfile.TemporaryDirectory(prefix="srdeploy-qat-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        onnx.save_model(fp32, str(fp32_path))
        cache = write_scales_cache(scales, options, Path(tmp) / "scales.json")
        exclude = [c.node for c in conv_layers(fp32) if c.name in float_layers]
        return set_activation_scales(quantize_qdq(fp32_path, cache, options, exclude=exclude), scales)


# ---------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class FineTuneLog:
    """The loss at the start and end of fine-tuning (mean of the first and last tenth of the steps)."""

    steps: int
    first_loss: float
    last_loss: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
            "seconds": self.seconds,
        }


def fine_tune(
    qat: QatModel,
    teacher: nn.Module,
    data: TrainingData,
    options: QatOptions,
    device: torch.device,
    progress: Progress | None = None,
) -> FineTuneLog:
    """Adam on the weights (and the log scales at `scale_lr`), L1 against HR or the teacher, seeded crops."""
    rng = np.random.default_rng(options.seed)
    student = qat.net.to(device).train()
    teacher = teacher.to(device).eval()
    scale_params = [q.log_scale for q in qat.quantizers.values() if q.log_scale.requires_grad]
    ids = {id(p) for p in scale_params}
    weights = [p for p in student.parameters() if id(p) not in ids and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": weights, "lr": options.lr}]
    if scale_params:
        groups.append({"params": scale_params, "lr": options.scale_lr})
    opt = torch.optim.Adam(groups)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(options.steps):
        lr, hr = sample_batch(data, rng, options.batch_size, options.crop)
        lr = lr.to(device)
        with torch.no_grad():
            target = hr.to(device) if hr is not None else teacher(lr)
        loss = torch.nn.functional.l1_loss(student(lr), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise SRDeployError(f"quantization-aware training diverged at step {step + 1} (loss {value}); lower --lr")
        losses.append(value)
        if progress is not None:
            progress(step + 1, options.steps, value)
    student.to("cpu").eval()
    tenth = max(1, len(losses) // 10)
    return FineTuneLog(
        options.steps,
        float(np.mean(losses[:tenth])),
        float(np.mean(losses[-tenth:])),
        time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------------------- the whole job
@dataclass
class QatReport:
    path: str
    sha256: str
    size_bytes: int
    spec: ArchSpec
    weights_sha256: str
    options: QatOptions
    data: TrainingData
    calibration: CalibrationSet
    reference_label: str
    fp32_mean_y_psnr: float  # the original weights
    finetuned_fp32_mean_y_psnr: float
    ptq: SearchStep  # the same convs int8 with the calibrated scales: where QAT starts
    qat: SearchStep
    log: FineTuneLog
    scales: dict[str, float]
    audit: QdqAudit
    ops: dict[str, int]
    seconds: dict[str, float]
    #: The fine-tuned float weights (deploy form), for whoever wants to keep them; not in the report.
    finetuned: SRNet | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "spec": self.spec.to_dict(),
            "weights_sha256": self.weights_sha256,
            "options": self.options.to_dict(),
            "method": self.options.method_dict(self.data),
            "data": self.data.to_dict(),
            "calibration": self.calibration.to_dict(),
            "reference_images": self.reference_label,
            "fp32_mean_y_psnr": self.fp32_mean_y_psnr,
            "finetuned_fp32_mean_y_psnr": self.finetuned_fp32_mean_y_psnr,
            "ptq": self.ptq.to_dict(),
            "qat": self.qat.to_dict(),
            "float_layers": list(self.qat.float_layers),
            "y_drop_db": self.qat.y_drop_db,
            "gates": [g.to_dict() for g in self.qat.gates],
            "fine_tune": self.log.to_dict(),
            "activation_scales": dict(self.scales),
            "audit": self.audit.to_dict(),
            "ops": dict(self.ops),
            "seconds": dict(self.seconds),
        }


def _failure_line(path: str | Path, ptq: SearchStep, qat: SearchStep) -> str:
    """One line: which gate failed by how much, the drop per runtime, and where PTQ started."""
    failed = "; ".join(g.describe() for g in qat.gates if not g.passed)
    per = ", ".join(f"{s.runtime} {s.y_drop_db:.3f} dB" for s in qat.scores)
    return (
        f"{path}: not written, the int8 gate fails after quantization-aware training with "
        f"{', '.join(qat.float_layers) or 'no layer'} in floating point: "
        f"{failed} (Y-PSNR drop {per}; PTQ with the same calibration {ptq.y_drop_db:.3f} dB); "
        "train longer (--steps) or with more data"
    )


def _step(scores: list[RuntimeScore], options: QatOptions) -> SearchStep:
    return SearchStep(options.float_layers, tuple(scores), tuple(gate_results(scores, options.quantize.gates)))


def qat_quantize(
    model: SRNet,
    path: str | Path,
    data: TrainingData,
    calib: CalibrationSet,
    references: Sequence[ReferenceImage],
    *,
    weights_sha256: str = "",
    options: QatOptions = QatOptions(),
    reference_label: str = "",
    runners: dict[str, RunnerFactory] | None = None,
    say: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> QatReport:
    """Fine-tune `model` with int8 fake quantization, write its Q/DQ graph to `path` only if it passes the gate
    against `model`'s own fp32 graph. `calib` initialises the activation scales (as PTQ calibrates them)."""
    from sr_deploy.train.loop import resolve_device

    options.validate()
    check_output_path(path, "--output")
    if not references or any(r.hr is None for r in references):
        raise SRDeployError("the int8 gate needs reference images with HR (a folder laid out like Set5)")
    note = say or (lambda _msg: None)
    device = resolve_device(options.device)
    qopts = options.quantize
    runtimes = dict(runners) if runners is not None else default_runners(qopts)
    teacher = deploy_fp32(model)
    spec = teacher.spec
    border = spec.scale
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srdeploy-qat-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        original = build_onnx_model(teacher)
        fp32_proto, _ = centre_image_convs(original)
        onnx.save_model(fp32_proto, str(fp32_path))
        reference = fp32_reference(original.SerializeToString(), references, border)
        note(f"calibrating on {len(calib.crops)} crops of {calib.crop}x{calib.crop} ({qopts.calibration})")
        cache = calibrate(fp32_path, calib, qopts, Path(tmp) / "ranges.json")
        start_scales = calibrated_scales(cache)
        qat = wrap_for_qat(
            teacher,
            fp32_proto,
            start_scales,
            learn=options.learn_scales,
            float_layers=options.float_layers,
        )
        note("scoring PTQ of the same layers (where fine-tuning starts)")
        exclude = [c.node for c in conv_layers(fp32_proto) if c.name in options.float_layers]
        ptq_graph = quantize_qdq(fp32_path, cache, qopts, exclude=exclude)
        ptq = _step(
            [score(runtimes[n](ptq_graph.SerializeToString()), n, references, reference, border) for n in runtimes],
            options,
        )
    seconds["calibrate"] = time.perf_counter() - t0
    note(f"fine-tuning {options.steps} steps on {device.type}")
    log = fine_tune(qat, teacher, data, options, device, progress)
    seconds["fine_tune"] = log.seconds
    t1 = time.perf_counter()
    finetuned = unwrap(qat)
    scales = qat.scales()
    finetuned_proto = build_onnx_model(finetuned)
    graph = qat_graph(finetuned_proto, scales, qopts, options.float_layers)
    finetuned_fp32 = fp32_reference(finetuned_proto.SerializeToString(), references, border)
    data_bytes = graph.SerializeToString()
    result = _step([score(runtimes[n](data_bytes), n, references, reference, border) for n in runtimes], options)
    seconds["export_and_gate"] = time.perf_counter() - t1
    if not result.passed:
        raise GateFailedError(_failure_line(path, ptq, result))
    audit, ops = check_for_tensorrt(graph, spec, path, float_convs=len(options.float_layers))
    remainder = bf16_remainder_verdict(graph.SerializeToString(), references, reference, border, qopts.gates)
    extra = {
        **({BF16_REMAINDER_KEY: remainder} if remainder is not None else {}),
        "fine_tune": log.to_dict(),
        "data": data.to_dict(),
        "finetuned_fp32_mean_y_psnr": finetuned_fp32.mean_y_psnr,
        "ptq_y_drop_db": ptq.y_drop_db,
    }
    add_int8_metadata(
        graph,
        spec,
        weights_sha256,
        qopts,
        calib,
        options.float_layers,
        result,
        method=options.method_dict(data),
        data_sha256=hashlib.sha256((calib.sha256 + data.sha256).encode()).hexdigest(),
        extra=json.loads(json.dumps(extra)),
    )
    digest, size = save_int8_graph(graph, path)
    seconds["total"] = time.perf_counter() - t0
    return QatReport(
        path=str(path),
        sha256=digest,
        size_bytes=size,
        spec=spec,
        weights_sha256=weights_sha256,
        options=options,
        data=data,
        calibration=calib,
        reference_label=reference_label or f"{len(references)} reference images",
        fp32_mean_y_psnr=reference.mean_y_psnr,
        finetuned_fp32_mean_y_psnr=finetuned_fp32.mean_y_psnr,
        ptq=ptq,
        qat=result,
        log=log,
        scales=scales,
        audit=audit,
        ops=ops,
        seconds=seconds,
        finetuned=finetuned,
    )
