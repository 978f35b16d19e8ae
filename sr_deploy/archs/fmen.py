"""FMEN, "Fast and Memory-Efficient Network Towards Efficient Image Super-Resolution" (Du et al., NTIRE 2022 ESR,
team NJU_Jet), in its deploy form: every re-parameterized residual-in-residual block (RRRB) already folded into one
3x3 conv, so the network is a plain chain of 3x3 convs, LeakyReLUs and sigmoid gates.

Module names follow the challenge's checkpoint (``head``, ``warmup.{0,1}``, ``basic_blocks.{i}.conv{1,2}.rep_conv``,
``hfabs.{i}.squeeze / convs.{j} / excitate``, ``lr_conv``, ``tail.0``), so published weights load ``strict=True``.
Pixels in [0, 255], no mean shift.

Activation placement was settled against the reference PSNRs (reference_field.json): LeakyReLU(0.1) inside each ERB
between its two convs, after each HFAB's squeeze and once after its whole ERB chain, a sigmoid after excitate, and
nothing else. That reproduces every Set5/Set14 image to < 4e-5 dB; moving any one of those (slope 0.05 or 0.2, ReLU,
no activation after squeeze or after the chain, one after every ERB, a DIV2K mean shift) is off by 2.6 dB or more.

Training form (``fmen-rrrb``, ``block_type="rrrb"``): every ``rep_conv`` is FMEN's RRRB (1x1 expand to 2C, 3x3 on the
expanded features plus their identity, 1x1 squeeze, plus identity; the expand's bias padded into the 3x3's border),
as the authors trained it. ``sr_deploy.fusion.collapse`` folds each into the 3x3 ``rep_conv`` of the deploy layout.

Not FP16-safe as published: the HFAB gate branches run far outside half range before the sigmoid saturates them
(warm-up ERB outputs reach ~1.8e7 on Set5's baby, ~5.6e7 on uniform noise; FP16 tops out at 65504), so a whole-FP16
run overflows to inf and then NaN. FP32 is unaffected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sr_deploy.archs.base import Architecture, SRNet, StateDict, highest_index
from sr_deploy.archs.blocks import RRRB
from sr_deploy.archs.spec import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    NTIRE_MODEL_ZOO,
    ArchSpec,
    KeyLayout,
    PublishedWeights,
    TilingPolicy,
    out_of_range,
    slope_problem,
)
from sr_deploy.errors import SRDeployError

#: ERBs inside one HFAB's gate branch. The paper uses 1 (body) and 2 (warm-up); the cap keeps a spec's total depth
#: (blocks x ERBs) from multiplying two MAX_BLOCKS-sized numbers.
MAX_GATE_ERBS = 16

#: "plain": the deploy form (each rep_conv one 3x3); "rrrb": the training form.
BLOCK_TYPES: tuple[str, ...] = ("plain", "rrrb")


@dataclass(frozen=True)
class FMENSpec(ArchSpec):
    """Deploy-form FMEN: head, warm-up (conv + HFAB), `blocks` x (ERB + HFAB), lr_conv + long skip, tail."""

    ARCH: ClassVar[str] = "fmen"

    blocks: int = 4
    channels: int = 50
    #: Channels inside the body HFABs' gate branch (squeeze output) and how many ERBs it runs.
    mid: int = 16
    erbs: int = 1
    #: The same for the warm-up HFAB, which the published model makes narrower and deeper.
    warmup_mid: int = 12
    warmup_erbs: int = 2
    scale: int = 4
    slope: float = 0.1
    in_channels: int = 3
    out_channels: int = 3
    #: "plain" (deploy) or "rrrb" (training form); a spec written before the field is the deploy form.
    block_type: str = "plain"
    #: rrrb: pad the expand conv's output with its bias (FMEN's choice: an exact fold at the border).
    pad_bias: bool = True

    def problems(self) -> list[str]:
        widths = {name: (1, MAX_CHANNELS) for name in ("channels", "mid", "warmup_mid")}
        depths = {name: (1, MAX_GATE_ERBS) for name in ("erbs", "warmup_erbs")}
        out = out_of_range(self, {"blocks": (1, MAX_BLOCKS), **widths, **depths}) + slope_problem(self.slope)
        if self.block_type not in BLOCK_TYPES:
            out.append(f"block_type must be one of {list(BLOCK_TYPES)}, got {self.block_type!r}")
        return out

    @property
    def training_form(self) -> bool:
        return self.block_type != "plain"

    def collapsed(self) -> FMENSpec:
        return replace(self, block_type="plain", pad_bias=True)

    @property
    def name(self) -> str:
        base = self.collapsed()._deploy_name()
        if self.training_form:
            base += f"-{self.block_type}" + ("" if self.pad_bias else "-zeropad")
        return base

    def _deploy_name(self) -> str:
        if self == FMENSpec():
            return "fmen"
        base = (
            f"fmen-b{self.blocks}-c{self.channels}-m{self.mid}x{self.erbs}"
            f"-w{self.warmup_mid}x{self.warmup_erbs}-x{self.scale}"
        )
        if self.slope != 0.1:
            base += f"-s{self.slope:g}"
        if (self.in_channels, self.out_channels) != (3, 3):
            base += f"-in{self.in_channels}-out{self.out_channels}"
        return base


def _conv3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class FoldedRRRB(nn.Module):
    """An RRRB after re-parameterization: one 3x3 conv; in the training form, the RRRB itself. The wrapper exists
    for the ``rep_conv`` key level, which the collapse keeps (it folds the child of a one-call wrapper)."""

    def __init__(self, channels: int, block_type: str = "plain", pad_bias: bool = True) -> None:
        super().__init__()
        self.rep_conv: nn.Module = (
            RRRB(channels, channels, pad_bias=pad_bias) if block_type == "rrrb" else _conv3(channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.rep_conv(x)
        return out


class ERB(nn.Module):
    """Enhanced residual block (deploy form): conv, LeakyReLU, conv; its residuals live inside the folded convs."""

    def __init__(self, channels: int, slope: float, block_type: str = "plain", pad_bias: bool = True) -> None:
        super().__init__()
        self.conv1 = FoldedRRRB(channels, block_type, pad_bias)
        self.conv2 = FoldedRRRB(channels, block_type, pad_bias)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Functional activations, not modules: the challenge's counter hooks submodules, and the authors' FMEN
        # registers none for its activations, so its published FLOPs (22.28 G) are the convs' MACs alone.
        out: torch.Tensor = self.conv2(F.leaky_relu(self.conv1(x), self.slope))
        return out


class HFAB(nn.Module):
    """High-frequency attention block: x * sigmoid(excitate(act(ERBs(act(squeeze(x)))))), a per-pixel gate."""

    def __init__(
        self, channels: int, mid: int, erbs: int, slope: float, block_type: str = "plain", pad_bias: bool = True
    ) -> None:
        super().__init__()
        self.squeeze = _conv3(channels, mid)
        self.convs = nn.Sequential(*(ERB(mid, slope, block_type, pad_bias) for _ in range(erbs)))
        self.excitate = _conv3(mid, channels)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.leaky_relu(self.squeeze(x), self.slope)
        a = F.leaky_relu(self.convs(a), self.slope)
        out: torch.Tensor = x * torch.sigmoid(self.excitate(a))
        return out


class FMEN(SRNet):
    spec: FMENSpec

    def __init__(self, spec: FMENSpec) -> None:
        super().__init__(spec, FMENArch.input_range)
        c, bt, pb = spec.channels, spec.block_type, spec.pad_bias
        self.head = _conv3(spec.in_channels, c)
        self.warmup = nn.Sequential(_conv3(c, c), HFAB(c, spec.warmup_mid, spec.warmup_erbs, spec.slope, bt, pb))
        self.basic_blocks = nn.ModuleList(ERB(c, spec.slope, bt, pb) for _ in range(spec.blocks))
        self.hfabs = nn.ModuleList(HFAB(c, spec.mid, spec.erbs, spec.slope, bt, pb) for _ in range(spec.blocks))
        self.lr_conv = _conv3(c, c)
        self.tail = nn.Sequential(_conv3(c, spec.out_channels * spec.scale**2), nn.PixelShuffle(spec.scale))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        y = self.warmup(h)
        for erb, hfab in zip(self.basic_blocks, self.hfabs, strict=True):
            y = hfab(erb(y))
        out: torch.Tensor = self.lr_conv(y) + h
        return out

    def output_stage(self) -> nn.Module:
        return self.tail


_PRESET_RE = re.compile(r"^fmen(?:-b(?P<blocks>[1-9]\d*))?(?P<rrrb>-rrrb)?$")


def _weight(sd: StateDict, key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise SRDeployError(f"{source}: FMEN checkpoint is missing {key}")
    w = sd[key]
    if w.ndim != 4:
        raise SRDeployError(f"{source}: {key} should be a conv weight (4-D), got shape {tuple(w.shape)}")
    return w


class FMENArch(Architecture[FMENSpec]):
    id: ClassVar[str] = "fmen"
    title: ClassVar[str] = "FMEN, fast and memory-efficient network (NTIRE 2022 ESR, NJU_Jet), deploy form"
    spec_type = FMENSpec
    input_range: ClassVar[float] = 255.0
    tiling: ClassVar[TilingPolicy] = TilingPolicy(
        exact=True, reason="3x3 convs and pointwise activations only; the HFAB gate is per pixel, not pooled"
    )
    # Beyond the common set, from a dynamo export (opset 18, dynamic batch/height/width): LeakyRelu; Sigmoid and Mul
    # for the HFAB gates; Mul and Div by 255 for the weights' pixel range. No Shape arithmetic: nothing is resized.
    onnx_ops: ClassVar[frozenset[str]] = frozenset({"LeakyRelu", "Sigmoid", "Mul", "Div"})
    fp16_refusal: ClassVar[str | None] = (
        "its HFAB gate branches reach ~1e7 before the sigmoid (FP16 tops out at 65504), so FP16 gives inf/NaN"
    )
    layouts: ClassVar[tuple[KeyLayout, ...]] = (
        KeyLayout(
            "ntire",
            required=(
                "head.weight",
                "warmup.0.weight",
                "warmup.1.squeeze.weight",
                "basic_blocks.0.conv1.rep_conv.weight",
                "hfabs.0.excitate.weight",
                "lr_conv.weight",
                "tail.0.weight",
            ),
            description="the challenge's deploy FMEN: head, warmup.0/1, basic_blocks.<i>.conv1/2.rep_conv, "
            "hfabs.<i>.squeeze/convs.<j>/excitate, lr_conv, tail.0",
        ),
        KeyLayout(
            "rrrb",
            required=(
                "head.weight",
                "warmup.0.weight",
                "warmup.1.squeeze.weight",
                "basic_blocks.0.conv1.rep_conv.expand_conv.weight",
                "hfabs.0.excitate.weight",
                "lr_conv.weight",
                "tail.0.weight",
            ),
            description="FMEN's training form: each rep_conv an RRRB (expand_conv, fea_conv, reduce_conv)",
        ),
    )
    published: ClassVar[tuple[PublishedWeights, ...]] = (
        PublishedWeights(
            "ntire:fmen",
            "team03_fmen.pth",
            "f20cde0828068c5f50d3b64aa82c8a363fe6abc8d536d1a9fd4d09899f019bea",
            "NJU_Jet (team 03), FMEN in deploy form (RRRBs folded into rep_conv), NTIRE 2022 ESR challenge",
            NTIRE_MODEL_ZOO + "team03_fmen.pth",
        ),
    )

    def presets(self) -> dict[str, str]:
        return {
            "fmen": "the published NTIRE 2022 model (4 blocks, 50 channels, x4)",
            "fmen-rrrb": "its training form: every rep_conv an RRRB, collapsing to the published layout",
            "fmen-b<N>[-rrrb]": "any number of ERB + HFAB blocks, otherwise the published model",
        }

    def parse_preset(self, name: str) -> FMENSpec | None:
        m = _PRESET_RE.match(name)
        if not m:
            return None
        block_type = "rrrb" if m.group("rrrb") else "plain"
        if m.group("blocks") is None:
            return FMENSpec(block_type=block_type)
        # Clamped so that a huge number is the spec's own bounds error, not an int the size of the input.
        return FMENSpec(blocks=min(int(m.group("blocks")), MAX_BLOCKS + 1), block_type=block_type)

    def smoke_spec(self) -> FMENSpec:
        return FMENSpec(blocks=1, channels=8, mid=4, erbs=1, warmup_mid=4, warmup_erbs=1)

    def training_spec(self, spec: FMENSpec) -> FMENSpec:
        return spec if spec.training_form else replace(spec, block_type="rrrb")

    def build(self, spec: FMENSpec) -> FMEN:
        return FMEN(spec)

    def receptive_radius(self, spec: FMENSpec) -> int:
        # Every conv is a 3x3 (1 px each) and every one sits on the single serial path: the only side paths are
        # identity skips (the HFAB's x in x * gate, the long skip from head). So the radius is the conv count:
        # head 1, warmup conv 1, per HFAB squeeze + 2 per ERB + excitate, per body ERB 2, lr_conv 1, tail 1.
        warmup = 1 + (2 + 2 * spec.warmup_erbs)
        body = spec.blocks * (2 + 2 + 2 * spec.erbs)
        return 1 + warmup + body + 1 + 1

    def uncollapse(self, model: SRNet) -> FMEN:
        """The deploy weights as RRRBs computing exactly the same 3x3: expand = [I; 0], squeeze = [I, 0], and the
        inner 3x3 = W - 2 I on the first C channels (the inner and the outer identity add x back twice)."""
        spec = model.spec
        assert isinstance(spec, FMENSpec)
        if spec.training_form:
            raise SRDeployError(f"uncollapse expects a deploy model, got {spec.name}")
        like = next(model.parameters())
        # The model's dtype too: in float64 the RRRB form is exact to ~1e-15 (W - 2I rounds in float32).
        train = FMEN(replace(spec, block_type="rrrb")).to(device=like.device, dtype=like.dtype)
        plain = model.state_dict()
        new: StateDict = {}
        for key, tensor in train.state_dict().items():
            if ".rep_conv." not in key:
                new[key] = plain[key].clone()
                continue
            stem, _, rest = key.partition(".rep_conv.")
            w, b = plain[f"{stem}.rep_conv.weight"], plain[f"{stem}.rep_conv.bias"]
            c = w.shape[0]
            t = torch.zeros_like(tensor)
            eye = torch.eye(c, dtype=t.dtype, device=t.device)
            if rest in ("expand_conv.weight", "reduce_conv.weight"):
                t[:c, :c] = eye.view(c, c, 1, 1)
            elif rest == "fea_conv.weight":
                t[:c, :c] = w
                t[:c, :c, 1, 1] -= 2 * eye
            elif rest == "fea_conv.bias":
                t[:c] = b
            new[key] = t
        train.load_state_dict(new, strict=True)
        return train

    def infer_spec(self, sd: StateDict, source: str) -> FMENSpec:
        keys = set(sd)
        blocks = highest_index(keys, r"^basic_blocks\.(\d+)\.") + 1
        hfabs = highest_index(keys, r"^hfabs\.(\d+)\.") + 1
        if blocks < 1:
            raise SRDeployError(f"{source}: no FMEN blocks found (no basic_blocks.<i> keys)")
        if hfabs != blocks:
            raise SRDeployError(f"{source}: {blocks} basic_blocks but {hfabs} hfabs; FMEN pairs each block with one")
        head = _weight(sd, "head.weight", source)
        channels, in_channels = int(head.shape[0]), int(head.shape[1])
        warmup_mid = int(_weight(sd, "warmup.1.squeeze.weight", source).shape[0])
        mid = int(_weight(sd, "hfabs.0.squeeze.weight", source).shape[0])
        warmup_erbs = highest_index(keys, r"^warmup\.1\.convs\.(\d+)\.") + 1
        erbs = highest_index(keys, r"^hfabs\.0\.convs\.(\d+)\.") + 1
        up = int(_weight(sd, "tail.0.weight", source).shape[0])
        scale = round((up / max(in_channels, 1)) ** 0.5)
        if scale < 1 or scale * scale * in_channels != up:
            raise SRDeployError(f"{source}: tail.0 has {up} output channels, not {in_channels} x scale^2")
        block_type = "rrrb" if any(".rep_conv.expand_conv." in k for k in keys) else "plain"
        try:
            return FMENSpec(
                blocks=blocks,
                channels=channels,
                mid=mid,
                erbs=erbs,
                warmup_mid=warmup_mid,
                warmup_erbs=warmup_erbs,
                scale=scale,
                in_channels=in_channels,
                out_channels=in_channels,
                block_type=block_type,
            )
        except SRDeployError as e:
            raise SRDeployError(f"{source}: {e}") from None


ARCH = FMENArch()
