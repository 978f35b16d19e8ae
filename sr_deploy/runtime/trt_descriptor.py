"""The `tensorrt` backend's descriptor and maker (the backend itself is sr_deploy.runtime.trt_backend); TensorRT
is imported only when the check or the maker runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sr_deploy.errors import SRDeployError
from sr_deploy.runtime.registry import CUDA_GRAPHS, BackendDescriptor, BackendRequest
from sr_deploy.trt_plan.versions import TRT_FLOAT_PRECISIONS

if TYPE_CHECKING:
    from sr_deploy.bench.rows import RowContext, RowPlan
    from sr_deploy.runtime.base import Backend


def tensorrt_status() -> str | None:
    """None when the tensorrt backend can run here, else why not."""
    from sr_deploy.runtime.ort_backend import gpu_present
    from sr_deploy.trt_env import require_tensorrt

    try:
        require_tensorrt()
    except ImportError as e:
        return f"the tensorrt backend is not available ({e})"
    except SRDeployError as e:
        return str(e)
    return None if gpu_present() else "no NVIDIA GPU is visible"


def make_tensorrt(request: BackendRequest) -> Backend:
    from sr_deploy.runtime.trt_backend import backend_for_model
    from sr_deploy.trt_env import require_tensorrt

    require_tensorrt()
    return backend_for_model(
        request.model,
        precision=request.precision,
        weights_sha256=request.weights_sha256,
        work_dir=request.work_dir,
        cuda_graphs=request.cuda_graphs,
    )


def tensorrt_bench_rows(ctx: RowContext) -> list[RowPlan]:
    from sr_deploy.bench.rows import RowPlan

    return [RowPlan(f"tensorrt-{p}", f"TensorRT {p}", "tensorrt", p) for p in DESCRIPTOR.precisions]


DESCRIPTOR = BackendDescriptor(
    name="tensorrt",
    summary="a TensorRT engine built from the exported graph, NVIDIA GPU only",
    # From a model the backend builds float engines; an int8 engine needs a Q/DQ graph (srdeploy export-trt).
    precisions=TRT_FLOAT_PRECISIONS,
    devices=("cuda",),
    available=tensorrt_status,
    make=make_tensorrt,
    bench_rows=tensorrt_bench_rows,
    options=frozenset({CUDA_GRAPHS}),
)
