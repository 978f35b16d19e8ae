"""`srdeploy export-trt` and the TensorRT thin layer, on a machine without TensorRT (and with, where there is one)."""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from sr_deploy import trt_env
from sr_deploy.archs.base import SRNet
from sr_deploy.cli import main
from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.export import tensorrt as trt_export
from sr_deploy.precision import Precision
from sr_deploy.runtime import trt_backend
from sr_deploy.trt_plan.engine_key import EngineKey, GpuInfo, engine_filename, sidecar_path
from sr_deploy.trt_plan.gate import accuracy_gate, gate_inputs
from sr_deploy.trt_plan.inspector import audit_precision, parse_inspector_json
from sr_deploy.trt_plan.profiles import ProfilePlan, ShapeProfile, profile_from_flags, profiles_from_sizes
from sr_deploy.trt_plan.sidecar import EngineSidecar, load_sidecar
from sr_deploy.trt_plan.versions import TrtVersion, plan_precision

FIXTURES = Path(__file__).parent / "fixtures" / "trt"
HAS_TRT = trt_env.tensorrt_version() is not None
HAS_PYCUDA = importlib.util.find_spec("pycuda") is not None
needs_trt = pytest.mark.skipif(not (HAS_TRT and HAS_PYCUDA), reason="needs TensorRT, pycuda and an NVIDIA GPU")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["export-trt", *args])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    p = tmp_path / "imdn-b7.onnx"
    p.write_bytes(b"placeholder: the flags are checked before the graph is read")
    return p


# ------------------------------------------------------------------------------------------------------------------
# availability
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_stub_namespace_package_is_not_tensorrt() -> None:
    # With tensorrt-stubs installed, `import tensorrt` succeeds as an empty namespace package; that is not TensorRT.
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        assert not hasattr(tensorrt, "Builder")
    assert trt_env.tensorrt_version() is None
    with pytest.raises(MissingDependencyError, match=r"pip install 'srdeploy\[trt\]'"):
        trt_env.require_tensorrt()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_export_trt_without_tensorrt_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], onnx_file: Path) -> None:
    code, err = _run(capsys, "--onnx", str(onnx_file))
    assert code == 2
    assert err.count("\n") == 0
    assert err.startswith("srdeploy: error: TensorRT is not installed")
    assert "pip install 'srdeploy[trt]'" in err and "NVIDIA GPU" in err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_runtime_backend_without_tensorrt_is_missing_dependency(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        trt_backend.TensorRTBackend(tmp_path / "x.engine")


# ------------------------------------------------------------------------------------------------------------------
# flag mistakes: one line, exit 2, naming the flag (checked before TensorRT is looked for)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--min", "1x3x600x600", "--opt", "1x3x100x100", "--max", "1x3x510x510"], "--min 1x3x600x600 exceeds --opt"),
        (["--min", "1x3x64x64", "--opt", "1x3x100x100", "--max", "1x3x90x90"], "--opt 1x3x100x100 exceeds --max"),
        (["--opt", "1x3x64"], "--opt '1x3x64': expected NxCxHxW"),
        (["--min", "1x3x64x64", "--max", "1x3x90x90"], "--opt is required"),
        (["--precision", "int4"], "--precision 'int4': expected one of fp32, fp16, int8, both"),
        (
            ["--route", "fast"],
            "--route 'fast': expected one of plain, strongly-typed, builder-flag",
        ),  # int8 needs --onnx-int8: tests/test_trt_int8.py
        (["--opt-level", "9"], "--opt-level 9: expected 0..5"),
        (["--workspace-gb", "0"], "--workspace-gb 0"),
        (["--weights", "w.pth"], "give --onnx M.onnx or --weights W"),
        (["--split-orientation"], "--split-orientation needs --profile-from"),
    ],
)
def test_flag_mistakes_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], onnx_file: Path, args: list[str], expected: str
) -> None:
    code, err = _run(capsys, "--onnx", str(onnx_file), *args)
    assert code == 2 and err.count("\n") == 0
    assert expected in err


def test_missing_onnx_and_empty_profile_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = _run(capsys, "--onnx", str(tmp_path / "nope.onnx"))
    assert code == 2 and "--onnx" in err and "not found" in err
    empty = tmp_path / "imgs"
    empty.mkdir()
    code, err = _run(capsys, "--onnx", str(tmp_path / "nope.onnx"), "--profile-from", str(empty))
    assert code == 2 and "--profile-from" in err and "no images" in err
    code, err = _run(capsys, "--onnx", "x.onnx", "--profile-from", str(empty), "--opt", "1x3x8x8")
    assert code == 2 and "give one, not both" in err


