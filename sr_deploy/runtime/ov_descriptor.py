"""The `openvino` backend's descriptor and maker (the backend itself is sr_deploy.runtime.ov_backend).

Apart from the backend because the maker exports the model (sr_deploy.export), which itself runs the backend in
its checks: the backend module stays free of the exporter, and descriptors import no runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sr_deploy.precision import Precision
from sr_deploy.runtime.registry import BackendDescriptor, BackendRequest

if TYPE_CHECKING:
    from sr_deploy.bench.rows import RowContext, RowPlan
    from sr_deploy.runtime.ov_backend import OpenVinoBackend


def make_openvino(request: BackendRequest) -> OpenVinoBackend:
    from sr_deploy.runtime.factory import bf16_gate, exported_graph, int8_graph_for
    from sr_deploy.runtime.ov_backend import OpenVinoBackend, bf16_capable

    if request.precision == "int8":
        graph = int8_graph_for(request)
        # bf16 for the float remainder only where the graph passed its gate that way when it was written.
        remainder: Precision = "bf16" if graph.bf16_remainder_passed and bf16_capable() is None else "fp32"
        backend = OpenVinoBackend(graph.path, precision="int8", int8_remainder=remainder)
        backend.add_detail("int8_graph", graph.to_dict())
        return backend
    # bf16 is OpenVINO's compute precision for the fp32 graph, not a graph of its own.
    graph_or_bytes = exported_graph(request.model, "fp32", request.weights_sha256, request.work_dir)
    backend = OpenVinoBackend(graph_or_bytes, precision=request.precision)
    if request.precision == "bf16":
        backend.add_detail("bf16_gate", bf16_gate(request.model, request.references, run=backend.run).to_dict())
    return backend


def openvino_bench_rows(ctx: RowContext) -> list[RowPlan]:
    from sr_deploy.bench.rows import RowPlan

    rows = [
        RowPlan("openvino-fp32", "OpenVINO fp32 (CPU)", "openvino", "fp32"),
        RowPlan("openvino-bf16", "OpenVINO bf16 (CPU)", "openvino", "bf16"),
    ]
    if ctx.int8_graph is not None:
        rows.append(
            RowPlan("openvino-int8", "OpenVINO int8 (CPU, Q/DQ graph)", "openvino", "int8", int8_graph=ctx.int8_graph)
        )
    return rows


def openvino_status() -> str | None:
    from sr_deploy.runtime.ov_backend import openvino_status as status

    return status()


DESCRIPTOR = BackendDescriptor(
    name="openvino",
    summary="OpenVINO on the exported graph, CPU only (the fastest fp32 and bf16 CPU path here)",
    precisions=("fp32", "bf16", "int8"),
    devices=("cpu",),
    available=openvino_status,
    make=make_openvino,
    bench_rows=openvino_bench_rows,
)
