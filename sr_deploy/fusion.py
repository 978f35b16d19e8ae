"""Structural re-parameterization of any module: fold every maximal linear region into one conv, and prove it exact.

``collapse(model)`` returns a new module and never mutates its input (the timm convention), so the training-time
model stays trainable. ``collapse_with_report`` also says what became what. ``verify_equivalence`` is the proof:
float64 and float32 outputs of both forms on an odd-sized input.

How a region is found and folded, and why this way:

- *Finding* (``sr_deploy.linear_graph``): each module's own forward is traced with torch.fx, its submodules kept as
  single nodes. A submodule whose whole forward is linear (convs, eval-mode BatchNorm, sums, scalar and per-channel
  scaling, identity, constant pads, fixed or computed conv weights, 1x1 chains) is replaced in place by one conv, so
  the deploy form keeps the training form's names and loads into the published layouts. Linear runs inside a
  module's own code (``conv(x) * g + x``) become one conv in a rewritten (fx) module; runs of whole children of an
  ``nn.Sequential`` keep the Sequential (the extra children become ``nn.Identity``). Tracing one module at a time
  works on real modules: a module fx cannot trace (data-dependent control flow) is only looked into, not folded.
- *Folding* is numerical, in float64: the region is run on one impulse per input channel (and per stride phase) on
  a canvas large enough that the probed pixels never see the border, which reads the kernel off exactly, and on
  zeros, which gives the bias. This needs no fold rule per operation, so a fixed Sobel kernel, a low-rank delta
  (``W + B @ A``), a grouped conv in a 1x1 chain or a user's own block fold as the parallel 1x1 does. The kernel size
  comes from the graph (the reach of each conv), never from the weights' values, so layouts do not depend on them.
- *Checking*: each fused conv is compared with its region on a random float64 input: inside the image they must
  agree to ``border_limit`` (else the region is not one convolution: refused, naming it); at the border they agree
  only if the block pads with the bias (FMEN's RRRB, ECBSR). A 1x1 with a bias feeding a zero-padded k x k does not:
  the padded ring sees 0 where the unfolded block sees the bias. That border error is measured and refused, naming
  the layer, unless ``accept_border_error`` is given; then the report carries it.

A region never holds two spatial (k > 1) operations on one path, and regions do not cross module boundaries:
two 3x3 convs in a row would compose into a 5x5, which costs more and changes the published layout (FMEN's ERB ->
ERB). Strided convs fold when the strides compose; dilated ones keep their dilation when they all share it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from sr_deploy.archs.base import SRNet, check_state_dict
from sr_deploy.compare import CheckReport, Comparison, Tolerance, check
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.fileio import db_or_null
from sr_deploy.linear_graph import (
    Analyzer,
    ModuleGraph,
    Region,
    Summary,
    describe,
    is_conv,
    needed_nodes,
)

#: Defaults from DESIGN.md, measured on the real weights: outputs in [0, 1].
TOL_FLOAT64 = 1e-10
TOL_FLOAT32 = 1e-5
#: Largest difference (relative to the region's output magnitude, at least 1) between a region and its fused conv
#: that still counts as exact, on a unit-normal float64 input. Exact folds measure ~1e-15.
BORDER_LIMIT = 1e-10


@dataclass(frozen=True)
class Merge:
    """One fold: which operations became which conv, and how exact it is."""

    module: str  # where the fused conv lives in the collapsed model
    placement: str  # "module" (a unit replaced in place), "chain" (in an nn.Sequential) or "graph" (module rewritten)
    ops: tuple[str, ...]
    kernel: tuple[int, int]
    in_channels: int
    out_channels: int
    groups: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    params_before: int
    params_after: int
    #: Max abs difference, float64, unit-normal input: inside the image (always ~1e-15) and on the border ring.
    interior_error: float
    border_error: float
    #: True when the border error is above the limit and the caller accepted it.
    border_accepted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "placement": self.placement,
            "ops": list(self.ops),
            "kernel": list(self.kernel),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "groups": self.groups,
            "stride": list(self.stride),
            "dilation": list(self.dilation),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "interior_error_f64": self.interior_error,
            "border_error_f64": self.border_error,
            "border_accepted": self.border_accepted,
        }


@dataclass(frozen=True)
class CollapseReport:
    """Every merge of one collapse, the parameter counts, and the linear runs that were left as they are."""

    merges: tuple[Merge, ...]
    params_before: int
    params_after: int
    border_limit: float
    notes: tuple[str, ...] = ()

    @property
    def accepted_border_error(self) -> float:
        """The largest border error accepted (0.0 when every fold is exact)."""
        return max((m.border_error for m in self.merges if m.border_accepted), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "merges": [m.to_dict() for m in self.merges],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "border_limit": self.border_limit,
            "accepted_border_error_f64": self.accepted_border_error,
            "notes": list(self.notes),
        }


def _is_srnet(module: nn.Module) -> bool:
    return isinstance(module, SRNet)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _set_submodule(root: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _check_batchnorm(model: nn.Module, prefix: str = "") -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise SRDeployError(
                f"cannot fold {_join(prefix, name) or type(m).__name__}: BatchNorm is in training mode "
                "(its output depends on the batch; call .eval() first)"
            )


# ---------------------------------------------------------------------------------------------- geometry
@dataclass
class _Geometry:
    """What the graph says about a region: how far it reaches, its stride, and its convs (for hints and groups)."""

    reach: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    dilations: set[tuple[int, int]] = field(default_factory=set)
    groups: set[int] = field(default_factory=set)
    channels: list[int] = field(default_factory=list)
    convs: list[tuple[str, tuple[int, int], tuple[int, int], Any, tuple[int, int]]] = field(default_factory=list)
    even: list[str] = field(default_factory=list)
    pads: bool = False


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(v)
    return (int(t[0]), int(t[-1]))


def _conv_args(node: fx.Node) -> dict[str, Any]:
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    defaults: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    return defaults | dict(zip(names, node.args, strict=False)) | dict(node.kwargs)


def _geometry(analyzer: Analyzer, mg: ModuleGraph, region: Region, prefix: str, geo: _Geometry) -> None:
    """Fill `geo` for `region` (recursing into unit submodules): reach composes as r_in + s_in * r_op."""
    at: dict[fx.Node, tuple[tuple[int, int], tuple[int, int]]] = {region.input: ((0, 0), (1, 1))}
    members = set(region.members)
    for node in region.members:
        ins = [at[i] for i in node.all_input_nodes if i in at and (i in members or i is region.input)]
        r_in = (max((r[0] for r, _ in ins), default=0), max((r[1] for r, _ in ins), default=0))
        s_in = ins[0][1] if ins else (1, 1)
        r_op, s_op = (0, 0), (1, 1)
        path = _join(prefix, str(node.target)) if node.op == "call_module" else describe(node)
        if node.op == "call_module":
            sub = mg.module.get_submodule(str(node.target))
            if is_conv(sub):
                assert isinstance(sub, nn.Conv2d)
                k, d, s = _pair(sub.kernel_size), _pair(sub.dilation), _pair(sub.stride)
                r_op, s_op = _record_conv(geo, path, k, s, sub.padding, d, sub.groups)
                geo.channels += [sub.in_channels, sub.out_channels]
            elif isinstance(sub, nn.BatchNorm2d):
                geo.channels.append(sub.num_features)
            elif isinstance(sub, nn.ZeroPad2d):
                geo.pads = True
            else:
                s_sum = analyzer.summary(sub)
                if s_sum.mg is not None and s_sum.region is not None:
                    inner = _Geometry()
                    _geometry(analyzer, s_sum.mg, s_sum.region, path, inner)
                    r_op, s_op = inner.reach, inner.stride
                    geo.dilations |= inner.dilations
                    geo.groups |= inner.groups
                    geo.channels += inner.channels
                    geo.convs += inner.convs
                    geo.even += inner.even
                    geo.pads |= inner.pads
        elif node.op == "call_function" and node.target is torch.conv2d:
            a = _conv_args(node)
            w = mg.constants.get(a["weight"]) if isinstance(a["weight"], fx.Node) else None
            if isinstance(w, torch.Tensor):
                groups = int(a["groups"])
                k = (int(w.shape[-2]), int(w.shape[-1]))
                r_op, s_op = _record_conv(geo, path, k, _pair(a["stride"]), a["padding"], _pair(a["dilation"]), groups)
                geo.channels += [int(w.shape[1]) * groups, int(w.shape[0])]
        elif node.op == "call_function" and node.target is F.pad:
            geo.pads = True
        at[node] = (
            (r_in[0] + s_in[0] * r_op[0], r_in[1] + s_in[1] * r_op[1]),
            (s_in[0] * s_op[0], s_in[1] * s_op[1]),
        )
    geo.reach, geo.stride = at[region.output]


def _record_conv(
    geo: _Geometry, path: str, k: tuple[int, int], s: tuple[int, int], padding: Any, d: tuple[int, int], groups: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    geo.convs.append((path, k, s, padding, d))
    geo.groups.add(groups)
    if k[0] % 2 == 0 or k[1] % 2 == 0:
        geo.even.append(f"{path}: kernel {k} must be odd (an even kernel has no centre to align branches on)")
    if k[0] > 1 or k[1] > 1:
        geo.dilations.add(d)
    return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2), s


def _hints(geo: _Geometry) -> str:
    """Why branches may not line up: differing strides, paddings that are not centred."""
    out: list[str] = []
    strides = {s for _, _, s, _, _ in geo.convs}
    if len(strides) > 1:
        out.append("stride differs: " + ", ".join(f"{p} {s}" for p, _, s, _, _ in geo.convs))
    if not geo.pads:
        for p, k, _, padding, d in geo.convs:
            centred = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
            if not isinstance(padding, str) and _pair(padding) != centred:
                out.append(f"{p}: padding {_pair(padding)} is not the centred zero padding {centred}")
    return ("; " + "; ".join(out)) if out else ""


# ---------------------------------------------------------------------------------------------- folding
class _NodeError(Exception):
    def __init__(self, node: fx.Node, error: Exception) -> None:
        super().__init__(str(error))
        self.node = node
        self.error = error


class _Interpreter(fx.Interpreter):
    """Runs a region node by node so a failure names the operation that failed."""

    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except _NodeError:
            raise
        except Exception as e:  # whatever the op raised (shape mismatch, dtype, ...): attribute it
            raise _NodeError(n, e) from e


def _region_module(owner: nn.Module, mg: ModuleGraph, region: Region, name: str) -> fx.GraphModule:
    """The region alone, as a module of one input: its members and the constants and shape nodes they read."""
    needed = needed_nodes(region.members, mg.info, region.input)
    for n in needed:
        for i in n.all_input_nodes:
            if i not in needed and i is not region.input:
                raise SRDeployError(
                    f"cannot fold {name}: {describe(n)} reads {describe(i)}, which is outside the linear region"
                )
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {region.input: graph.placeholder("region_input")}
    for n in mg.graph.nodes:
        if n in needed:
            env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[region.output])
    return fx.GraphModule(owner, graph)


def _ops(analyzer: Analyzer, mg: ModuleGraph, region: Region, prefix: str) -> list[str]:
    """Each operation of the region (recursing into units), as a person reads it."""
    out: list[str] = []
    for node in region.members:
        if node.op == "call_module":
            path = _join(prefix, str(node.target))
            sub = mg.module.get_submodule(str(node.target))
            s = analyzer.summary(sub)
            if is_conv(sub):
                assert isinstance(sub, nn.Conv2d)
                k = sub.kernel_size
                bias = "" if sub.bias is not None else ", no bias"
                grp = f", groups {sub.groups}" if sub.groups > 1 else ""
                out.append(f"{path} (conv {k[0]}x{k[1]} {sub.in_channels}->{sub.out_channels}{grp}{bias})")
            elif s.mg is not None and s.region is not None:
                out += _ops(analyzer, s.mg, s.region, path)
            else:
                out.append(f"{path} ({type(sub).__name__})")
        elif node.op == "call_function" and node.target is torch.conv2d:
            w = mg.constants.get(_conv_args(node)["weight"])
            size = f" {w.shape[-2]}x{w.shape[-1]}" if isinstance(w, torch.Tensor) else ""
            out.append(f"{_join(prefix, 'conv2d')}{size} (weight computed in forward)")
        elif node.op in ("call_function", "call_method"):
            out.append(_join(prefix, describe(node)))
    return out


def _region_params(owner: nn.Module, mg: ModuleGraph, region: Region) -> int:
    seen: dict[int, int] = {}
    for n in needed_nodes(region.members, mg.info, region.input):
        if n.op == "call_module":
            for p in owner.get_submodule(str(n.target)).parameters():
                seen[id(p)] = p.numel()
        elif n.op == "get_attr":
            v = mg.constants.get(n)
            if isinstance(v, nn.Parameter):
                seen[id(v)] = v.numel()
    return sum(seen.values())


def _first_param(module: nn.Module) -> torch.Tensor | None:
    return next((p for p in module.parameters() if p.is_floating_point()), None)


def _run_named(sub: fx.GraphModule, x: torch.Tensor, name: str, prefix: str, geo: _Geometry) -> torch.Tensor:
    try:
        with torch.no_grad():
            out = _Interpreter(sub).run(x)
    except _NodeError as e:
        node = e.node
        args = ", ".join(describe(a, prefix) for a in node.all_input_nodes if a.op != "get_attr")
        what = f"{describe(node, prefix)}({args})" if node.op != "placeholder" else "the input"
        msg = str(e.error).splitlines()[0] if str(e.error) else type(e.error).__name__
        raise SRDeployError(
            f"cannot fold {name}: {what} fails on a {tuple(x.shape)} input: {msg}{_hints(geo)}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise SRDeployError(f"cannot fold {name}: it does not return one tensor")
    return out


def _fold(
    analyzer: Analyzer,
    owner: nn.Module,
    mg: ModuleGraph,
    region: Region,
    name: str,
    prefix: str,
    *,
    accept_border_error: bool,
    border_limit: float,
) -> tuple[nn.Conv2d, Merge]:
    """One region as one conv, read off by probing in float64, checked inside and on the border."""
    geo = _Geometry()
    _geometry(analyzer, mg, region, prefix, geo)
    if geo.even:
        raise SRDeployError(f"cannot fold {name}: {geo.even[0]}")
    sub = _region_module(owner, mg, region, name)
    like = _first_param(sub)
    sub64 = copy.deepcopy(sub).to(device="cpu", dtype=torch.float64).eval()
    (rh, rw), (sh, sw) = geo.reach, geo.stride

    # Small (float64 convs have no fast CPU path) but with an interior and a border ring on every side.
    size = (2 * rh + 3 * sh + 4, 2 * rw + 3 * sw + 2)
    # Input channels: try what the convs say, first consumers first; a wrong guess fails at once on zeros. The
    # zero response inside the image is the bias.
    candidates = list(dict.fromkeys(geo.channels)) or [1]
    first_error: SRDeployError | None = None
    c_in = 0
    zero = torch.zeros(0)
    for c in candidates:
        try:
            zero = _run_named(sub64, torch.zeros(1, c, *size, dtype=torch.float64), name, prefix, geo)
        except SRDeployError as e:
            first_error = first_error or e
            continue
        c_in = c
        break
    if c_in == 0:
        assert first_error is not None
        raise first_error
    if zero.ndim != 4:
        raise SRDeployError(f"cannot fold {name}: it returns a {zero.ndim}-D tensor, not an image")
    bias = zero[0, :, -(-rh // sh), -(-rw // sw)].clone()  # the first output whose receptive field is inside

    weight = _probe(sub64, c_in, (rh, rw), (sh, sw), bias)
    c_out = weight.shape[0]
    dil = (1, 1)
    if geo.stride == (1, 1) and len(geo.dilations) == 1:
        d = next(iter(geo.dilations))
        if d != (1, 1) and rh % d[0] == 0 and rw % d[1] == 0:
            dil = d
            weight = weight[:, :, :: d[0], :: d[1]]
    groups = _groups(weight, geo.groups)
    if groups > 1:
        per_in = c_in // groups
        per_out = c_out // groups
        weight = torch.cat(
            [weight[g * per_out : (g + 1) * per_out, g * per_in : (g + 1) * per_in] for g in range(groups)]
        )
    padding = (rh, rw)
    kernel = (weight.shape[-2], weight.shape[-1])

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, c_in, *size, generator=gen, dtype=torch.float64)
    ref = _run_named(sub64, x, name, prefix, geo)
    with torch.no_grad():
        got = F.conv2d(x, weight, bias, stride=(sh, sw), padding=padding, dilation=dil, groups=groups)
    if ref.shape != got.shape:
        raise SRDeployError(
            f"cannot fold {name}: it maps a {tuple(x.shape)} input to {tuple(ref.shape)}, but one "
            f"{kernel[0]}x{kernel[1]} conv with stride {geo.stride} gives {tuple(got.shape)}{_hints(geo)}"
        )
    inside = _interior(ref.shape[-2:], size, (rh, rw), (sh, sw))
    within = Comparison().add(ref[..., inside].numpy(), got[..., inside].numpy())
    ring = Comparison().add(ref[..., ~inside].numpy(), got[..., ~inside].numpy())
    if within.nonfinite or ring.nonfinite:
        raise SRDeployError(f"cannot fold {name}: it gives NaN/Inf on a unit-normal input (float64)")
    interior, border = within.max_abs, ring.max_abs
    scale = max(1.0, float(ref.abs().max()))
    if interior > border_limit * scale:
        raise SRDeployError(
            f"cannot fold {name}: it is not one convolution (its output differs from the probed "
            f"{kernel[0]}x{kernel[1]} conv by {interior:.3g} inside the image, float64){_hints(geo)}"
        )
    accepted = border > border_limit * scale
    if accepted and not accept_border_error:
        raise SRDeployError(
            f"cannot fold {name} exactly: border error {border:.3g} (max abs, float64, unit-normal input): a bias "
            "reaches a zero-padded conv, so the padded ring sees 0 where the unfolded block sees the bias; pad with "
            "the bias (as FMEN's RRRB does) or pass --accept-border-error to accept it"
        )
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")
    conv = nn.Conv2d(
        c_in,
        c_out,
        kernel,
        stride=(sh, sw),
        padding=padding,
        dilation=dil,
        groups=groups,
        bias=True,
        device=device,
        dtype=dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        assert conv.bias is not None
        conv.bias.copy_(bias)
    merge = Merge(
        module=name,
        placement="",
        ops=tuple(_ops(analyzer, mg, region, prefix)),
        kernel=(int(kernel[0]), int(kernel[1])),
        in_channels=c_in,
        out_channels=c_out,
        groups=groups,
        stride=(sh, sw),
        dilation=dil,
        params_before=_region_params(owner, mg, region),
        params_after=sum(p.numel() for p in conv.parameters()),
        interior_error=interior,
        border_error=border,
        border_accepted=accepted,
    )
    return conv.eval(), merge


def _probe(
    fn: nn.Module, c_in: int, reach: tuple[int, int], stride: tuple[int, int], bias: torch.Tensor
) -> torch.Tensor:
    """The dense kernel of a conv-like affine map with `bias`, from impulses far from the border and each other.

    A conv with padding R and stride s computes out[p] = sum_d W[d] in[s p + d - R] + b, so an impulse at q shows
    W[q - s p + R] at every output p with q + R - d divisible by s. One impulse per input channel and per stride
    phase, each in its own cell of a grid (cells 2R + 1 apart, so no output sees two), on one image: a single
    batch-1 run (a batch of impulse images is ~50x slower on the CPU). Outputs read are >= 2R from the border.
    """
    (rh, rw), (sh, sw) = reach, stride
    impulses = [(c, th, tw) for c in range(c_in) for th in range(sh) for tw in range(sw)]
    cols = math.ceil(math.sqrt(len(impulses)))
    rows = math.ceil(len(impulses) / cols)
    lh, lw = sh * math.ceil((2 * rh + 1) / sh), sw * math.ceil((2 * rw + 1) / sw)  # cell size, a stride multiple
    mh, mw = sh * math.ceil(2 * rh / sh), sw * math.ceil(2 * rw / sw)  # margin >= 2R, a stride multiple
    nh, nw = 2 * mh + rows * lh + sh, 2 * mw + cols * lw + sw
    x = torch.zeros(1, c_in, nh, nw, dtype=torch.float64)
    where = []
    for i, (c, th, tw) in enumerate(impulses):
        qh, qw = mh + (i // cols) * lh + th, mw + (i % cols) * lw + tw
        x[0, c, qh, qw] = 1.0
        where.append((c, qh, qw))
    with torch.no_grad():
        y = fn(x)[0] - bias.view(-1, 1, 1)
    weight = torch.zeros(y.shape[0], c_in, 2 * rh + 1, 2 * rw + 1, dtype=torch.float64)
    for c, qh, qw in where:
        for dh in range(2 * rh + 1):
            if (qh + rh - dh) % sh:
                continue
            oh = (qh + rh - dh) // sh
            for dw in range(2 * rw + 1):
                if (qw + rw - dw) % sw == 0:
                    weight[:, c, dh, dw] = y[:, oh, (qw + rw - dw) // sw]
    return weight


def _interior(
    out_hw: torch.Size, in_hw: tuple[int, int], reach: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Output pixels whose whole receptive field lies inside the input."""
    masks = []
    for n_out, n_in, r, s in zip(out_hw, in_hw, reach, stride, strict=True):
        p = torch.arange(n_out)
        masks.append((s * p - r >= 0) & (s * p + r <= n_in - 1))
    return masks[0][:, None] & masks[1][None, :]