def test_resolve_profiles_default_and_folder(tmp_path: Path) -> None:
    default = trt_export.resolve_profiles(trt_export.ExportTrtRequest(onnx=Path("m.onnx")))
    # the default covers DIV2K x4 LR validation images in both orientations
    assert default.covers((1, 3, 339, 510)) and default.covers((1, 3, 510, 339))
    static = ShapeProfile((1, 3, 100, 120), (1, 3, 100, 120), (1, 3, 100, 120))
    req = trt_export.ExportTrtRequest(onnx=Path("m.onnx"), profile=static)
    assert trt_export.resolve_profiles(req).profiles == (static,)


def test_the_command_layer_hands_the_export_layer_typed_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], onnx_file: Path
) -> None:
    seen: list[trt_export.ExportTrtRequest] = []

    def fake_export_trt(
        request: trt_export.ExportTrtRequest, open_engine: trt_export.EngineOpener, console: Console | None = None
    ) -> list[trt_export.BuildResult]:
        seen.append(request)
        return []

    monkeypatch.setattr(trt_export, "export_trt", fake_export_trt)
    args = ["--precision", "both", "--route", "builder-flag", "--min", "1x3x32x48", "--opt", "1x3x100x120"]
    code, _ = _run(capsys, "--onnx", str(onnx_file), *args)
    assert code == 0
    (request,) = seen
    assert request.precisions == ("fp32", "fp16") and request.options.route == "builder-flag"
    assert request.profile == ShapeProfile((1, 3, 32, 48), (1, 3, 100, 120), (1, 3, 100, 120))
    code, _ = _run(capsys, "--onnx", str(onnx_file), "--precision", "int8", "--onnx-int8", str(onnx_file))
    assert code == 0 and seen[-1].precisions == ("int8",) and seen[-1].profile is None


def test_the_export_layer_refuses_a_precision_tensorrt_does_not_build(onnx_file: Path) -> None:
    # Typed, yet not every shared precision word: refused in one line before TensorRT is looked for.
    with pytest.raises(SRDeployError, match=r"^--precision 'bf16': expected one of fp32, fp16, int8$"):
        trt_export.export_trt(trt_export.ExportTrtRequest(onnx=onnx_file, precisions=("bf16",)), _no_engine)
    with pytest.raises(SRDeployError, match="no precision to build"):
        trt_export.export_trt(trt_export.ExportTrtRequest(onnx=onnx_file, precisions=()), _no_engine)


FLAG_TEXT_PARSERS = {"expand_precisions", "parse_shape", "profile_from_flags", "parse_route"}


def test_only_the_command_layer_parses_flag_text() -> None:
    package = Path(trt_export.__file__).resolve().parents[1]
    callers = set()
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(("commands/", "trt_plan/")):
            continue  # the command layer calls them; trt_plan defines them
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name in FLAG_TEXT_PARSERS:
                    callers.add(f"{rel}:{node.lineno} {name}")
    assert callers == set()


def _no_engine(blob: bytes, profiles: ProfilePlan, precision: Precision, *, source: str) -> trt_export.EngineUnderTest:
    raise AssertionError("an engine was opened before the request was checked")


# ------------------------------------------------------------------------------------------------------------------
# ONNX graph resolution (real ONNX files, no TensorRT)
# ------------------------------------------------------------------------------------------------------------------


