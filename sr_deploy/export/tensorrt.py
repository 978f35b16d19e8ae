"""The thin TensorRT builder: carries out what `sr_deploy.trt_plan` decides, for TensorRT 10.x and 11.x.

`tensorrt` is imported lazily inside functions, so this module imports (and its logic is testable) anywhere; whether
TensorRT, pycuda and a GPU are there is `sr_deploy.trt_env`'s question. The builder never imports the runtime: it is
handed an `EngineOpener` (the runtime's `TensorRTBackend.from_serialized`) to run each new engine through its audit
and gate, and the runtime composes "build a model's engine, then open it" (`runtime.trt_backend.backend_for_model`).

One engine per precision:
parse the ONNX (errors name the node) -> network flags from the precision plan -> profile(s), workspace limit,
optimization level, DETAILED profiling verbosity, timing cache per (TensorRT version, GPU), progress bar ->
serialize -> inspector JSON -> precision audit -> accuracy gate against ONNX Runtime FP32 -> engine + sidecar,
written atomically. A matching cached engine is reused; a stale one is rebuilt, saying why.

The request takes typed values (precisions, shapes): flag text is parsed in `sr_deploy.commands.tensorrt`.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.fileio import sha256_file, write_bytes_atomic, write_text_atomic
from sr_deploy.precision import Precision, parse_precision
from sr_deploy.trt_env import detect_gpu, require_tensorrt
from sr_deploy.trt_plan.engine_key import (
    EngineKey,
    GpuInfo,
    engine_filename,
    model_name_from_onnx,
    sidecar_path,
    timing_cache_filename,
)
from sr_deploy.trt_plan.gate import GateReport, GateThresholds, accuracy_gate, gate_inputs
from sr_deploy.trt_plan.inspector import PrecisionAudit, audit_int8, audit_precision, parse_inspector_json
from sr_deploy.trt_plan.profiles import (
    ProfilePlan,
    Shape4,
    ShapeProfile,
    check_profile_against_model,
    check_profiles_min_size,
    default_profile_plan,
    image_sizes_in_folder,
    profiles_from_sizes,
)
from sr_deploy.trt_plan.sidecar import EngineSidecar, cache_decision, load_sidecar
from sr_deploy.trt_plan.versions import (
    TRT_FLOAT_PRECISIONS,
    TRT_PRECISIONS,
    PrecisionPlan,
    Route,
    parse_trt_version,
    plan_precision,
)
from sr_deploy.trt_plan.workspace import suggest_workspace_gb

if TYPE_CHECKING:
    import tensorrt as trt
    from rich.console import Console
    from rich.progress import Progress

    from sr_deploy.archs.base import SRNet

MAX_OPT_LEVEL = 5
# Words TensorRT uses when tactics or the whole build failed for lack of scratch memory.
_MEMORY_WORDS = ("workspace", "out of memory", "insufficient memory", "memory allocation", "scratch")


# --------------------------------------------------------------------------------------------------------------
# Inputs and options
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxGraphs:
    """The ONNX exports at hand: the FP32 graph (also the accuracy reference) and, for fp16, the FP16 graph."""

    fp32: Path | None = None
    fp16: Path | None = None
    #: The int8 Q/DQ graph (`srdeploy quantize`); its gate's reference is still the FP32 graph.
    int8: Path | None = None

    def for_plan(self, plan: PrecisionPlan) -> Path:
        path = {"fp16": self.fp16, "int8": self.int8}.get(plan.onnx_graph, self.fp32)
        if path is None:
            if plan.onnx_graph == "int8":
                raise SRDeployError(
                    "--precision int8 needs the int8 Q/DQ graph: --onnx-int8 model.int8.onnx (srdeploy quantize); "
                    "TensorRT 11 has no INT8 builder flag or calibrator"
                )
            if plan.onnx_graph == "fp16":
                raise SRDeployError(
                    f"--precision fp16 ({plan.route}) needs the FP16 ONNX graph: pass --onnx-fp16 "
                    "or --weights (TensorRT 11 has no FP16 builder flag)"
                )
            raise SRDeployError("--onnx: the FP32 ONNX graph is needed (it is also the accuracy reference)")
        if not path.is_file():
            raise SRDeployError(f"--onnx {path}: file not found")
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32": None if self.fp32 is None else str(self.fp32),
            "fp16": None if self.fp16 is None else str(self.fp16),
            "int8": None if self.int8 is None else str(self.int8),
        }


@dataclass(frozen=True)
class BuildOptions:
    engines_dir: Path = Path("engines")
    workspace_gb: float = 4.0
    opt_level: int = 3
    rebuild: bool = False
    route: Route | None = None  # fp16 and int8: "strongly-typed" (default) or "builder-flag" (10.x)
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise SRDeployError(f"--opt-level {self.opt_level}: expected 0..{MAX_OPT_LEVEL}")
        if not self.workspace_gb > 0:
            raise SRDeployError(f"--workspace-gb {self.workspace_gb}: expected a positive size in GiB")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * 2**30)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engines_dir": str(self.engines_dir),
            "workspace_gb": self.workspace_gb,
            "opt_level": self.opt_level,
            "rebuild": self.rebuild,
            "route": self.route,
            "thresholds": self.thresholds.to_dict(),
        }


@dataclass(frozen=True)
class BuildResult:
    precision: Precision
    engine_path: Path
    sidecar: EngineSidecar
    reused: bool
    rebuild_reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "engine": str(self.engine_path),
            "reused": self.reused,
            "rebuild_reasons": list(self.rebuild_reasons),
            "sidecar": self.sidecar.to_dict(),
        }


class EngineUnderTest(Protocol):
    """A new engine, opened to be audited and gated before it is written (the runtime's TensorRTBackend is one)."""

    @property
    def engine(self) -> trt.ICudaEngine: ...

    @property
    def context(self) -> trt.IExecutionContext: ...

    @property
    def io_names(self) -> dict[str, str]: ...

    def prepare(self, max_shape: Shape4) -> None: ...

    def bind_shape(self, shape: Shape4) -> None: ...

    def run(self, lr: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class EngineOpener(Protocol):
    """Opens a serialized engine to run it: the builder is handed one (`TensorRTBackend.from_serialized`), so the
    runtime may import the builder and never the other way round."""

    def __call__(self, blob: bytes, profiles: ProfilePlan, precision: Precision, *, source: str) -> EngineUnderTest: ...


# --------------------------------------------------------------------------------------------------------------
# ONNX facts the builder needs (no TensorRT)
# --------------------------------------------------------------------------------------------------------------


def onnx_input_dims(path: Path) -> tuple[str, list[int | str | None]]:
    """Name and shape of the ONNX graph's single input (ints fixed, names or None dynamic)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise SRDeployError(f"--onnx {path}: not a readable ONNX model ({type(e).__name__})") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise SRDeployError(f"--onnx {path}: expected one image input, found {len(inputs)}")
    dims: list[int | str | None] = []
    for d in inputs[0].type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return inputs[0].name, dims


def onnx_graph_precision(path: Path) -> Precision:
    """'fp16' when the graph's weights are half precision, else 'fp32' (tells FP16 exports from FP32 ones)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    # srdeploy's exports say so in their metadata; an FP16 export may keep its last conv in FP32.
    declared = {m.key: m.value for m in model.metadata_props}.get("precision")
    if declared == "int8" or any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if declared in TRT_FLOAT_PRECISIONS:
        return parse_precision(declared, "ONNX metadata precision", TRT_FLOAT_PRECISIONS)
    # Any other graph: whichever type holds most weight elements.
    elements = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for init in model.graph.initializer:
        if init.data_type in elements:
            elements[init.data_type] += int(np.prod(init.dims)) if len(init.dims) else 1
    return "fp16" if elements[onnx.TensorProto.FLOAT16] > elements[onnx.TensorProto.FLOAT] else "fp32"


def ort_reference_outputs(onnx_fp32: Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime FP32 outputs on the CPU: the reference every engine is compared with."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_fp32), providers=["CPUExecutionProvider"])
    name = str(session.get_inputs()[0].name)
    return [np.asarray(session.run(None, {name: x})[0], dtype=np.float32) for x in inputs]


# --------------------------------------------------------------------------------------------------------------
# TensorRT calls
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BuildLog:
    """What the TensorRT logger said during a build: errors and warnings, kept to explain a failure."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _make_logger(record: BuildLog) -> trt.ILogger:
    """A logger that prints warnings and keeps errors, so a failed build can say why in one line."""
    import tensorrt as trt

    class CollectingLogger(trt.ILogger):  # type: ignore[misc, unused-ignore]  # Any without the stubs
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind trampolines need the base initialised explicitly

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                record.errors.append(msg)
                print(f"[TensorRT] error: {msg}")
            elif severity == trt.ILogger.Severity.WARNING:
                record.warnings.append(msg)
                print(f"[TensorRT] warning: {msg}")

    return CollectingLogger()


@dataclass
class _ProgressBar:
    """The monitor handed to TensorRT, and the rich display it feeds (stopped by the caller after the build)."""

    monitor: trt.IProgressMonitor
    progress: Progress


def _make_progress_bar(console: Console | None) -> _ProgressBar | None:
    """A rich progress bar fed by the builder's phases, where this TensorRT has IProgressMonitor (>= 10.0)."""
    import tensorrt as trt

    if console is None or not hasattr(trt, "IProgressMonitor"):
        return None
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console)

    class RichProgressMonitor(trt.IProgressMonitor):  # type: ignore[misc, unused-ignore]  # Any without stubs
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # pybind trampolines need the base initialised explicitly
            self._tasks: dict[str, TaskID] = {}
            self._lock = threading.Lock()  # TensorRT may report from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                indent = "  " if parent_phase else ""
                self._tasks[phase_name] = progress.add_task(f"{indent}{phase_name}", total=max(1, num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                task = self._tasks.get(phase_name)
                if task is not None:
                    progress.update(task, completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                task = self._tasks.pop(phase_name, None)
                if task is not None:
                    progress.remove_task(task)

    return _ProgressBar(RichProgressMonitor(), progress)


def _network_flags(plan: PrecisionPlan) -> int:
    import tensorrt as trt

    flags = 0
    for name in plan.network_flags:
        if name == "STRONGLY_TYPED":
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        else:  # the plan never asks for EXPLICIT_BATCH (gone in 11); anything else is a bug in the plan
            raise SRDeployError(f"precision plan asks for unknown network flag {name!r}")
    return flags


def parse_onnx(parser: trt.OnnxParser, onnx_path: Path) -> None:
    """Parse into the parser's network; on failure, one line naming the node(s) TensorRT choked on."""
    if parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        return
    problems: list[str] = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        node = str(err.node_name()) if hasattr(err, "node_name") else ""
        op = str(err.node_operator()) if hasattr(err, "node_operator") else ""
        where = f"node {node!r} ({op})" if node else f"node #{int(err.node())}"
        problems.append(f"{where}: {err.desc()}")
    detail = "; ".join(problems) or "no details from the parser"
    raise SRDeployError(f"--onnx {onnx_path}: TensorRT could not parse it at {detail}")


def _configure(
    builder: trt.Builder,
    config: trt.IBuilderConfig,
    plan: PrecisionPlan,
    input_name: str,
    profiles: ProfilePlan,
    options: BuildOptions,
) -> None:
    import tensorrt as trt

    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the audit needs per-layer types
    if plan.set_fp16_flag:
        # 10.x weak typing only; the plan refuses this route on 11, and this guards a 10.x without the flag.
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise SRDeployError("--route builder-flag: this TensorRT has no BuilderFlag.FP16; use strongly-typed")
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.set_int8_flag:
        # 10.x weakly typed Q/DQ networks only; the plan refuses this route on 11, which has no BuilderFlag.INT8.
        if not hasattr(trt.BuilderFlag, "INT8"):
            raise SRDeployError("--route builder-flag: this TensorRT has no BuilderFlag.INT8; use strongly-typed")
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.clear_tf32_flag and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for p in profiles.profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
        config.add_optimization_profile(profile)


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> bytes:
    """Load the per (TensorRT, GPU) cache into `config`; returns what was on disk, to detect concurrent writers."""
    blob = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(blob)
    except Exception:  # TensorRT raises its own error types on a corrupt blob
        cache = None
    if cache is None:  # corrupt or foreign: start afresh rather than fail the build
        print(f"warning: ignoring unreadable timing cache {path.name}")
        blob = b""
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache is only valid for its exact version
    return blob


def _merge_timing_cache(config: trt.IBuilderConfig, path: Path, loaded: bytes) -> None:
    """Write the grown cache back, merged with whatever another build wrote meanwhile."""
    cache = config.get_timing_cache()
    on_disk = path.read_bytes() if path.is_file() else b""
    if on_disk and on_disk != loaded:
        other = config.create_timing_cache(on_disk)
        if other is not None:
            cache.combine(other, False)
    write_bytes_atomic(path, bytes(cache.serialize()), "timing cache")


def workspace_error(record: BuildLog, options: BuildOptions) -> SRDeployError | None:
    """A failed build whose log blames memory: say so, and suggest a size (from the tactics' requests if logged)."""
    text = " ".join(record.errors).lower()
    if any(word in text for word in _MEMORY_WORDS):
        suggestion = suggest_workspace_gb(options.workspace_bytes, [*record.errors, *record.warnings])
        return SRDeployError(
            f"--workspace-gb {options.workspace_gb:g}: too small to build this engine; "
            f"try --workspace-gb {suggestion:g}"
        )
    return None


def build_serialized_engine(
    onnx_path: Path,
    plan: PrecisionPlan,
    profiles: ProfilePlan,
    options: BuildOptions,
    timing_cache: Path,
    console: Console | None = None,
) -> bytes:
    """Parse, configure and build one engine; returns the serialized plan."""
    import tensorrt as trt

    record = BuildLog()
    logger = _make_logger(record)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(plan))
    parser = trt.OnnxParser(network, logger)
    parse_onnx(parser, onnx_path)
    if int(network.num_inputs) != 1:
        raise SRDeployError(f"--onnx {onnx_path}: expected one input, the network has {network.num_inputs}")
    input_name = str(network.get_input(0).name)
    config = builder.create_builder_config()
    _configure(builder, config, plan, input_name, profiles, options)
    bar = _make_progress_bar(console if options.progress else None)
    if bar is not None:
        config.progress_monitor = bar.monitor
    loaded = _load_timing_cache(config, timing_cache)
    if bar is not None:
        bar.progress.start()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if bar is not None:
            bar.progress.stop()
    if serialized is None:
        raise workspace_error(record, options) or SRDeployError(
            f"TensorRT could not build {onnx_path.name} ({plan.precision}): "
            + ("; ".join(record.errors[-3:]) or "no error was logged")
        )
    _merge_timing_cache(config, timing_cache, loaded)
    return bytes(serialized)


def inspect_engine(engine: trt.ICudaEngine, context: trt.IExecutionContext) -> str:
    """The engine inspector's JSON. Needs ProfilingVerbosity.DETAILED at build time for layer precisions, and a
    context with its input shape set: without one, dynamic shapes show as -1 and formats (with their data types,
    on 10.x) are left out."""
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# --------------------------------------------------------------------------------------------------------------
# One precision, end to end
# --------------------------------------------------------------------------------------------------------------


def _audit_and_gate(
    blob: bytes,
    plan: PrecisionPlan,
    profiles: ProfilePlan,
    reference_onnx: Path,
    options: BuildOptions,
    open_engine: EngineOpener,
    expected_int8_convs: int | None = None,
) -> tuple[PrecisionAudit, GateReport, dict[str, str]]:
    backend = open_engine(blob, profiles, plan.precision, source=f"new {plan.precision} engine")
    try:
        backend.prepare(profiles.max_shape)
        backend.bind_shape(profiles.profiles[0].opt)
        report = parse_inspector_json(inspect_engine(backend.engine, backend.context))
        audit = (
            audit_int8(report, expected_int8_convs)
            if plan.precision == "int8"
            else audit_precision(report, plan.precision)
        )
        if not audit.ok:
            # Never keep (or name) an engine after a precision it does not have: rf-detr #1453.
            raise GateFailedError(f"{plan.precision} engine not kept: {audit.message}")
        inputs = gate_inputs(profiles)
        outputs = [backend.run(x) for x in inputs]
        io_names = backend.io_names
    finally:
        backend.close()
    gate = accuracy_gate(ort_reference_outputs(reference_onnx, inputs), outputs, plan.precision, options.thresholds)
    if not gate.passed:
        raise GateFailedError(f"{plan.precision} engine not kept: {'; '.join(gate.reasons)}")
    return audit, gate, io_names


def build_engine(
    graphs: OnnxGraphs,
    model_name: str,
    precision: Precision,
    profiles: ProfilePlan,
    options: BuildOptions,
    open_engine: EngineOpener,
    console: Console | None = None,
) -> BuildResult:
    """Reuse the matching cached engine, or build, audit, gate (running it through `open_engine`) and write a new
    one with its sidecar."""
    from sr_deploy import __version__

    version = require_tensorrt()
    trt_version = parse_trt_version(version)
    gpu: GpuInfo = detect_gpu()
    plan = plan_precision(precision, trt_version, options.route)
    onnx_path = graphs.for_plan(plan)
    reference = graphs.for_plan(plan_precision("fp32", trt_version))
    _, model_dims = onnx_input_dims(onnx_path)
    for p in profiles.profiles:
        check_profile_against_model(p, model_dims)

    key = EngineKey(
        onnx_sha256=sha256_file(onnx_path),
        precision=plan.precision,
        route=plan.route,
        profiles=profiles.profiles,
        trt_version=version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        opt_level=options.opt_level,
        workspace_bytes=options.workspace_bytes,
    )
    options.engines_dir.mkdir(parents=True, exist_ok=True)
    engine_path = options.engines_dir / engine_filename(model_name, precision, gpu.name, trt_version)
    reasons: list[str] = ["--rebuild"] if options.rebuild else []
    if not options.rebuild:
        try:
            cached = load_sidecar(engine_path) if engine_path.is_file() else None
        except SRDeployError as e:
            cached, reasons = None, [str(e)]
        reuse, why = cache_decision(cached, key, engine_path.is_file())
        if reuse and cached is not None:
            return BuildResult(precision, engine_path, cached, reused=True)
        reasons = reasons or why

    timing_cache = options.engines_dir / timing_cache_filename(gpu.name, gpu.compute_capability, trt_version)
    start = time.perf_counter()
    blob = build_serialized_engine(onnx_path, plan, profiles, options, timing_cache, console)
    build_seconds = time.perf_counter() - start
    int8_convs = _int8_convs(onnx_path, plan)
    audit, gate, io_names = _audit_and_gate(blob, plan, profiles, reference, options, open_engine, int8_convs)

    sidecar = EngineSidecar(
        key=key,
        engine_file=engine_path.name,
        engine_bytes=len(blob),
        engine_sha256=_sha256_bytes(blob),
        build_seconds=build_seconds,
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        plan=plan.to_dict(),
        audit=audit,
        gate=gate,
        io_names=io_names,
        srdeploy_version=__version__,
    )
    # Old sidecar first: a crash between the two writes leaves an engine without a sidecar (refused, rebuilt),
    # never a new engine described by an old sidecar.
    sidecar_path(engine_path).unlink(missing_ok=True)
    write_bytes_atomic(engine_path, blob, "engine")
    write_text_atomic(sidecar_path(engine_path), sidecar.to_json(), "engine sidecar")
    return BuildResult(precision, engine_path, sidecar, reused=False, rebuild_reasons=tuple(reasons))


def build_engines(
    graphs: OnnxGraphs,
    model_name: str,
    precisions: Sequence[Precision],
    profiles: ProfilePlan,
    options: BuildOptions,
    open_engine: EngineOpener,
    console: Console | None = None,
) -> list[BuildResult]:
    """`build_engine` for each precision, in order; the first failure stops with its one-line reason."""
    require_tensorrt()  # before any work, so a machine without TensorRT gets the one line at once
    return [build_engine(graphs, model_name, p, profiles, options, open_engine, console) for p in precisions]


def _int8_convs(onnx_path: Path, plan: PrecisionPlan) -> int | None:
    """How many convs the int8 graph quantizes (the audit's expectation); None for float plans."""
    if plan.precision != "int8":
        return None
    import onnx

    from sr_deploy.export.quantize import audit_qdq

    return audit_qdq(onnx.load(str(onnx_path), load_external_data=False)).quantized_convs


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# `srdeploy export-trt`: the one library call behind the command
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportTrtRequest:
    """What to build, as typed values (`sr_deploy.commands.tensorrt` turns the flags' text into them)."""

    onnx: Path | None = None
    onnx_fp16: Path | None = None
    weights: str | None = None
    precisions: tuple[Precision, ...] = TRT_FLOAT_PRECISIONS
    #: --min/--opt/--max; None: from `profile_from`, else the default profile.
    profile: ShapeProfile | None = None
    profile_from: Path | None = None
    split_orientation: bool | None = None
    options: BuildOptions = field(default_factory=BuildOptions)
    #: --onnx-int8: the Q/DQ graph of `srdeploy quantize`, for int8 in `precisions`.
    onnx_int8: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx": None if self.onnx is None else str(self.onnx),
            "onnx_fp16": None if self.onnx_fp16 is None else str(self.onnx_fp16),
            "onnx_int8": None if self.onnx_int8 is None else str(self.onnx_int8),
            "weights": self.weights,
            "precisions": list(self.precisions),
            "profile": None if self.profile is None else self.profile.to_dict(),
            "profile_from": None if self.profile_from is None else str(self.profile_from),
            "split_orientation": self.split_orientation,
            "options": self.options.to_dict(),
        }


def resolve_profiles(request: ExportTrtRequest) -> ProfilePlan:
    """Profiles from the shape flags, from a folder of images, or the default; never from two sources."""
    if request.profile_from is not None:
        if request.profile is not None:
            raise SRDeployError("--profile-from and --min/--opt/--max: give one, not both")
        sizes = image_sizes_in_folder(request.profile_from)
        return profiles_from_sizes(sizes, split=request.split_orientation)
    if request.split_orientation:
        raise SRDeployError("--split-orientation needs --profile-from DIR (the image sizes to split)")
    if request.profile is None:
        return default_profile_plan()
    return ProfilePlan((request.profile,), "from --min/--opt/--max")


def _sibling_graph(path: Path, precision: Precision) -> Path | None:
    """`imdn-b7.onnx` / `imdn-b7-fp32.onnx` <-> `imdn-b7-fp16.onnx`: the other export, if it sits beside."""
    base = model_name_from_onnx(path)
    names = [f"{base}-{precision}.onnx", f"{base}_{precision}.onnx"] + ([f"{base}.onnx"] if precision == "fp32" else [])
    for name in names:
        candidate = path.with_name(name)
        if candidate.is_file() and candidate != path:
            return candidate
    return None


def resolve_onnx_graphs(onnx: Path, onnx_fp16: Path | None) -> OnnxGraphs:
    """The FP32 and FP16 graphs from --onnx (either kind, told apart by its weights) and --onnx-fp16 or siblings."""
    for flag, p in (("--onnx", onnx), ("--onnx-fp16", onnx_fp16)):
        if p is not None and not p.is_file():
            raise SRDeployError(f"{flag} {p}: file not found")
    kind = onnx_graph_precision(onnx)
    if kind == "int8":
        raise SRDeployError(
            f"--onnx {onnx}: is an int8 Q/DQ graph; give it to --onnx-int8, and the FP32 graph (the accuracy "
            "reference) to --onnx or the weights to --weights"
        )
    if onnx_fp16 is not None and onnx_graph_precision(onnx_fp16) != "fp16":
        raise SRDeployError(f"--onnx-fp16 {onnx_fp16}: its weights are FP32; expected the FP16 export")
    if kind == "fp16":
        if onnx_fp16 is not None:
            raise SRDeployError(f"--onnx {onnx}: is an FP16 graph; give the FP32 graph to --onnx")
        return OnnxGraphs(fp32=_sibling_graph(onnx, "fp32"), fp16=onnx)
    return OnnxGraphs(fp32=onnx, fp16=onnx_fp16 or _sibling_graph(onnx, "fp16"))


def _reusable_onnx(path: Path, weights_sha256: str) -> bool:
    """An earlier export of the same weights: unchanged since it was written (its recorded sha256) and srdeploy's
    ONNX metadata says so. Keeps the engine cache key; a truncated or edited graph is exported again."""
    from sr_deploy.export.onnx import read_onnx_metadata
    from sr_deploy.fileio import digest_matches

    if not weights_sha256 or not digest_matches(path):
        return False

    try:
        return read_onnx_metadata(path).weights_sha256 == weights_sha256
    except SRDeployError:
        return False


def export_onnx_for_model(
    model: SRNet, model_name: str, weights_sha256: str, precisions: Sequence[Precision], out_dir: Path
) -> OnnxGraphs:
    """The ONNX graphs the engines need (FP32 always: it is the gate's reference), exported or reused."""
    from sr_deploy.export.onnx import export_onnx
    from sr_deploy.fileio import record_digest

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[Precision, Path] = {}
    for precision in TRT_FLOAT_PRECISIONS:
        if precision == "fp32" or precision in precisions:
            path = out_dir / f"{model_name}-{precision}.onnx"
            if not _reusable_onnx(path, weights_sha256):
                # FP32 I/O for both: the FP16 graph casts inside, so engines take and give float32 images.
                graph: Precision = "fp16" if precision == "fp16" else "fp32"  # the exporter's words
                report = export_onnx(model, path, precision=graph, io="fp32", weights_sha256=weights_sha256)
                record_digest(path, report.sha256)
            paths[precision] = path
    return OnnxGraphs(fp32=paths.get("fp32"), fp16=paths.get("fp16"))


def export_onnx_graphs(weights: str, precisions: Sequence[Precision], out_dir: Path) -> tuple[str, OnnxGraphs]:
    """Load weights (collapsed to the deploy form) and export the ONNX graphs the engines need."""
    from sr_deploy.checkpoints import load_model

    model, loaded = load_model(weights, form="plain")
    name = loaded.spec.name
    return name, export_onnx_for_model(model, name, loaded.sha256, precisions, out_dir)


def engine_for_model(
    model: SRNet,
    precision: Precision,
    open_engine: EngineOpener,
    *,
    weights_sha256: str = "",
    work_dir: Path | None = None,
) -> Path:
    """Build (or reuse) the engine for an in-memory model with the default profile; for the runtime's backend."""
    require_tensorrt()
    checked = parse_precision(precision, "--precision", TRT_PRECISIONS)
    root = work_dir if work_dir is not None else Path("engines")
    name = model.spec.name
    graphs = export_onnx_for_model(model, name, weights_sha256, (checked,), root / "onnx")
    options = BuildOptions(engines_dir=root, progress=False)
    return build_engine(graphs, name, checked, default_profile_plan(), options, open_engine).engine_path


def export_trt(
    request: ExportTrtRequest, open_engine: EngineOpener, console: Console | None = None
) -> list[BuildResult]:
    """Everything `srdeploy export-trt` does: check the flags, find or export the ONNX graphs, build the engines.

    Mistakes are reported before TensorRT is looked for; then a machine without TensorRT gets its one line before
    any export or build work starts.
    """
    if (request.onnx is None) == (request.weights is None):
        raise SRDeployError("give --onnx M.onnx or --weights W (one of them)")
    if request.weights is not None and request.onnx_fp16 is not None:
        raise SRDeployError("--onnx-fp16 goes with --onnx; with --weights the graphs are exported for you")
    if not request.precisions:
        raise SRDeployError("--precision: no precision to build")
    precisions = tuple(parse_precision(p, "--precision", TRT_PRECISIONS) for p in request.precisions)
    profiles = resolve_profiles(request)
    if request.onnx is not None and not request.onnx.is_file():
        raise SRDeployError(f"--onnx {request.onnx}: file not found")
    if ("int8" in precisions) != (request.onnx_int8 is not None):
        raise SRDeployError(
            "--precision int8 needs --onnx-int8 model.int8.onnx (srdeploy quantize)"
            if request.onnx_int8 is None
            else "--onnx-int8 goes with --precision int8"
        )
    if request.onnx_int8 is not None:
        from sr_deploy.export.quantize import check_int8_graph

        check_int8_graph(request.onnx_int8, flag="--onnx-int8")  # before TensorRT is looked for
    version = require_tensorrt()
    for p in precisions:  # refuse an impossible route (builder-flag on 11) before exporting anything
        plan_precision(p, parse_trt_version(version), request.options.route)

    if request.weights is not None:
        model_name, graphs = export_onnx_graphs(request.weights, precisions, request.options.engines_dir / "onnx")
    else:
        assert request.onnx is not None
        graphs = resolve_onnx_graphs(request.onnx, request.onnx_fp16)
        model_name = model_name_from_onnx(request.onnx)
    if request.onnx_int8 is not None:
        graphs = _with_int8(graphs, request.onnx_int8)
    _check_min_size(graphs, profiles)
    return build_engines(graphs, model_name, precisions, profiles, request.options, open_engine, console)


def _with_int8(graphs: OnnxGraphs, onnx_int8: Path) -> OnnxGraphs:
    """`graphs` plus the int8 graph, which must stand for the same weights as the FP32 reference."""
    from sr_deploy.export.onnx import read_onnx_metadata
    from sr_deploy.export.quantize import check_int8_graph

    reference = graphs.fp32
    weights = ""
    if reference is not None:
        try:
            weights = read_onnx_metadata(reference).weights_sha256
        except SRDeployError:
            weights = ""  # a foreign FP32 graph: nothing to compare with
    check_int8_graph(onnx_int8, weights_sha256=weights, flag="--onnx-int8")
    return OnnxGraphs(fp32=graphs.fp32, fp16=graphs.fp16, int8=onnx_int8)


def _check_min_size(graphs: OnnxGraphs, profiles: ProfilePlan) -> None:
    """The architecture's smallest input, from the spec in the graph's metadata, against every profile."""
    from sr_deploy.archs.registry import arch_of
    from sr_deploy.export.onnx import read_onnx_metadata

    graph = graphs.fp32 or graphs.fp16
    if graph is None:
        return
    try:
        spec = read_onnx_metadata(graph).spec
    except SRDeployError:
        return  # a foreign graph: TensorRT's own shape checks are all there is
    check_profiles_min_size(profiles, arch_of(spec).min_input_size, spec.name)
