"""The `torch` backend's descriptor and maker (the backend itself is sr_deploy.runtime.torch_backend).

Apart from the backend because torch_backend imports torch at import time while descriptors import no runtime
(the CLI's help is made from them), and because the maker's precision gates use the exporter (sr_deploy.export),
which itself runs torch_backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sr_deploy.errors import MissingDependencyError
from sr_deploy.precision import FLOAT_PRECISIONS
from sr_deploy.runtime.registry import COMPILE, CUDA_GRAPHS, BackendDescriptor, BackendRequest

if TYPE_CHECKING:
    from sr_deploy.archs.base import SRNet
    from sr_deploy.bench.rows import RowContext, RowPlan
    from sr_deploy.runtime.torch_backend import PrecisionCheck, TorchBackend, TorchOptions, TorchPrecision


def make_torch(request: BackendRequest) -> TorchBackend:
    from sr_deploy.runtime.torch_backend import TorchOptions

    options = TorchOptions(cuda_graphs=request.cuda_graphs, compile_mode=request.compile_mode)
    return _make_torch(
        request.model, request.precision, request.resolved_device, request.channels_last, request.references, options
    )


def _make_torch(
    model: SRNet,
    precision: str,
    device: str,
    channels_last: bool | None,
    references: Sequence[Any] | None,
    options: TorchOptions,
) -> TorchBackend:
    from sr_deploy.runtime.factory import bf16_gate
    from sr_deploy.runtime.torch_backend import TorchBackend, check_torch_options, cpu_bf16_support, require_cuda

    cpu = device == "cpu"
    check_torch_options(options, "cpu" if cpu else "cuda")  # a flag mistake first, before any gate's work
    require_cuda("cpu" if cpu else "cuda")
    # channels_last: measured faster on the CPU (oneDNN's blocked NHWC convs); on CUDA it pays off in half only.
    nhwc = channels_last if channels_last is not None else (cpu or precision != "fp32")
    prec: TorchPrecision = "bf16" if precision == "bf16" else ("fp16" if precision == "fp16" else "fp32")
    check = None
    if cpu and prec == "bf16":
        reason = cpu_bf16_support()
        if reason is not None:
            raise MissingDependencyError(f"--precision bf16: {reason}")
        check = bf16_gate(model, references)
    elif not cpu and prec != "fp32":
        check = _cuda_gate(model, prec, device, nhwc, references)
    backend = TorchBackend(model, device=device, precision=prec, channels_last=nhwc, options=options)
    if check is not None:
        backend.add_detail(f"{prec}_gate", check.to_dict())
    return backend


def _cuda_gate(
    model: SRNet, precision: TorchPrecision, device: str, channels_last: bool, references: Sequence[Any] | None
) -> PrecisionCheck:
    """fp16 / bf16 on CUDA against torch fp32 on the CPU, with the CPU's rules: bf16 may lose at most
    BF16_MAX_Y_DROP_DB of mean Y-PSNR, fp16 the ONNX export's fp16 bound; without HR images the output must stay
    within BF16_MIN_PSNR_DB of fp32. The reduced side is eager torch on the GPU, not the backend itself, so that the
    backend's first image stays cold and its graphs or compiled shapes are made only where they are timed."""
    from sr_deploy.export.onnx import ExportGates
    from sr_deploy.runtime.factory import gate_references
    from sr_deploy.runtime.torch_backend import (
        BF16_MAX_Y_DROP_DB,
        check_precision,
        cuda_bf16_native,
        cuda_bf16_support,
        require_precision,
        torch_runner,
    )

    if precision == "bf16":
        reason = cuda_bf16_support(cuda_bf16_native(), _gpu_name(device))
        if reason is not None:
            raise MissingDependencyError(f"--precision bf16: {reason}")
    refs, label = gate_references(model, references)
    drop = BF16_MAX_Y_DROP_DB if precision == "bf16" else ExportGates().fp16_max_y_psnr_drop_db
    run = torch_runner(model, precision, device=device, channels_last=channels_last)
    check = check_precision(model, refs, precision=precision, label=f"{label} on {device}", max_y_drop_db=drop, run=run)
    return require_precision(check)


def _gpu_name(device: str) -> str:
    import torch

    return str(torch.cuda.get_device_name(torch.device(device)))


def torch_bench_rows(ctx: RowContext) -> list[RowPlan]:
    """The training-time CLB model and the collapsed one in fp32 (what the challenge ran), then the best precision
    here; on CUDA also with CUDA graphs and compiled."""
    from sr_deploy.bench.rows import BASELINE_ROW, RowPlan

    best = ctx.best_precision
    rows = [
        RowPlan(
            "torch-clb-fp32",
            "torch eager fp32, training-time CLB model (what the paper trains)",
            "torch",
            "fp32",
            model="clb",
        ),
        RowPlan(BASELINE_ROW, "torch eager fp32, collapsed (what the challenge ran)", "torch", "fp32"),
        RowPlan(
            f"torch-best-{best}",
            f"torch eager {best}, collapsed (best precision here)",
            "torch",
            best,
            skip_reason=None if best != "fp32" else "no precision faster than fp32 for torch on this device",
        ),
    ]
    if ctx.device.startswith("cuda"):
        rows += [
            RowPlan(
                f"torch-best-{best}-graphs",
                f"torch {best}, CUDA graphs (captured per input shape outside the timer)",
                "torch",
                best,
                cuda_graphs=True,
            ),
            RowPlan(
                f"torch-best-{best}-compiled",
                f"torch.compile {best} (compiled per input shape outside the timer)",
                "torch",
                best,
                compile_mode="default",
            ),
        ]
    return rows


def _always() -> str | None:
    return None  # torch is a core dependency: wherever srdeploy imports, it runs


DESCRIPTOR = BackendDescriptor(
    name="torch",
    summary="PyTorch eager (or torch.compile, CUDA graphs) on the CPU or a CUDA GPU",
    precisions=FLOAT_PRECISIONS,
    devices=("cpu", "cuda"),
    available=_always,
    make=make_torch,
    bench_rows=torch_bench_rows,
    options=frozenset({CUDA_GRAPHS, COMPILE}),
    prepare_runs_forward=True,
)