def _tiny_onnx(path: Path, dtype: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), dtype=np_dtype), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", dtype, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", dtype, [1, 3, "h", "w"])],
        [w],
    )
    # IR 9 / opset 17: what the ONNX Runtime and TensorRT versions we support all read
    onnx.save(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_graphs_are_told_apart_and_siblings_found(tmp_path: Path) -> None:
    from onnx import TensorProto

    fp32 = _tiny_onnx(tmp_path / "imdn-b7.onnx", TensorProto.FLOAT)
    assert trt_export.resolve_onnx_graphs(fp32, None) == trt_export.OnnxGraphs(fp32=fp32, fp16=None)
    fp16 = _tiny_onnx(tmp_path / "imdn-b7-fp16.onnx", TensorProto.FLOAT16)
    assert trt_export.onnx_graph_precision(fp16) == "fp16"
    assert trt_export.resolve_onnx_graphs(fp32, None) == trt_export.OnnxGraphs(fp32=fp32, fp16=fp16)
    assert trt_export.resolve_onnx_graphs(fp16, None) == trt_export.OnnxGraphs(fp32=fp32, fp16=fp16)
    with pytest.raises(SRDeployError, match=r"--onnx-fp16 .* FP32"):
        trt_export.resolve_onnx_graphs(fp32, fp32)
    name, dims = trt_export.onnx_input_dims(fp32)
    assert name == "input" and dims == [1, 3, "h", "w"]


def test_fp16_export_keeping_last_conv_fp32_is_still_fp16(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, numpy_helper

    path = _tiny_onnx(tmp_path / "m.onnx", TensorProto.FLOAT16)
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((3,), dtype=np.float32), "last_bias"))
    onnx.save(model, str(path))
    assert trt_export.onnx_graph_precision(path) == "fp16"  # most weight elements are half
    model.metadata_props.add(key="precision", value="fp32")
    onnx.save(model, str(path))
    assert trt_export.onnx_graph_precision(path) == "fp32"  # srdeploy's own metadata wins


def test_fp16_plan_without_fp16_graph_says_what_to_pass(tmp_path: Path) -> None:
    graphs = trt_export.OnnxGraphs(fp32=tmp_path / "m.onnx")
    plan = plan_precision("fp16", TrtVersion(11, 4, 0))
    with pytest.raises(SRDeployError, match="needs the FP16 ONNX graph: pass --onnx-fp16"):
        graphs.for_plan(plan)


def test_ort_reference_feeds_the_gate(tmp_path: Path) -> None:
    from onnx import TensorProto

    fp32 = _tiny_onnx(tmp_path / "tiny.onnx", TensorProto.FLOAT)  # 1x1 conv of ones: sums the channels
    plan = profiles_from_sizes([(9, 14), (14, 9)], split=True)
    inputs = gate_inputs(plan)
    ref = trt_export.ort_reference_outputs(fp32, inputs)
    expected = [np.repeat(x.sum(axis=1, keepdims=True), 3, axis=1) for x in inputs]
    assert accuracy_gate(ref, expected, "fp32").passed
    assert not accuracy_gate(ref, [e + 0.01 for e in expected], "fp32").passed


def test_unparseable_onnx_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(SRDeployError, match="not a readable ONNX model"):
        trt_export.onnx_input_dims(bad)


# ------------------------------------------------------------------------------------------------------------------
# engine checks before deserializing (no TensorRT needed)
# ------------------------------------------------------------------------------------------------------------------

L4 = GpuInfo("NVIDIA L4", "8.9")


def _engine_with_sidecar(tmp_path: Path, blob: bytes = b"serialized engine") -> Path:
    import hashlib

    engine = tmp_path / engine_filename("imdn-b7", "fp16", L4.name, "10.13.0.35")
    engine.write_bytes(blob)
    report = parse_inspector_json((FIXTURES / "inspector_10x_fp16.json").read_text())
    sidecar = EngineSidecar(
        key=EngineKey(
            onnx_sha256="a" * 64,
            precision="fp16",
            route="strongly-typed",
            profiles=(ShapeProfile((1, 3, 64, 64), (1, 3, 339, 510), (1, 3, 510, 510)),),
            trt_version="10.13.0.35",
            gpu_name=L4.name,
            compute_capability=L4.compute_capability,
            opt_level=3,
            workspace_bytes=4 << 30,
        ),
        engine_file=engine.name,
        engine_bytes=len(blob),
        engine_sha256=hashlib.sha256(blob).hexdigest(),
        build_seconds=1.0,
        built_at="2026-11-24T08:00:00+00:00",
        plan={},
        audit=audit_precision(report, "fp16"),
        gate=None,
    )
    sidecar_path(engine).write_text(sidecar.to_json())
    return engine


def test_engine_for_this_machine_is_accepted(tmp_path: Path) -> None:
    engine = _engine_with_sidecar(tmp_path)
    assert trt_backend.check_engine_for_machine(engine, "10.13.0.35", L4).key.precision == "fp16"


