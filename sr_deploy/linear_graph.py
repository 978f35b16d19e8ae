"""Where the linear parts of a module are: torch.fx graphs of each module's own forward, and their linear regions.

``sr_deploy.fusion.collapse`` folds what this module finds. Why it works module by module:

- Each module is traced on its own with every registered submodule as one node (a *shallow* trace). A submodule
  whose whole forward is linear, with at most one spatial (k x k, k > 1) operation on any path, is a *unit*: it folds
  into one conv and keeps its place in the module tree, so the deploy form has the training form's names
  (``model.1.sub.0.conv1.0``, ``basic_blocks.0.conv1.rep_conv``), which is what makes a collapsed checkpoint load
  ``strict=True`` into the published layouts. A whole-model trace would flatten those names.
- Inside a module that is not linear, the linear nodes (its own ops and its unit submodules) are grouped into maximal
  regions with one input tensor, one output tensor and nothing used outside; each becomes one conv.
- A region never holds two spatial operations on one path: two 3x3 convs in a row (FMEN's ERB -> ERB, a 3x3 feeding
  a 3x3 in another block) would compose into a 5x5 that costs more (25 vs 18 taps per channel pair) and changes the
  layout. This is the structural re-parameterization rule: branches and 1x1 chains fold, the spatial kernel stays.
- What a region computes is found numerically afterwards (``sr_deploy.fusion``), so the classification here only
  has to be right about *which* operations are affine in the input, not about their arithmetic.

Nodes are of four kinds: ``input`` (a placeholder), ``const`` (no input dependence: parameters and functions of them,
evaluated here), ``shape`` (depends on the input only through its shape, e.g. ``torch.zeros_like(x)``: a border
mask), ``linear`` (affine in the input) and ``other`` (everything else, a boundary).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

Kind = Literal["input", "const", "shape", "linear", "other"]

_ADD: frozenset[Callable[..., Any]] = frozenset({operator.add, operator.sub, torch.add, torch.sub})
_MUL: frozenset[Callable[..., Any]] = frozenset({operator.mul, torch.mul})
_DIV: frozenset[Callable[..., Any]] = frozenset({operator.truediv, torch.div})
_UNARY: frozenset[Callable[..., Any]] = frozenset({operator.neg, operator.pos, torch.neg})
_CAT: frozenset[Callable[..., Any]] = frozenset({torch.cat, torch.concat})
_SHAPE_FNS: frozenset[Callable[..., Any]] = frozenset(
    {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}
)
_SHAPE_METHODS = frozenset({"size", "new_zeros", "new_ones", "new_full", "new_empty", "dim"})
_METHOD_ADD = frozenset({"add", "sub"})
_METHOD_IDENTITY = frozenset({"neg", "clone", "contiguous"})


class ShallowTracer(fx.Tracer):
    """Every registered submodule is one ``call_module`` node; a module built inside ``forward`` (IMDN's
    ``upsampler()`` returns a fresh ``nn.Sequential``) is traced through, since it has no name to keep."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            self.path_of_module(m)
        except NameError:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def shallow_trace(module: nn.Module) -> fx.Graph | str:
    """The graph of `module`'s own forward, or why it cannot be traced (data-dependent control flow, ...)."""
    try:
        return ShallowTracer().trace(module)
    except Exception as e:  # fx raises many types (TraceError, TypeError, NameError, RuntimeError)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _exact_type(module: nn.Module, cls: type[nn.Module]) -> bool:
    """`module` is a `cls` whose forward is torch's own (a subclass with its own forward is a custom module)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def is_conv(module: nn.Module) -> bool:
    return _exact_type(module, nn.Conv2d)


def _is_bn(module: nn.Module) -> bool:
    return _exact_type(module, nn.BatchNorm2d)


def _per_channel(value: Any) -> bool:
    """A constant that scales or shifts each channel alike at every pixel (so the map stays a convolution)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if not isinstance(value, torch.Tensor):
        return False
    if value.numel() == 1:
        return True
    spatial_ones = value.shape[-1] == 1 and value.shape[-2] == 1 if value.ndim >= 2 else False
    return 3 <= value.ndim <= 4 and spatial_ones and (value.ndim == 3 or value.shape[0] == 1)


