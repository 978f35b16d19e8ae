"""A bench run: its settings, the checks before anything runs, and every planned row measured in one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sr_deploy.bench.environment import collect_environment
from sr_deploy.bench.inputs import BenchImage
from sr_deploy.bench.measure import (
    PSNR_CROP_BORDER,
    HRLoader,
    ProgressHook,
    RowResult,
    finish_rows,
    measure_backend,
    read_hr,
)
from sr_deploy.bench.models import BenchModels
from sr_deploy.bench.report import BenchReport
from sr_deploy.bench.rows import ALL, RowPlan, best_torch_precision, plan_rows
from sr_deploy.bench.verdict import DEFAULT_BUDGET_MS, check_budget
from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.runtime.registry import AUTO, Registry, default_registry

if TYPE_CHECKING:
    from sr_deploy.archs.base import SRNet
    from sr_deploy.runtime.base import Backend


@dataclass(frozen=True)
class BenchSettings:
    """How to measure: the flags of ``srdeploy bench`` that are not about inputs or outputs."""

    backend: str = "auto"
    precision: str = "fp32"
    device: str = "auto"
    budget_ms: float = DEFAULT_BUDGET_MS
    warmup: int = 3
    repeat: int = 3
    seed: int = 0

    cuda_graphs: bool = False
    compile_mode: str | None = None
    #: --onnx: the int8 Q/DQ graph for --precision int8 (and the int8 rows of --backend all).
    int8_onnx: str | None = None

    def validate(self, registry: Registry | None = None) -> None:
        """The checks that need nothing but the flags (see check_device_options for those that need the device)."""
        from sr_deploy.runtime.factory import check_kind_options
        from sr_deploy.runtime.torch_backend import TorchOptions, check_torch_options

        if self.repeat < 1:
            raise SRDeployError(f"--repeat must be >= 1 (timed passes over the set), got {self.repeat}")
        if self.warmup < 0:
            raise SRDeployError(f"--warmup must be >= 0, got {self.warmup}")
        check_budget(self.budget_ms)
        plan_rows(self.backend, self.precision, best_precision="fp32", int8_graph=self.int8_onnx, registry=registry)
        # Names and combinations of the options; "cuda" here so that only the device check refuses CUDA graphs.
        check_torch_options(TorchOptions(cuda_graphs=self.cuda_graphs, compile_mode=self.compile_mode), "cuda")
        if self.backend != ALL:
            check_kind_options(
                self.backend, cuda_graphs=self.cuda_graphs, compile_mode=self.compile_mode, registry=registry
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "budget_ms": self.budget_ms,
            "warmup": self.warmup,
            "repeat": self.repeat,
            "seed": self.seed,
            "cuda_graphs": self.cuda_graphs,
            "compile": self.compile_mode,
            "int8_onnx": self.int8_onnx,
        }


#: Builds a ready (not yet prepared) backend for a row; the default is sr_deploy.runtime.factory.make_backend.
BackendMaker = Callable[[RowPlan, "SRNet", str, str], "Backend"]
#: Says which backend kinds can run here: None = usable, else why not.
Availability = Callable[[], dict[str, str | None]]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return device


def gpu_visible() -> bool:
    """A CUDA GPU that torch can use, or at least an NVIDIA driver (TensorRT and ONNX Runtime do not need torch's)."""
    import torch

    from sr_deploy.runtime.ort_backend import gpu_present

    return bool(torch.cuda.is_available()) or gpu_present()


def check_device_options(settings: BenchSettings, device: str, *, gpu: bool | None = None) -> None:
    """The checks that need the resolved `device`: --device cuda without a GPU, CUDA graphs on the CPU. One line
    each, naming the flag; `gpu` says whether a GPU is visible (default: ask the machine)."""
    from sr_deploy.runtime.torch_backend import TorchOptions, check_torch_options

    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise SRDeployError(f"--device {settings.device!r}: expected auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not (gpu_visible() if gpu is None else gpu):
        raise MissingDependencyError(
            f"--device {settings.device}: no CUDA GPU is visible on this machine (no NVIDIA driver, and torch "
            "sees none); run on a GPU machine or use --device cpu"
        )
    check_torch_options(TorchOptions(cuda_graphs=settings.cuda_graphs, compile_mode=settings.compile_mode), kind)


def _factory_maker(
    plan: RowPlan,
    model: SRNet,
    device: str,
    weights_sha256: str,
    *,
    references: Sequence[Any] | None = None,
    registry: Registry | None = None,
) -> Backend:
    """`references`: the bf16 gate's images (--reference-dir); None lets the factory find its default."""
    from sr_deploy.runtime.factory import graph_cache, make_backend

    # Seeded random weights have no hash: their graph is made in a temporary folder, never cached.
    backend: Backend = make_backend(
        plan.kind,
        model,
        precision=plan.precision,
        device=device,
        weights_sha256=weights_sha256,
        work_dir=graph_cache() if weights_sha256 else None,
        cuda_graphs=plan.cuda_graphs,
        compile_mode=plan.compile_mode,
        references=references,
        int8_graph=Path(plan.int8_graph) if plan.int8_graph is not None else None,
        registry=registry,
    )
    return backend


def _factory_availability() -> dict[str, str | None]:
    from sr_deploy.runtime.factory import available_backends

    found: dict[str, str | None] = available_backends()
    return found


def check_backend_available(backend: str, availability: Availability | None = None) -> dict[str, str | None]:
    """Raise (one line: what is missing) when a single named backend cannot run here; return the availability."""
    avail = (availability or _factory_availability)()
    if backend not in (AUTO, ALL) and avail.get(backend) is not None:
        raise MissingDependencyError(f"backend {backend} is not available here: {avail[backend]}")
    return avail


def run_bench(
    images: Sequence[BenchImage],
    models: BenchModels,
    settings: BenchSettings,
    *,
    inputs: dict[str, Any],
    make: BackendMaker | None = None,
    availability: Availability | None = None,
    hr_loader: HRLoader | None = read_hr,
    progress: ProgressHook | None = None,
    environment: dict[str, Any] | None = None,
    references: Sequence[Any] | None = None,
    registry: Registry | None = None,
) -> BenchReport:
    """Measure every planned row on the same images in one process and assemble the report.

    A single named backend that cannot run here is an error (one line, what is missing). With ``all``, a row
    that cannot run is kept in the table as skipped, with the reason, so the table always has the same rows.
    `references` (--reference-dir): the images of the bf16 accuracy gate, for the default factory. `registry`: the
    backends (default: srdeploy's), for the default factory and availability too.
    """
    settings.validate(registry)
    device = resolve_device(settings.device)
    check_device_options(settings, device)
    # Taken before measuring, so the load average shows what else was running, not this benchmark itself.
    env = environment if environment is not None else collect_environment()
    plans = plan_rows(
        settings.backend,
        settings.precision,
        best_precision=best_torch_precision(device),
        device=device,
        cuda_graphs=settings.cuda_graphs,
        compile_mode=settings.compile_mode,
        int8_graph=settings.int8_onnx,
        registry=registry,
    )
    single = settings.backend != ALL
    reg = registry or default_registry()
    warming = frozenset(d.name for d in reg if d.prepare_runs_forward)
    # Looked up at call time (not as default arguments) so the factory is imported only when a run needs it; only
    # what was given is passed on, so a stand-in factory takes what the default one takes.
    options: dict[str, Any] = {}
    if references is not None:
        options["references"] = references
    if registry is not None:
        options["registry"] = registry
    if make is None and options:

        def make_with_options(row: RowPlan, net: SRNet, dev: str, sha: str) -> Backend:
            return _factory_maker(row, net, dev, sha, **options)

        make = make_with_options
    make = make or _factory_maker
    if availability is None and registry is not None:
        availability = registry.available
    avail = check_backend_available(settings.backend, availability)
    want_psnr = hr_loader is not None and not models.random_weights and any(i.hr_path for i in images)
    rows: list[RowResult] = []
    for plan in plans:
        reason = avail.get(plan.kind) or plan.skip_reason
        if not single and reason is not None:
            rows.append(RowResult(plan=plan, status="skipped", reason=reason))
            continue
        model = models.clb if plan.model == "clb" else models.deploy
        if model is None:
            rows.append(RowResult(plan=plan, status="skipped", reason="training-time model not loaded"))
            continue
        try:
            rows.append(
                _measure_row(
                    make, plan, model, device, models, images, settings, want_psnr, hr_loader, progress, warming
                )
            )
        except SRDeployError as e:
            if single:
                raise
            rows.append(RowResult(plan=plan, status="skipped", reason=str(e)))
        except Exception as e:
            # In a comparison table one broken runtime must not hide the others; alone, it is the answer.
            if single:
                raise
            rows.append(RowResult(plan=plan, status="failed", reason=f"{type(e).__name__}: {e}"))
    headline = finish_rows(rows, budget_ms=settings.budget_ms)
    notes = _notes(models, images, inputs, env, want_psnr, several_rows=not single)
    return BenchReport(
        settings={**settings.to_dict(), "resolved_device": device},
        model=models.to_dict(),
        inputs=inputs,
        environment=env,
        rows=rows,
        headline=headline.plan.key if headline else None,
        notes=notes,
    )


def _measure_row(
    make: BackendMaker,
    plan: RowPlan,
    model: SRNet,
    device: str,
    models: BenchModels,
    images: Sequence[BenchImage],
    settings: BenchSettings,
    want_psnr: bool,
    hr_loader: HRLoader | None,
    progress: ProgressHook | None,
    warming: frozenset[str],
) -> RowResult:
    """Build, prepare (untimed: the challenge did not time model construction either), measure, release.

    A backend in `warming` is not prepared: its `prepare` is a warm-up forward, and the challenge did no warm-up,
    so its first image stays as cold as it was there (the others' `prepare` only allocates or compiles)."""
    backend = make(plan, model, device, models.weights_sha256)
    if plan.kind == AUTO:
        # Name the row after what `auto` chose, so the progress, the table and the verdict say which runtime ran.
        kind = backend.info.name
        plan = replace(plan, key=f"{kind}-{plan.precision}", title=f"{kind} {plan.precision} (auto)", kind=kind)
    try:
        prepared = backend.info.name not in warming
        prepare_ms = 0.0
        if prepared:
            t0 = time.perf_counter_ns()
            backend.prepare((1, 3, max(i.height for i in images), max(i.width for i in images)))
            prepare_ms = (time.perf_counter_ns() - t0) / 1e6
        row = measure_backend(
            backend,
            plan,
            images,
            warmup=settings.warmup,
            repeat=settings.repeat,
            scale=models.deploy.spec.scale,
            hr_loader=hr_loader if want_psnr else None,
            progress=progress,
        )
        row.timing.update(prepare_called=prepared, prepare_ms=prepare_ms)
        return row
    finally:
        backend.close()


def random_weights_note(arch: str, source: str) -> str:
    """The plain statement a run without --weights owes its reader."""
    return (
        f"No --weights: {arch} with {source} weights. The timing is that of the real model, but the PSNR would be "
        "meaningless and is not shown."
    )


def _notes(
    models: BenchModels,
    images: Sequence[BenchImage],
    inputs: dict[str, Any],
    environment: dict[str, Any] | None,
    want_psnr: bool,
    several_rows: bool,
) -> list[str]:
    notes = []
    if models.random_weights:
        notes.append(random_weights_note(models.arch, models.weights_source))
    elif any(i.hr_path for i in images) and want_psnr:
        notes.append(
            f"PSNR: RGB (the challenge's metric: NTIRE 2022 ESR test_demo.py ranks by it) and Y (BT.601, as most SR "
            f"papers tabulate), {PSNR_CROP_BORDER}-pixel border, uint8, from each backend's own output."
        )
    if inputs.get("kind") == "synthetic":
        notes.append(
            "Synthetic inputs (seeded uniform noise): a convolutional network's time does not depend on content."
        )
    if several_rows:
        notes.append(
            "Rows run one after another in one process; each row's first image is cold for that backend, but "
            "process-wide caches (e.g. oneDNN kernels for the same shapes) may already be warm from earlier rows."
        )
    if environment and environment.get("loaded_machine"):
        notes.append(
            f"Other processes kept {environment.get('other_processes_cpus')} of {environment.get('cpu_count')} CPUs "
            f"busy just before measuring (load average {environment.get('load_average')}): times are pessimistic."
        )
    return notes