@pytest.mark.parametrize(
    ("version", "gpu", "why"),
    [
        ("11.4.0.0", L4, "another TensorRT (10.13.0.35; this machine: 11.4.0.0)"),
        ("10.13.0.35", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), "another GPU"),
    ],
)
def test_engine_from_elsewhere_is_refused_before_deserializing(
    tmp_path: Path, version: str, gpu: GpuInfo, why: str
) -> None:
    engine = _engine_with_sidecar(tmp_path)
    with pytest.raises(SRDeployError, match="rebuild it here") as e:
        trt_backend.check_engine_for_machine(engine, version, gpu)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_engine_without_sidecar_or_replaced_is_refused(tmp_path: Path) -> None:
    engine = _engine_with_sidecar(tmp_path)
    engine.write_bytes(b"another engine of other size")
    with pytest.raises(SRDeployError, match="does not match its sidecar"):
        trt_backend.check_engine_for_machine(engine, "10.13.0.35", L4)
    sidecar_path(engine).unlink()
    with pytest.raises(SRDeployError, match=r"sidecar .* is missing"):
        trt_backend.check_engine_for_machine(engine, "10.13.0.35", L4)
    with pytest.raises(SRDeployError, match="not found"):
        trt_backend.check_engine_for_machine(tmp_path / "none.engine", "10.13.0.35", L4)


# ------------------------------------------------------------------------------------------------------------------
# buffer management with a fake pycuda driver (numpy "device" memory)
# ------------------------------------------------------------------------------------------------------------------


class _FakeAlloc:
    def __init__(self, nbytes: int) -> None:
        self.mem = np.zeros(nbytes, dtype=np.uint8)
        self.freed = False

    def __int__(self) -> int:
        return int(self.mem.ctypes.data)

    def free(self) -> None:
        self.freed = True


class _FakeStream:
    handle = 1234

    def synchronize(self) -> None: ...

    def begin_capture(self) -> None: ...

    def end_capture(self) -> trt_env.PcGraph:
        raise NotImplementedError


class _FakeEvent:
    def record(self, stream: trt_env.PcStream) -> _FakeEvent:
        return self

    def synchronize(self) -> _FakeEvent:
        return self

    def time_since(self, start: trt_env.PcEvent) -> float:
        return 0.0


class _FakeDriver:
    # pycuda spells these with capitals
    def Stream(self) -> _FakeStream:
        return _FakeStream()

    def Event(self) -> _FakeEvent:
        return _FakeEvent()

    def Device(self, ordinal: int) -> trt_env.PcDevice:
        raise NotImplementedError

    def mem_alloc(self, nbytes: int) -> _FakeAlloc:
        return _FakeAlloc(nbytes)

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def memcpy_htod_async(self, dest: _FakeAlloc, src: np.ndarray, stream: trt_env.PcStream) -> None:
        dest.mem[: src.nbytes] = src.view(np.uint8)

    def memcpy_dtoh_async(self, dest: np.ndarray, src: _FakeAlloc, stream: trt_env.PcStream) -> None:
        dest.view(np.uint8)[:] = src.mem[: dest.nbytes]


def test_pycuda_runtime_round_trip_converts_to_engine_dtype() -> None:
    rt = trt_backend.PycudaRuntime(_FakeDriver())  # type: ignore[arg-type]  # a structural stand-in
    rt.allocate("input", 2 * 3 * 4 * 5, np.dtype(np.float16))  # FP16 engine I/O
    x = np.random.default_rng(0).random((1, 3, 4, 5), dtype=np.float32)
    rt.upload("input", x)
    back = rt.download("input", (1, 3, 4, 5))
    assert back.dtype == np.float16
    np.testing.assert_allclose(back.astype(np.float32), x, atol=1e-3)
    with pytest.raises(SRDeployError, match="exceeds the buffer"):
        rt.upload("input", np.zeros((1, 3, 10, 10), dtype=np.float32))
    assert rt.stream_handle == 1234
    rt.close()


# ------------------------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------------------------


def test_results_table_shows_audited_precision_and_gate(tmp_path: Path) -> None:
    from sr_deploy.commands.tensorrt import results_table

    engine = _engine_with_sidecar(tmp_path)
    sidecar = load_sidecar(engine)
    ref = [np.zeros((1, 3, 8, 8), dtype=np.float32)]
    gate = accuracy_gate(ref, [r + 1e-3 for r in ref], "fp16")
    result = trt_export.BuildResult("fp16", engine, replace(sidecar, gate=gate), reused=False)
    console = Console(width=200, record=True)
    console.print(results_table([result]))
    text = console.export_text()
    assert "fp16 (strongly-typed)" in text
    assert f"{sidecar.audit.fp16_tensor_fraction:.1%}" in text
    assert "60.00 dB" in text and engine.name in text


