"""Rewrites of an exported ONNX graph for the CPU runtimes. They change how a graph computes, never what.

``split_free``: every ``Conv [-> LeakyRelu/Relu] -> Split(axis=1)`` becomes one Conv (and activation) per piece,
each with its slice of the filters. The output channels are the same dot products, so the result is unchanged;
what changes is that the graph has no Split. ONNX Runtime's blocked (NCHWc) CPU convs cannot pass a tensor through
a Split, so every IMDN distillation split cost a reorder out of and back into the blocked layout (28 pairs for
imdn-b7); OpenVINO also runs the split-free graph faster. Measured in benchmarks/results/cpu_backends.md.

The exported file keeps its Split (the exact operator set TensorRT's parser is held to); the rewrite is applied in
memory when a CPU backend loads the graph.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sr_deploy.errors import SRDeployError

_ACTIVATIONS = frozenset({"LeakyRelu", "Relu"})


@dataclass(frozen=True)
class _Match:
    split: onnx.NodeProto
    act: onnx.NodeProto | None
    conv: onnx.NodeProto
    sizes: list[int]


def _split_sizes(node: onnx.NodeProto, consts: dict[str, np.ndarray], channels: int) -> list[int] | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if int(attrs.get("axis", 0)) not in (1, -3):
        return None
    if len(node.input) > 1 and node.input[1]:
        value = consts.get(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    if "split" in attrs:
        return [int(v) for v in attrs["split"]]
    parts = len(node.output)
    if parts == 0 or channels % parts:
        return None  # ONNX's uneven num_outputs split; not produced by our exporter
    return [channels // parts] * parts


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _matches(graph: onnx.GraphProto) -> list[_Match]:
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            consumers[name] += 1
    graph_outputs = {o.name for o in graph.output}
    consts = _constants(graph)

    def sole_use(name: str) -> bool:
        return consumers[name] == 1 and name not in graph_outputs

    found: list[_Match] = []
    for split in graph.node:
        if split.op_type != "Split":
            continue
        act = producer.get(split.input[0])
        if act is None or not sole_use(split.input[0]):
            continue
        conv: onnx.NodeProto | None = act
        if act.op_type in _ACTIVATIONS:
            conv = producer.get(act.input[0])
            if conv is None or not sole_use(act.input[0]):
                continue
        else:
            act = None
        if conv is None or conv.op_type != "Conv" or conv.input[1] not in consts:
            continue
        if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in consts:
            continue
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if int(conv_attrs.get("group", 1)) != 1:
            continue
        channels = int(consts[conv.input[1]].shape[0])
        sizes = _split_sizes(split, consts, channels)
        if sizes is None or sum(sizes) != channels or len(sizes) != len(split.output) or min(sizes) <= 0:
            continue
        found.append(_Match(split, act, conv, sizes))
    return found


def split_free(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every Conv [-> activation] -> channel Split is one Conv per piece.

    Splits that do not match that pattern exactly (another consumer of the conv's output, filters that are not
    constants, grouped convs, a split on another axis) are left as they are. `model` is not modified.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    matches = _matches(graph)
    if not matches:
        return out
    consts = _constants(graph)
    removed = {id(n) for m in matches for n in (m.split, m.act, m.conv) if n is not None}
    by_split = {id(m.split): m for m in matches}
    new_inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        match = by_split.get(id(node))
        if match is not None:
            nodes.extend(_pieces(match, consts, new_inits))
        elif id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    return out


def _pieces(match: _Match, consts: dict[str, np.ndarray], new_inits: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    conv, act = match.conv, match.act
    weight = consts[conv.input[1]]
    bias = consts[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else None
    nodes: list[onnx.NodeProto] = []
    start = 0
    for k, (size, target) in enumerate(zip(match.sizes, match.split.output, strict=True)):
        stop = start + size
        w_name = f"{conv.input[1]}__split{k}"
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(weight[start:stop]), w_name))
        inputs = [conv.input[0], w_name]
        if bias is not None:
            b_name = f"{conv.input[2]}__split{k}"
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(bias[start:stop]), b_name))
            inputs.append(b_name)
        conv_out = target if act is None else f"{conv.output[0]}__split{k}"
        piece = helper.make_node("Conv", inputs, [conv_out], name=f"{conv.name}__split{k}")
        piece.attribute.extend(conv.attribute)
        nodes.append(piece)
        if act is not None:
            piece_act = helper.make_node(act.op_type, [conv_out], [target], name=f"{act.name}__split{k}")
            piece_act.attribute.extend(act.attribute)
            nodes.append(piece_act)
        start = stop
    return nodes


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def split_free_bytes(onnx_model: str | Path | bytes) -> bytes:
    """`split_free` of an ONNX file or serialized graph, serialized; a file that is not ONNX is one clear error."""
    where = "ONNX bytes" if isinstance(onnx_model, bytes) else str(onnx_model)
    try:
        proto = onnx.load_from_string(onnx_model) if isinstance(onnx_model, bytes) else onnx.load(str(onnx_model))
    except Exception as e:  # protobuf's DecodeError and friends
        raise SRDeployError(f"{where}: not an ONNX model ({type(e).__name__})") from None
    data: bytes = split_free(proto).SerializeToString()
    return data