def _groups(weight: torch.Tensor, candidates: set[int]) -> int:
    """The largest group count among the region's convs for which the fused kernel is exactly block-diagonal."""
    c_out, c_in = weight.shape[0], weight.shape[1]
    for g in sorted(candidates | {1}, reverse=True):
        if g == 1:
            return 1
        if c_in % g or c_out % g:
            continue
        mask = torch.ones(c_out, c_in, dtype=torch.bool)
        for j in range(g):
            mask[j * (c_out // g) : (j + 1) * (c_out // g), j * (c_in // g) : (j + 1) * (c_in // g)] = False
        if not bool(weight[mask].any()):
            return g
    return 1


# ---------------------------------------------------------------------------------------------- placing the folds
class _Collapser:
    """Walks the module tree once: units are replaced in place, linear runs inside a module are rewritten.

    In `architecture` mode (an SRNet) only units are replaced: the deploy class runs the same code around each of
    them, so a conv at the unit's path computes what the unit did. A linear run in a module's own code (RFDN's
    ``c1_r(x) + x``) is the architecture's deploy layout, not a training block: folding it would leave the deploy
    class adding ``x`` a second time, so it stays.
    """

    def __init__(self, *, accept_border_error: bool, border_limit: float, architecture: bool = False) -> None:
        self.analyzer = Analyzer(keep_own_ops=_is_srnet)
        self.architecture = architecture
        self.accept = accept_border_error
        self.limit = border_limit
        self.merges: list[Merge] = []
        self.notes: list[str] = []

    def fold(
        self, owner: nn.Module, mg: ModuleGraph, region: Region, name: str, prefix: str, placement: str
    ) -> nn.Conv2d:
        conv, merge = _fold(
            self.analyzer, owner, mg, region, name, prefix, accept_border_error=self.accept, border_limit=self.limit
        )
        self.merges.append(replace(merge, placement=placement))
        return conv

    def visit(self, module: nn.Module, path: str) -> nn.Module | None:
        """Fold inside `module`; return what replaces `module` itself (a conv, a rewritten module) or None."""
        s: Summary = self.analyzer.summary(module)
        if s.foldable:
            if s.wrapper_of is not None:
                child = module.get_submodule(s.wrapper_of)
                rep = self.visit(child, _join(path, s.wrapper_of))
                if rep is not None:
                    _set_submodule(module, s.wrapper_of, rep)
                return None
            if s.mg is None or s.region is None or not s.conv or not _worth_folding(s.mg, s.region):
                return None  # a torch primitive, nothing with a conv in it (a lone BatchNorm stays), or one conv
            return self.fold(module, s.mg, s.region, path or "(model)", path, "module")
        mg = s.mg
        if mg is None:
            self._visit_children(module, path)
            return None
        rewrite: list[Region] = []
        for region in mg.regions:
            # One node is a unit folded by the recursion into it (or a lone conv), unless its weight is computed here.
            single = len(region.members) == 1 and region.members[0].op == "call_module"
            if self.architecture or single or not region.conv or not _worth_folding(mg, region):
                continue
            if self.analyzer.keep_own_ops(module):
                self.notes.append(
                    f"left {', '.join(describe(n, path) for n in region.members)} as they are: a linear run in "
                    f"{type(module).__name__}'s own forward (the architecture's layout); move them into a submodule"
                )
                continue
            chain = _sequential_chain(module, mg, region)
            if chain is not None:
                main = _main_target(self.analyzer, mg, region) or chain[0]
                conv = self.fold(module, mg, region, _join(path, main), path, "chain")
                for t in chain:
                    _set_submodule(module, t, conv if t == main else nn.Identity())
                continue
            rewrite.append(region)
        target = self._rewrite(module, mg, rewrite, path) if rewrite else module
        self._visit_children(target, path)
        return target if rewrite else None

    def _visit_children(self, module: nn.Module, path: str) -> None:
        for name, child in list(module.named_children()):
            rep = self.visit(child, _join(path, name))
            if rep is not None:
                setattr(module, name, rep)

    def _rewrite(self, module: nn.Module, mg: ModuleGraph, regions: list[Region], path: str) -> nn.Module:
        """`module` as an fx module whose linear runs are one conv each; every other submodule is kept as it is."""
        graph = mg.graph
        calls: dict[str, int] = {}
        for n in graph.nodes:
            if n.op == "call_module":
                calls[str(n.target)] = calls.get(str(n.target), 0) + 1
        plans: list[tuple[Region, str, nn.Conv2d]] = []
        taken: set[str] = set()
        for i, region in enumerate(regions):
            main = _main_target(self.analyzer, mg, region)
            if main is None or calls.get(main, 0) != 1 or main in taken:
                main = f"fused{i}"
                while hasattr(module, main):
                    main += "_"
            taken.add(main)
            plans.append((region, main, self.fold(module, mg, region, _join(path, main), path, "graph")))
        order = {n: i for i, n in enumerate(graph.nodes)}
        for region, main, conv in plans:
            needed = needed_nodes(region.members, mg.info, region.input)
            with graph.inserting_before(region.output):
                new = graph.call_module(main, (region.input,))
            region.output.replace_all_uses_with(new)
            # Members and the constants/shape nodes only they read; a parameter also used elsewhere stays.
            for n in sorted(needed, key=order.__getitem__, reverse=True):
                if not n.users:
                    graph.erase_node(n)
                elif n in region.members:
                    raise SRDeployError(f"cannot fold {_join(path, main)}: {describe(n, path)} is also read outside it")
            _set_submodule(module, main, conv)
        gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
        return gm.train(module.training)


def _worth_folding(mg: ModuleGraph, region: Region) -> bool:
    """Two or more operations (an Identity or a clone is none), or a conv whose weight is computed in forward (a
    low-rank delta): a lone plain conv is already folded, so collapsing twice changes nothing."""
    if region.ops >= 2:
        return True
    for node in region.members:
        if node.op == "call_function" and node.target is torch.conv2d:
            w = _conv_args(node)["weight"]
            if not (isinstance(w, fx.Node) and w.op == "get_attr"):
                return True
    return False


def _sequential_chain(module: nn.Module, mg: ModuleGraph, region: Region) -> list[str] | None:
    """The region's children when it is a run of whole consecutive children of a plain nn.Sequential."""
    if type(module) is not nn.Sequential or any(n.op != "call_module" for n in region.members):
        return None
    names = list(module._modules)
    targets = [str(n.target) for n in region.members]
    if any(t not in names for t in targets) or len(set(targets)) != len(targets):
        return None
    idx = [names.index(t) for t in targets]
    return targets if idx == list(range(idx[0], idx[0] + len(idx))) else None


def _main_target(analyzer: Analyzer, mg: ModuleGraph, region: Region) -> str | None:
    """The child that names the fused conv: the first spatial conv (or unit), else the first conv."""
    best: tuple[int, str] | None = None
    for n in region.members:
        if n.op != "call_module":
            continue
        s = analyzer.summary(mg.module.get_submodule(str(n.target)))
        if not s.conv:
            continue
        rank = 0 if s.spatial else 1
        if best is None or rank < best[0]:
            best = (rank, str(n.target))
    return best[1] if best else None


def collapse_with_report(
    model: nn.Module, *, accept_border_error: bool = False, border_limit: float = BORDER_LIMIT
) -> tuple[nn.Module, CollapseReport]:
    """A new module with every maximal linear region folded into one conv, and what became what.

    `model` is left untouched. Non-linear parts stay as they were. An SRNet folds only its training blocks (units
    replaced in place; a deploy-form SRNet has none and comes back as a copy), comes back with its deploy spec, and
    its state dict is checked against that spec's layout. Refused, naming the layer: a BatchNorm in training mode,
    a linear region that is not one convolution, a border error above `border_limit` without `accept_border_error`.
    """
    _check_batchnorm(model)
    new = copy.deepcopy(model).eval()
    architecture = isinstance(new, SRNet)
    c = _Collapser(accept_border_error=accept_border_error, border_limit=border_limit, architecture=architecture)
    rep = None if isinstance(new, SRNet) and not new.spec.training_form else c.visit(new, "")
    result = rep if rep is not None else new
    if isinstance(result, SRNet):
        from sr_deploy.archs.registry import arch_of

        name = result.spec.name
        result.spec = result.spec.collapsed()
        check_state_dict(arch_of(result.spec), result.spec, result.state_dict(), f"collapsed {name}")
    report = CollapseReport(
        merges=tuple(c.merges),
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in result.parameters()),
        border_limit=border_limit,
        notes=tuple(c.notes),
    )
    return result.eval(), report


def collapse(model: nn.Module, *, accept_border_error: bool = False, border_limit: float = BORDER_LIMIT) -> nn.Module:
    """``collapse_with_report`` without the report: what most callers (bench, info, export) need."""
    return collapse_with_report(model, accept_border_error=accept_border_error, border_limit=border_limit)[0]


def fold_module(
    module: nn.Module, name: str = "module", *, accept_border_error: bool = False, border_limit: float = BORDER_LIMIT
) -> nn.Conv2d:
    """A whole linear module (a ParallelConv, an RRRB, an ECB, a user's block) as one conv; refused, naming the
    operation and the reason, when it is not one."""
    _check_batchnorm(module, name)
    m = copy.deepcopy(module).eval()
    if is_conv(m):
        assert isinstance(m, nn.Conv2d)
        return m
    analyzer = Analyzer()
    s = analyzer.summary(m)
    if not s.foldable or s.mg is None or s.region is None:
        raise SRDeployError(f"cannot fold {name}: {s.reason or 'nothing to fold'}")
    conv, _ = _fold(
        analyzer, m, s.mg, s.region, name, name, accept_border_error=accept_border_error, border_limit=border_limit
    )
    return conv


# ---------------------------------------------------------------------------------------------- the proof
@dataclass(frozen=True)
class EquivalenceReport:
    """How far the deploy-form output is from the training-form output on the same input.

    `f64` and `f32` hold the comparisons (float64 statistics either way) to their max-abs tolerances. With an
    accepted border error, those are of the output pixels at least `border_crop` pixels from the edge, which the
    border cannot reach; `f64_full` / `f32_full` include the border.
    """

    input_shape: tuple[int, ...]
    f64: CheckReport
    f32: CheckReport
    border_crop: int = 0
    f64_full: Comparison | None = None
    f32_full: Comparison | None = None

    @property
    def passed(self) -> bool:
        return self.f64.passed and self.f32.passed

    @property
    def max_abs_f64(self) -> float:
        return self.f64.comparison.max_abs

    @property
    def mean_abs_f64(self) -> float:
        return self.f64.comparison.mean_abs

    @property
    def max_abs_f32(self) -> float:
        return self.f32.comparison.max_abs

    @property
    def mean_abs_f32(self) -> float:
        return self.f32.comparison.mean_abs

    @property
    def psnr_f32_db(self) -> float:
        """PSNR of deploy vs train output in float32, peak 1.0."""
        return self.f32.comparison.psnr_db

    @property
    def tol_f64(self) -> float:
        return _max_abs_bound(self.f64)

    @property
    def tol_f32(self) -> float:
        return _max_abs_bound(self.f32)

    @property
    def max_abs_f64_full(self) -> float:
        return (self.f64_full or self.f64.comparison).max_abs

    @property
    def max_abs_f32_full(self) -> float:
        return (self.f32_full or self.f32.comparison).max_abs

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the proof failed, each reason naming its precision; empty when it passed."""
        return tuple(f"{r.label}: {why}" for r in (self.f64, self.f32) for why in r.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "max_abs_f64": self.max_abs_f64,
            "mean_abs_f64": self.mean_abs_f64,
            "max_abs_f32": self.max_abs_f32,
            "mean_abs_f32": self.mean_abs_f32,
            # An exact fold gives identical float32 outputs and an infinite PSNR, which JSON cannot hold.
            **db_or_null("psnr_f32_db", self.psnr_f32_db, note_key="psnr_f32_note"),
            "tol_f64": self.tol_f64,
            "tol_f32": self.tol_f32,
            "nonfinite_f64": self.f64.comparison.nonfinite,
            "nonfinite_f32": self.f32.comparison.nonfinite,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "border_crop": self.border_crop,
            "max_abs_f64_full": self.max_abs_f64_full,
            "max_abs_f32_full": self.max_abs_f32_full,
        }


def _max_abs_bound(report: CheckReport) -> float:
    assert report.tolerance.max_abs is not None  # the proof always sets it
    return report.tolerance.max_abs


def _run(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    m = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
    with torch.no_grad():
        out: torch.Tensor = m(x.to(dtype))
    return out


def _crop(t: torch.Tensor, crop: int) -> torch.Tensor:
    return t[..., crop : t.shape[-2] - crop, crop : t.shape[-1] - crop] if crop else t


def verify_equivalence(
    train_model: nn.Module,
    deploy_model: nn.Module,
    *,
    shape: tuple[int, int, int, int] = (1, 3, 37, 29),
    seed: int = 0,
    inputs: torch.Tensor | None = None,
    tol_f64: float = TOL_FLOAT64,
    tol_f32: float = TOL_FLOAT32,
    margin: int = 0,
) -> EquivalenceReport:
    """Run both forms on the same input (uniform [0, 1], seeded, odd-sized) in float64 and float32.

    For the float64 proof to reach ~1e-13, `deploy_model` must hold float64 weights (collapse a float64 copy):
    weights folded and then stored in float32 are only float32-exact. The float32 check casts both forms to
    float32, which is exactly what gets saved and deployed. `margin` (input pixels per side) leaves the outputs
    those pixels produce out of the pass/fail: where a border error was accepted, only the interior is exact.
    """
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.rand(shape, generator=gen, dtype=torch.float64)
    x = inputs.double().cpu()
    a64, b64 = _run(train_model, x, torch.float64), _run(deploy_model, x, torch.float64)
    a32, b32 = _run(train_model, x, torch.float32), _run(deploy_model, x, torch.float32)
    crop = margin * a64.shape[-1] // x.shape[-1] if margin else 0
    if crop and min(a64.shape[-2:]) <= 2 * crop:
        raise SRDeployError(f"proof input {tuple(x.shape)} has no interior beyond a {margin}-pixel margin")
    # Comparison works in float64, so the float32 outputs are compared exactly as they came out.
    f64 = Comparison().add(_crop(a64, crop).numpy(), _crop(b64, crop).numpy())
    f32 = Comparison().add(_crop(a32, crop).numpy(), _crop(b32, crop).numpy())
    return EquivalenceReport(
        input_shape=tuple(x.shape),
        f64=check(f64, Tolerance(max_abs=tol_f64), "float64"),
        f32=check(f32, Tolerance(max_abs=tol_f32), "float32"),
        border_crop=crop,
        f64_full=Comparison().add(a64.numpy(), b64.numpy()) if crop else None,
        f32_full=Comparison().add(a32.numpy(), b32.numpy()) if crop else None,
    )


@dataclass(frozen=True)
class ProvenCollapse:
    """A collapsed model with what was folded and the proof that it computes what the training form computes."""

    model: nn.Module
    collapse: CollapseReport
    equivalence: EquivalenceReport


def prove_collapse(
    model: nn.Module,
    *,
    accept_border_error: bool = False,
    border_limit: float = BORDER_LIMIT,
    margin: int | None = None,
    shape: tuple[int, int, int, int] = (1, 3, 37, 29),
    **verify_kwargs: Any,
) -> ProvenCollapse:
    """Collapse a float64 copy and prove it; raise GateFailedError (and return nothing) if the proof fails.

    With an accepted border error the proof input grows by `margin` pixels per side (for an SRNet, its receptive
    radius: how far the border reaches) and the interior must still be exact to the usual tolerances.
    """
    dtype = next(model.parameters()).dtype
    deploy, report = collapse_with_report(
        copy.deepcopy(model).double(), accept_border_error=accept_border_error, border_limit=border_limit
    )
    m = 0
    if report.accepted_border_error > 0:
        if margin is None and isinstance(model, SRNet):
            from sr_deploy.archs.registry import receptive_radius

            margin = receptive_radius(model.spec)
        if margin is None:
            raise SRDeployError(
                "a border error was accepted: give margin (input pixels the border reaches) to prove the rest"
            )
        m = margin
        shape = (shape[0], shape[1], shape[2] + 2 * m, shape[3] + 2 * m)
    proof = verify_equivalence(model, deploy, shape=shape, margin=m, **verify_kwargs)
    if not proof.passed:
        where = f" (beyond a {proof.border_crop}-pixel border)" if proof.border_crop else ""
        raise GateFailedError(f"collapse is not exact{where}: {'; '.join(proof.reasons)}")
    return ProvenCollapse(deploy.to(dtype), report, proof)


def collapse_verified(
    model: nn.Module, *, accept_border_error: bool = False, **verify_kwargs: Any
) -> tuple[nn.Module, EquivalenceReport]:
    """``prove_collapse`` as (model, proof), for callers that need no merge report."""
    proven = prove_collapse(model, accept_border_error=accept_border_error, **verify_kwargs)
    return proven.model, proven.equivalence
