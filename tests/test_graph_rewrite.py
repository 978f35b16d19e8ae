"""The split-free CPU rewrite: no Split left where the pattern holds, same outputs, input untouched, and every
near-miss left alone. Hand-built graphs are checked with ONNX's own reference evaluator (a second runtime)."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from sr_deploy.archs.imdn import IMDN
from sr_deploy.runtime.graph_rewrite import split_free
from sr_deploy.runtime.ort_backend import OrtBackend


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def test_imdn_graph_loses_every_split_and_keeps_its_outputs(tiny_model: IMDN, tiny_onnx: dict[str, Path]) -> None:
    exported = tiny_onnx["fp32"]
    blocks = tiny_model.spec.blocks
    original = onnx.load(str(exported))
    before = original.SerializeToString()
    rewritten = split_free(original)
    assert original.SerializeToString() == before, "the input graph was modified"
    ops = _ops(rewritten)
    assert "Split" not in ops and _ops(original)["Split"] == 3 * blocks
    # Each split conv became one conv per piece: 2 pieces x 3 splits per block.
    assert ops["Conv"] == _ops(original)["Conv"] + 3 * blocks
    onnx.checker.check_model(rewritten, full_check=True)
    # No initializer left behind unused (the whole-filter tensors of the split convs go).
    used = {i for n in rewritten.graph.node for i in n.input}
    assert all(init.name in used for init in rewritten.graph.initializer)

    lr = np.random.default_rng(1).random((1, 3, 13, 9), dtype=np.float32)
    as_exported = OrtBackend(exported, cpu_rewrite=False).run(lr)
    free = OrtBackend(rewritten.SerializeToString(), cpu_rewrite=False).run(lr)
    # The same dot products per output channel: equal to float32 rounding, and to torch within the export gate.
    assert np.abs(free - as_exported).max() <= 1e-6
    with torch.inference_mode():
        ref = copy.deepcopy(tiny_model).double()(torch.from_numpy(lr).double()).numpy()
    assert np.abs(free - ref).max() <= 1e-4


def test_ort_backend_rewrites_on_the_cpu_only_when_asked(tiny_onnx: dict[str, Path]) -> None:
    exported = tiny_onnx["fp32"]
    assert OrtBackend(exported).info.details["graph"] == "split-free"
    assert OrtBackend(exported, cpu_rewrite=False).info.details["graph"] == "as exported"


# ------------------------------------------------------------------------------------------ hand-built graphs
def _conv_split_graph(
    *,
    opset: int,
    sizes_as: str = "input",
    bias: bool = True,
    activation: str | None = "LeakyRelu",
    axis: int = 1,
    extra_consumer: bool = False,
    group: int = 1,
) -> onnx.ModelProto:
    """x(1,4,5,6) -> Conv(4->6, 3x3) [-> activation] -> Split [2, 4] on `axis` -> two outputs."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 4 // group, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    conv_in = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"))
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], name="conv", pads=[1, 1, 1, 1], group=group)]
    feed = "c"
    if activation is not None:
        attrs = {"alpha": 0.05} if activation == "LeakyRelu" else {}
        nodes.append(helper.make_node(activation, ["c"], ["a"], name="act", **attrs))
        feed = "a"
    split_sizes = [2, 4] if axis == 1 else [2, 3]
    split_kwargs: dict[str, object] = {"axis": axis}
    split_inputs = [feed]
    if sizes_as == "input":
        inits.append(numpy_helper.from_array(np.array(split_sizes, dtype=np.int64), "sizes"))
        split_inputs.append("sizes")
    elif sizes_as == "constant":
        sizes_tensor = numpy_helper.from_array(np.array(split_sizes, dtype=np.int64), "sizes_value")
        nodes.append(helper.make_node("Constant", [], ["sizes"], value=sizes_tensor))
        split_inputs.append("sizes")
    elif sizes_as == "attribute":
        split_kwargs["split"] = split_sizes
    elif sizes_as == "num_outputs":
        split_sizes = [3, 3]
        split_kwargs["num_outputs"] = 2
    nodes.append(helper.make_node("Split", split_inputs, ["p0", "p1"], name="split", **split_kwargs))
    h, w_ = 5, 6
    shapes = {
        1: ([1, split_sizes[0], h, w_], [1, split_sizes[1], h, w_]),
        2: ([1, 6, 2, w_], [1, 6, 3, w_]),
    }[axis]
    outputs = [
        helper.make_tensor_value_info("p0", TensorProto.FLOAT, shapes[0]),
        helper.make_tensor_value_info("p1", TensorProto.FLOAT, shapes[1]),
    ]
    if extra_consumer:
        outputs.append(helper.make_tensor_value_info(feed, TensorProto.FLOAT, [1, 6, h, w_]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, h, w_])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, {"x": x})]


X = np.random.default_rng(3).standard_normal((1, 4, 5, 6)).astype(np.float32)


@pytest.mark.parametrize(
    ("opset", "sizes_as", "bias", "activation"),
    [
        (18, "input", True, "LeakyRelu"),
        (18, "constant", True, "Relu"),
        (11, "attribute", True, "LeakyRelu"),
        (18, "num_outputs", False, None),
        (13, "input", False, "LeakyRelu"),
    ],
)
def test_every_way_of_giving_the_split_is_rewritten_exactly(
    opset: int, sizes_as: str, bias: bool, activation: str | None
) -> None:
    model = _conv_split_graph(opset=opset, sizes_as=sizes_as, bias=bias, activation=activation)
    onnx.checker.check_model(model, full_check=True)
    rewritten = split_free(model)
    assert "Split" not in _ops(rewritten)
    assert _ops(rewritten)["Conv"] == 2
    onnx.checker.check_model(rewritten, full_check=True)
    for got, want in zip(_run(rewritten, X), _run(model, X), strict=True):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"extra_consumer": True},  # the conv's activation is also a graph output: a split would still be needed
        {"axis": 2},  # a split over rows, not channels
        {"group": 2},  # grouped conv: its filters cannot be sliced per output independently of the input groups
    ],
)
def test_near_misses_are_left_alone(kwargs: dict[str, object]) -> None:
    model = _conv_split_graph(opset=18, **kwargs)  # type: ignore[arg-type]
    rewritten = split_free(model)
    assert rewritten.SerializeToString() == model.SerializeToString()