# ------------------------------------------------------------------------------------------------------------------
# on a machine with TensorRT and a GPU
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
def test_build_and_run_tiny_engine(tmp_path: Path) -> None:
    from onnx import TensorProto

    fp32 = _tiny_onnx(tmp_path / "tiny.onnx", TensorProto.FLOAT)
    profiles = ProfilePlan((profile_from_flags("1x3x8x8", "1x3x16x16", "1x3x32x32"),), "test")
    options = trt_export.BuildOptions(engines_dir=tmp_path / "engines", progress=False)
    graphs = trt_export.OnnxGraphs(fp32=fp32)
    opener = trt_backend.TensorRTBackend.from_serialized
    (result,) = trt_export.build_engines(graphs, "tiny", ["fp32"], profiles, options, opener)
    assert result.sidecar.audit.ok and result.sidecar.gate is not None and result.sidecar.gate.passed
    again = trt_export.build_engines(graphs, "tiny", ["fp32"], profiles, options, opener)
    assert again[0].reused
    backend = trt_backend.TensorRTBackend(result.engine_path)
    x = np.random.default_rng(0).random((1, 3, 13, 29), dtype=np.float32)
    out = backend.run_timed(x)
    np.testing.assert_allclose(out.output, np.repeat(x.sum(axis=1, keepdims=True), 3, axis=1), atol=1e-4)
    assert out.forward_ms > 0 and out.end_to_end_ms >= out.forward_ms
    backend.close()


# ------------------------------------------------------------------------------------------------------------------
# failures explained in one line (TensorRT's parser and logger stood in for)
# ------------------------------------------------------------------------------------------------------------------


class _FakeParserError:
    def __init__(self, node: int, name: str, op: str, desc: str) -> None:
        self._node, self._name, self._op, self._desc = node, name, op, desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def desc(self) -> str:
        return self._desc


class _FakeParser:
    def __init__(self, errors: list[_FakeParserError]) -> None:
        self._errors = errors

    def parse(self, model: bytes, path: str) -> bool:
        return not self._errors

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, i: int) -> _FakeParserError:
        return self._errors[i]


def test_onnx_parse_failure_names_the_node(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    err = _FakeParserError(7, "/upsampler/DepthToSpace", "DepthToSpace", "Unsupported mode CRD")
    with pytest.raises(SRDeployError) as e:
        trt_export.parse_onnx(_FakeParser([err]), onnx_path)
    msg = str(e.value)
    assert "node '/upsampler/DepthToSpace' (DepthToSpace): Unsupported mode CRD" in msg and "\n" not in msg
    trt_export.parse_onnx(_FakeParser([]), onnx_path)  # parses: no error


def test_build_out_of_workspace_suggests_a_size() -> None:
    log = trt_export.BuildLog(
        errors=["Could not find any implementation for node /conv due to insufficient workspace."],
        warnings=["Tactic Device request: 3000MB Available: 1024MB. Device memory is insufficient to use tactic."],
    )
    err = trt_export.workspace_error(log, trt_export.BuildOptions(workspace_gb=1.0))
    assert err is not None
    assert "--workspace-gb 1: too small" in str(err) and "try --workspace-gb 4" in str(err)
    unrelated = trt_export.BuildLog(errors=["Network has dynamic or shape inputs, but no optimization profile"])
    assert trt_export.workspace_error(unrelated, trt_export.BuildOptions()) is None


def test_export_trt_reuses_its_onnx_only_while_the_file_is_unchanged(tiny_model: SRNet, tmp_path: Path) -> None:
    """An edited or cut-short graph under engines/onnx is exported again, never built into an engine."""
    from sr_deploy.export.tensorrt import _reusable_onnx, export_onnx_for_model

    sha = "cd" * 32
    graphs = export_onnx_for_model(tiny_model, "tiny", sha, ("fp32",), tmp_path)
    assert graphs.fp32 is not None and _reusable_onnx(graphs.fp32, sha)
    assert not _reusable_onnx(graphs.fp32, "ef" * 32)
    data = graphs.fp32.read_bytes()
    graphs.fp32.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert not _reusable_onnx(graphs.fp32, sha)
    export_onnx_for_model(tiny_model, "tiny", sha, ("fp32",), tmp_path)
    assert graphs.fp32.read_bytes() == data