@dataclass
class NodeInfo:
    kind: Kind
    #: For linear nodes: a k x k (k > 1) operation, i.e. one that reaches neighbouring pixels.
    spatial: bool = False
    #: For linear nodes: a conv (module, functional, or a unit holding one).
    conv: bool = False
    #: Atomic operations behind this node (a unit counts its own).
    ops: int = 0
    #: For ``other`` nodes that look linear: why they are a boundary.
    reason: str = ""


@dataclass
class Summary:
    """What a module is to its parent's graph: a foldable unit or not, and why."""

    foldable: bool
    reason: str = ""
    spatial: bool = False
    conv: bool = False
    ops: int = 0
    #: The module's forward is one call of this child and nothing else (a wrapper such as FMEN's ``conv1`` around
    #: ``rep_conv``): fold the child, so the wrapper's key level survives.
    wrapper_of: str | None = None
    #: The module's classified graph and its one region (custom modules only; a torch primitive has neither).
    mg: ModuleGraph | None = None
    region: Region | None = None


@dataclass
class Region:
    """A maximal linear subgraph of one module's forward: one input tensor, one output tensor."""

    members: list[fx.Node]
    input: fx.Node
    output: fx.Node
    spatial: bool = False
    conv: bool = False
    ops: int = 0

    def module_targets(self) -> list[str]:
        return [str(n.target) for n in self.members if n.op == "call_module"]


@dataclass
class ModuleGraph:
    """One module's shallow graph, classified."""

    module: nn.Module
    graph: fx.Graph
    info: dict[fx.Node, NodeInfo]
    constants: dict[fx.Node, Any]
    regions: list[Region] = field(default_factory=list)


