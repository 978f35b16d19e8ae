"""Which backend configurations a bench run measures: one row for a named backend, and for ``--backend all`` the
rows each backend's descriptor contributes, in the registry's order."""

from __future__ import annotations

from dataclasses import dataclass

from sr_deploy.errors import SRDeployError
from sr_deploy.precision import Precision, parse_precision
from sr_deploy.runtime.registry import Registry, default_registry

#: The kind that measures every backend side by side.
ALL = "all"

#: Key of the `--backend all` row the speed-up column is measured against: what the challenge ran.
BASELINE_ROW = "torch-fp32"


@dataclass(frozen=True)
class RowPlan:
    """One backend configuration to measure. ``model`` is "deploy" (collapsed) or "clb" (training-time)."""

    key: str
    title: str
    kind: str
    precision: Precision
    model: str = "deploy"
    #: Set when the row is known to be pointless before anything runs (kept so the table has fixed rows).
    skip_reason: str | None = None
    #: Replay one CUDA graph per input shape (torch and tensorrt on CUDA; captured outside the timer).
    cuda_graphs: bool = False
    #: ``torch.compile`` mode for a torch row (compiled at first sight of each shape, outside the timer).
    compile_mode: str | None = None
    #: int8 rows: the Q/DQ graph (``srdeploy quantize``) the row runs.
    int8_graph: str | None = None


@dataclass(frozen=True)
class RowContext:
    """What a descriptor's bench rows depend on: torch's best precision here, the device, the int8 graph if any."""

    best_precision: Precision
    device: str = "cpu"
    int8_graph: str | None = None


def backend_choices(registry: Registry | None = None) -> tuple[str, ...]:
    """What --backend of ``srdeploy bench`` takes: every kind, and ``all``."""
    return (*(registry or default_registry()).kinds, ALL)


def best_torch_precision(device: str) -> Precision:
    """The fastest precision torch offers here: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32."""
    from sr_deploy.runtime.torch_backend import cpu_bf16_support

    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_bf16_support() is None else "fp32"


def option_suffix(cuda_graphs: bool, compile_mode: str | None) -> tuple[str, str]:
    """(key suffix, title suffix) naming a row's CUDA-graph or compile option."""
    if cuda_graphs:
        return "-graphs", ", CUDA graphs"
    if compile_mode is not None:
        return "-compiled", f", torch.compile ({compile_mode})"
    return "", ""


def plan_rows(
    backend: str,
    precision: str,
    *,
    best_precision: Precision,
    device: str = "cpu",
    cuda_graphs: bool = False,
    compile_mode: str | None = None,
    int8_graph: str | None = None,
    registry: Registry | None = None,
) -> list[RowPlan]:
    """The rows to measure: one for a named backend (with the --cuda-graphs / --compile options it was given), the
    comparison table for ``all``: each backend's descriptor's rows (on CUDA torch adds CUDA graphs and compiled rows
    in the best precision; the options themselves are ignored by ``all``, like --precision; with an `int8_graph`,
    the backends that run int8 add rows that run it)."""
    reg = registry or default_registry()
    if backend not in backend_choices(reg):
        raise SRDeployError(f"--backend {backend!r}: expected one of {', '.join(backend_choices(reg))}")
    prec = parse_precision(precision, "--precision", reg.precisions)
    if backend != ALL and prec == "int8" and int8_graph is None:
        raise SRDeployError("--precision int8 needs the quantized graph: --onnx model.int8.onnx (srdeploy quantize)")
    if backend != ALL and prec != "int8" and int8_graph is not None:
        raise SRDeployError(f"--onnx: the int8 graph is timed with --precision int8 or --backend all (got {prec})")
    if backend == ALL:
        ctx = RowContext(best_precision=best_precision, device=device, int8_graph=int8_graph)
        return [row for d in reg for row in d.bench_rows(ctx)]
    if backend in reg.names:
        reg.check_precision(backend, prec)
    key, title = option_suffix(cuda_graphs, compile_mode)
    return [
        RowPlan(
            key=f"{backend}-{prec}{key}",
            title=f"{backend} {prec}{title}",
            kind=backend,
            precision=prec,
            cuda_graphs=cuda_graphs,
            compile_mode=compile_mode,
            int8_graph=int8_graph,
        )
    ]
