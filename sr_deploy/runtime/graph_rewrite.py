"""Rewrites of an exported ONNX graph for the CPU runtimes. They change how a graph computes, never what.

``split_free``: every ``Conv [-> LeakyRelu/Relu] -> Split(axis=1)`` becomes one Conv (and activation) per piece,
each with its slice of the filters. The output channels are the same dot products, so the result is unchanged;
what changes is that the graph has no Split. ONNX Runtime's blocked (NCHWc) CPU convs cannot pass a tensor through
a Split, so every IMDN distillation split cost a reorder out of and back into the blocked layout (28 pairs for
imdn-b7); OpenVINO also runs the split-free graph faster. Measured in benchmarks/results/cpu_backends.md.

The exported file keeps its Split (the exact operator set TensorRT's parser is held to); the rewrite is applied in
memory when a CPU backend loads the graph. In an int8 (Q/DQ) graph a conv's weights come from a DequantizeLinear of
int8 constants, per output channel: each piece gets its slice of the int8 weights and of the scales, which is the
same arithmetic again.
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
    #: int8 graphs: the DequantizeLinear that makes the conv's weights from int8 constants (None: float weights).
    weight_dq: onnx.NodeProto | None = None


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
        if conv is None or conv.op_type != "Conv":
            continue
        weight_dq = None
        if conv.input[1] not in consts:
            weight_dq = _weight_dq(producer.get(conv.input[1]), consts)
            if weight_dq is None or not sole_use(conv.input[1]):
                continue
        if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in consts:
            continue
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if int(conv_attrs.get("group", 1)) != 1:
            continue
        weight_name = conv.input[1] if weight_dq is None else weight_dq.input[0]
        channels = int(consts[weight_name].shape[0])
        sizes = _split_sizes(split, consts, channels)
        if sizes is None or sum(sizes) != channels or len(sizes) != len(split.output) or min(sizes) <= 0:
            continue
        found.append(_Match(split, act, conv, sizes, weight_dq))
    return found


def _weight_dq(node: onnx.NodeProto | None, consts: dict[str, np.ndarray]) -> onnx.NodeProto | None:
    """`node` when it is a DequantizeLinear of constant weights that can be sliced by output channel: per tensor, or
    per channel on axis 0 (what `srdeploy quantize` writes); else None."""
    if node is None or node.op_type != "DequantizeLinear" or any(name not in consts for name in node.input if name):
        return None
    scale = consts[node.input[1]]
    axis = next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"), 1)
    if scale.size > 1 and axis != 0:
        return None
    if any(a.name == "block_size" and helper.get_attribute_value(a) for a in node.attribute):
        return None  # blocked quantization: not produced by us
    return node


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
    removed = {id(n) for m in matches for n in (m.split, m.act, m.conv, m.weight_dq) if n is not None}
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
    conv, act, dq = match.conv, match.act, match.weight_dq
    weight = consts[conv.input[1] if dq is None else dq.input[0]]
    bias = consts[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else None
    nodes: list[onnx.NodeProto] = []
    start = 0
    for k, (size, target) in enumerate(zip(match.sizes, match.split.output, strict=True)):
        stop = start + size
        w_name = f"{conv.input[1]}__split{k}"
        if dq is None:
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(weight[start:stop]), w_name))
        else:
            nodes.append(_dq_piece(dq, consts, start, stop, k, w_name, new_inits))
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


def _dq_piece(
    dq: onnx.NodeProto,
    consts: dict[str, np.ndarray],
    start: int,
    stop: int,
    k: int,
    output: str,
    new_inits: list[onnx.TensorProto],
) -> onnx.NodeProto:
    """The DequantizeLinear of output channels [start, stop) of a per-channel (or per-tensor) quantized weight."""
    inputs: list[str] = []
    for i, name in enumerate(dq.input):
        value = consts[name]
        # Input 0 is the int8 weight; scale and zero point are sliced only when they are per channel.
        if i == 0 or value.size > 1:
            value = np.ascontiguousarray(value[start:stop])
        piece = f"{name}__split{k}"
        new_inits.append(numpy_helper.from_array(value, piece))
        inputs.append(piece)
    node = helper.make_node("DequantizeLinear", inputs, [output], name=f"{dq.name or dq.output[0]}__split{k}")
    node.attribute.extend(dq.attribute)
    return node


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