class Analyzer:
    """Classifies graphs and summarises modules; one per collapse (the memo is per call, not global).

    `keep_own_ops(module)` says whose own functions are never folded (only their submodules are): the caller passes
    "is an SRNet", since an architecture's forward (FMEN's ``x * 255``) is part of its published layout.
    """

    def __init__(self, keep_own_ops: Callable[[nn.Module], bool] = lambda m: False) -> None:
        self.keep_own_ops = keep_own_ops
        self._summaries: dict[int, Summary] = {}
        self._keep: list[nn.Module] = []  # keeps memo keys (ids) alive and unique

    # ------------------------------------------------------------------ modules
    def summary(self, module: nn.Module) -> Summary:
        key = id(module)
        if key not in self._summaries:
            self._keep.append(module)
            self._summaries[key] = self._summarise(module)
        return self._summaries[key]

    def _summarise(self, module: nn.Module) -> Summary:
        if is_conv(module):
            conv = module
            assert isinstance(conv, nn.Conv2d)
            if conv.padding_mode != "zeros":
                return Summary(False, f"padding_mode {conv.padding_mode!r}: only zero padding folds")
            return Summary(True, spatial=any(k > 1 for k in conv.kernel_size), conv=True, ops=1)
        if _is_bn(module):
            if module.training:
                return Summary(False, "BatchNorm in training mode")
            if getattr(module, "running_mean", None) is None:
                return Summary(False, "BatchNorm without running statistics uses batch statistics")
            return Summary(True, ops=1)
        if _exact_type(module, nn.Identity):
            return Summary(True, ops=0)
        if _exact_type(module, nn.Dropout) or _exact_type(module, nn.Dropout2d):
            return Summary(not module.training, "" if not module.training else "Dropout in training mode")
        if _exact_type(module, nn.ZeroPad2d):
            return Summary(True, ops=1)
        if type(module).__module__.startswith("torch.") and not isinstance(module, (nn.Sequential, nn.ModuleList)):
            return Summary(False, f"{type(module).__name__} is not linear")
        graph = shallow_trace(module)
        if isinstance(graph, str):
            return Summary(False, f"cannot trace: {graph}")
        mg = self.classify(module, graph, own_ops_are_boundaries=self.keep_own_ops(module))
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        out = next(n for n in graph.nodes if n.op == "output")
        result = out.args[0]
        if len(placeholders) != 1 or not isinstance(result, fx.Node):
            return Summary(False, "not a single-tensor map", mg=mg)
        compute = [n for n in graph.nodes if n.op != "output" and mg.info[n].kind in ("linear", "other")]
        if result is placeholders[0] and not compute:
            return Summary(True, ops=0, mg=mg)
        others = [n for n in compute if mg.info[n].kind == "other"]
        if others:
            n = others[0]
            why = mg.info[n].reason
            return Summary(False, f"{describe(n)} is not linear" + (f": {why}" if why else ""), mg=mg)
        region = next((r for r in mg.regions if r.output is result), None)
        if region is None or region.input is not placeholders[0] or len(region.members) != len(compute):
            return Summary(False, "its linear part splits into several regions (two spatial ops in a row)", mg=mg)
        calls = [n for n in region.members if n.op == "call_module"]
        wrapper = str(calls[0].target) if len(region.members) == 1 and len(calls) == 1 else None
        return Summary(
            True, spatial=region.spatial, conv=region.conv, ops=region.ops, wrapper_of=wrapper, mg=mg, region=region
        )

    # ------------------------------------------------------------------ graphs
    def classify(self, module: nn.Module, graph: fx.Graph, *, own_ops_are_boundaries: bool = False) -> ModuleGraph:
        """Kinds of every node, then the regions. With `own_ops_are_boundaries`, the module's own functions are
        never folded, only its submodules (an architecture's forward is its layout: FMEN's ``x * 255``)."""
        info: dict[fx.Node, NodeInfo] = {}
        constants: dict[fx.Node, Any] = {}
        for node in graph.nodes:
            info[node] = self._classify_node(module, node, info, constants, own_ops_are_boundaries)
        mg = ModuleGraph(module, graph, info, constants)
        mg.regions = find_regions(graph, info)
        return mg

    def _classify_node(
        self,
        module: nn.Module,
        node: fx.Node,
        info: dict[fx.Node, NodeInfo],
        constants: dict[fx.Node, Any],
        own_ops_are_boundaries: bool,
    ) -> NodeInfo:
        if node.op == "placeholder":
            return NodeInfo("input")
        if node.op == "output":
            return NodeInfo("other")
        inputs = node.all_input_nodes
        kinds = {info[i].kind for i in inputs}
        if node.op == "get_attr" or (node.op != "call_module" and kinds <= {"const"}):
            try:
                constants[node] = _evaluate(module, node, constants)
            except Exception as e:  # an arbitrary user function on parameters; a failure only stops the fold
                return NodeInfo("other", reason=f"cannot evaluate: {e}")
            return NodeInfo("const")
        if _is_shape_only(node) or (kinds <= {"const", "shape"} and node.op != "call_module"):
            return NodeInfo("shape")
        if node.op == "call_module":
            return self._classify_call(module, node, info)
        if own_ops_are_boundaries:
            return NodeInfo("other", reason="the architecture's own forward is kept as it is")
        return _classify_function(node, info, constants)

    def _classify_call(self, module: nn.Module, node: fx.Node, info: dict[fx.Node, NodeInfo]) -> NodeInfo:
        sub = module.get_submodule(str(node.target))
        tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        if len(node.args) != 1 or node.kwargs or len(tensor_args) != 1 or info[tensor_args[0]].kind == "const":
            return NodeInfo("other", reason="called with other than one input tensor")
        s = self.summary(sub)
        if not s.foldable:
            return NodeInfo("other", reason=s.reason)
        return NodeInfo("linear", spatial=s.spatial, conv=s.conv, ops=s.ops)


def _is_shape_only(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _SHAPE_FNS:
        return True
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] == "shape":
        return True
    return node.op == "call_method" and node.target in _SHAPE_METHODS


