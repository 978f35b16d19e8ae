"""The `onnxruntime` backend's descriptor and maker (the backend itself is sr_deploy.runtime.ort_backend).

Apart from the backend because the maker exports the model (sr_deploy.export), which itself runs the backend in
its checks: the backend module stays free of the exporter, and descriptors import no runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sr_deploy.runtime.registry import BackendDescriptor, BackendRequest

if TYPE_CHECKING:
    from sr_deploy.bench.rows import RowContext, RowPlan
    from sr_deploy.runtime.ort_backend import OrtBackend


def make_ort(request: BackendRequest) -> OrtBackend:
    from sr_deploy.runtime.factory import exported_graph, int8_graph_for
    from sr_deploy.runtime.ort_backend import OrtBackend

    if request.precision == "int8":
        graph = int8_graph_for(request)
        backend = OrtBackend(graph.path, providers=request.providers or ["cpu"])
        backend.add_detail("int8_graph", graph.to_dict())
        # Said, not hidden: ONNX Runtime turns DQ -> Conv -> Q into an int8 QLinearConv only when a Q follows the
        # conv, and the TensorRT placement has none there, so its CPU provider computes the int8 numerics in float
        # kernels.
        backend.add_detail(
            "compute",
            "float kernels on dequantized int8 weights and activations (the int8 graph's numerics, not speed)",
        )
        return backend
    # ONNX Runtime finds its own GPU providers (torch may be a CPU build on a GPU machine): "auto" is passed through.
    providers = request.providers
    if providers is None and request.device != "auto":
        providers = ["cpu"] if request.device == "cpu" else ["cuda", "cpu"]
    graph_or_bytes = exported_graph(request.model, request.precision, request.weights_sha256, request.work_dir)
    return OrtBackend(graph_or_bytes, providers=providers, trt_cache_dir=request.work_dir)


def ort_bench_rows(ctx: RowContext) -> list[RowPlan]:
    from sr_deploy.bench.rows import RowPlan

    rows = [
        RowPlan("onnxruntime-fp32", "ONNX Runtime fp32", "onnxruntime", "fp32"),
        RowPlan("onnxruntime-fp16", "ONNX Runtime fp16", "onnxruntime", "fp16"),
    ]
    if ctx.int8_graph is not None:
        rows.append(
            RowPlan(
                "onnxruntime-int8",
                "ONNX Runtime int8 numerics (CPU, Q/DQ graph in float kernels)",
                "onnxruntime",
                "int8",
                int8_graph=ctx.int8_graph,
            )
        )
    return rows


def ort_status() -> str | None:
    """None when ONNX Runtime runs here (its CPU provider loads), else why not."""
    from sr_deploy.runtime.ort_backend import CPU, provider_status

    return provider_status()[CPU]


DESCRIPTOR = BackendDescriptor(
    name="onnxruntime",
    summary="ONNX Runtime on the exported graph (CPU, CUDA or TensorRT execution provider)",
    precisions=("fp32", "fp16", "int8"),
    devices=("cpu", "cuda"),
    available=ort_status,
    make=make_ort,
    bench_rows=ort_bench_rows,
    prepare_runs_forward=True,
)