def _fetch_attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _evaluate(module: nn.Module, node: fx.Node, constants: dict[fx.Node, Any]) -> Any:
    args = fx.node.map_arg(node.args, lambda n: constants[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: constants[n])
    with torch.no_grad():
        if node.op == "get_attr":
            return _fetch_attr(module, str(node.target))
        if node.op == "call_function":
            assert callable(node.target)
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, str(node.target))(*rest, **kwargs)
    raise ValueError(f"unexpected constant node {node.op}")


def _classify_function(node: fx.Node, info: dict[fx.Node, NodeInfo], constants: dict[fx.Node, Any]) -> NodeInfo:
    """Affine operations of a module's own code; anything unknown is a boundary."""
    target = node.target
    args = list(node.args)

    def dep(a: Any) -> bool:
        return isinstance(a, fx.Node) and info[a].kind in ("input", "linear", "other")

    def value(a: Any) -> Any:
        return constants.get(a) if isinstance(a, fx.Node) else a

    def is_const(a: Any) -> bool:
        return not isinstance(a, fx.Node) or info[a].kind in ("const", "shape")

    method = node.op == "call_method"
    name = str(target) if method else getattr(target, "__name__", str(target))
    if (not method and target in _ADD) or (method and target in _METHOD_ADD):
        if node.kwargs.keys() - {"alpha"}:
            return NodeInfo("other", reason=f"{name} with {sorted(node.kwargs)}")
        return NodeInfo("linear", ops=1)
    if (not method and target in _MUL) or (method and target == "mul"):
        deps = [a for a in args if dep(a)]
        consts = [a for a in args if not dep(a)]
        if len(deps) != 1 or len(consts) != 1 or node.kwargs:
            return NodeInfo("other", reason="a product of two input-dependent tensors is not linear")
        c = consts[0]
        if isinstance(c, fx.Node) and info[c].kind == "const" and not _per_channel(value(c)):
            shape = tuple(value(c).shape) if isinstance(value(c), torch.Tensor) else value(c)
            return NodeInfo("other", reason=f"multiplies by a constant of shape {shape} that varies over space")
        return NodeInfo("linear", ops=1)
    if (not method and target in _DIV) or (method and target == "div"):
        if node.kwargs or len(args) != 2 or not dep(args[0]) or not is_const(args[1]):
            return NodeInfo("other", reason="only division by a constant is linear")
        c = args[1]
        if isinstance(c, fx.Node) and info[c].kind == "const" and not _per_channel(value(c)):
            return NodeInfo("other", reason="divides by a constant that varies over space")
        return NodeInfo("linear", ops=1)
    if (not method and target in _UNARY) or (method and target in _METHOD_IDENTITY):
        if len([a for a in args if isinstance(a, fx.Node)]) != 1 or node.kwargs:
            return NodeInfo("other", reason=f"{name} with extra arguments")
        return NodeInfo("linear", ops=0 if name in ("clone", "contiguous", "pos") else 1)
    if not method and target is torch.conv2d:
        return _classify_conv2d(node, dep, is_const, value)
    if not method and target is F.pad:
        mode = node.kwargs.get("mode", args[2] if len(args) > 2 else "constant")
        rest = [i for i in node.all_input_nodes if i is not args[0]]
        if mode != "constant" or not dep(args[0]) or not all(is_const(i) for i in rest):
            return NodeInfo("other", reason=f"pad mode {mode!r} is not a constant pad")
        return NodeInfo("linear", ops=1)
    if not method and target in _CAT:
        dim = node.kwargs.get("dim", args[1] if len(args) > 1 else 0)
        tensors = args[0] if args else node.kwargs.get("tensors", ())
        if dim not in (1, -3) or not isinstance(tensors, (list, tuple)):
            return NodeInfo("other", reason=f"cat along dim {dim} is not a channel concatenation")
        return NodeInfo("linear", ops=0)
    return NodeInfo("other", reason=f"{name} is not linear")


def _classify_conv2d(
    node: fx.Node, dep: Callable[[Any], bool], is_const: Callable[[Any], bool], value: Callable[[Any], Any]
) -> NodeInfo:
    params = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    bound = dict(zip(params, node.args, strict=False)) | dict(node.kwargs)
    if not dep(bound.get("input")):
        return NodeInfo("other", reason="conv2d of a constant")
    weight = value(bound.get("weight"))
    if not is_const(bound.get("weight")) or not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        return NodeInfo("other", reason="conv2d with an input-dependent weight is not linear")
    if not all(is_const(i) for i in node.all_input_nodes if i is not bound.get("input")):
        return NodeInfo("other", reason="conv2d with an input-dependent bias or stride/padding")
    return NodeInfo("linear", spatial=any(k > 1 for k in weight.shape[-2:]), conv=True, ops=1)


# ---------------------------------------------------------------------------------------------- regions
def find_regions(graph: fx.Graph, info: dict[fx.Node, NodeInfo]) -> list[Region]:
    """Maximal single-input, single-output linear regions with at most one spatial op on any path.

    Greedy from the outputs backwards: a linear node joins the region of its users when they are all in the same
    region and joining adds no second spatial op to a path; otherwise it ends a region of its own. A region that
    draws on two input tensors (``conv(a) + conv(b)`` for two different a, b) is not one conv: the nodes where its
    inputs meet become boundaries and the grouping runs again (each round removes nodes, so it ends).
    """
    order = {n: i for i, n in enumerate(graph.nodes)}
    while True:
        group, outputs = _group(graph, info)
        regions: list[Region] = []
        demoted = False
        for out in outputs:
            members = sorted((n for n, g in group.items() if g is out), key=order.__getitem__)
            member_set = set(members)
            sources: dict[fx.Node, set[fx.Node]] = {}
            for n in members:
                src: set[fx.Node] = set()
                for i in n.all_input_nodes:
                    if i in member_set:
                        src |= sources[i]
                    elif info[i].kind in ("input", "linear", "other"):
                        src.add(i)
                sources[n] = src
            bad = [n for n in members if len(sources[n]) > 1]
            if bad:
                for n in bad:
                    info[n] = NodeInfo("other", reason="combines two different input tensors")
                demoted = True
                continue
            inputs = set().union(*(sources[n] for n in members))
            if len(inputs) != 1:
                continue  # a region computed from constants alone: nothing to fold
            regions.append(
                Region(
                    members=members,
                    input=next(iter(inputs)),
                    output=out,
                    spatial=any(info[n].spatial for n in members),
                    conv=any(info[n].conv for n in members),
                    ops=sum(info[n].ops for n in members),
                )
            )
        if not demoted:
            return regions


def _group(graph: fx.Graph, info: dict[fx.Node, NodeInfo]) -> tuple[dict[fx.Node, fx.Node], list[fx.Node]]:
    group: dict[fx.Node, fx.Node] = {}
    spatial_after: dict[fx.Node, bool] = {}
    outputs: list[fx.Node] = []
    for v in reversed(list(graph.nodes)):
        if info[v].kind != "linear":
            continue
        # Shape-only users (zeros_like(t) for a border mask) read no values, so they do not pin v.
        users = [u for u in v.users if info[u].kind != "shape"]
        targets = {group.get(u) for u in users}
        if users and all(info[u].kind == "linear" for u in users) and len(targets) == 1 and None not in targets:
            after = any(info[u].spatial or spatial_after[u] for u in users)
            if not (info[v].spatial and after):
                g = next(iter(targets))
                assert g is not None
                group[v] = g
                spatial_after[v] = after
                continue
        group[v] = v
        spatial_after[v] = False
        outputs.append(v)
    return group, outputs


def describe(node: fx.Node, prefix: str = "") -> str:
    """A node as a person reads it: the submodule's path, or the function's name."""
    if node.op == "call_module":
        return _join(prefix, str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def needed_nodes(members: Iterable[fx.Node], info: dict[fx.Node, NodeInfo], region_input: fx.Node) -> set[fx.Node]:
    """The region's members plus every constant and shape node they read (what a copy of the region must hold)."""
    out: set[fx.Node] = set(members)
    stack = list(out)
    while stack:
        n = stack.pop()
        for i in n.all_input_nodes:
            if i is region_input or i in out:
                continue
            if info[i].kind in ("const", "shape"):
                out.add(i)
                stack.append(i)
    return out
