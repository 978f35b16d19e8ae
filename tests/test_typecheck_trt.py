"""The mypy-against-tensorrt-stubs check: the thin layer passes and the canary is rejected (tools/typecheck_trt.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script() -> ModuleType:
    """tools/typecheck_trt.py is a script, not a package: load it by path, leaving sys.path alone."""
    spec = importlib.util.spec_from_file_location("typecheck_trt", REPO / "tools" / "typecheck_trt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


typecheck_trt = _load_script()

needs_stubs = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None or not (REPO / typecheck_trt.CANARY).is_file(),
    reason="needs mypy and the canary",
)


def test_stub_repairs() -> None:
    text = (
        "    def configure_plugin(self: IPluginV3, in: list[X], out: list[X]) -> None:\n"
        "    def add_scale_nd(self, input: ITensor, mode: ScaleMode, shift: Weights = None, scale: Weights = None, "
        "power: Weights = None, channel_axis: int) -> IScaleLayer:\n"
        "    def get_error(self, index: int) -> ...:\n"
        "            :arg in: The input tensors\n"
    )
    fixed = typecheck_trt.repair_stub_text(text)
    assert "(self: IPluginV3, in_: list[X], out: list[X])" in fixed
    assert "channel_axis: int = ...)" in fixed
    assert "-> ParserError:" in fixed
    assert ":arg in: The input tensors" in fixed  # docstrings untouched
    for line in fixed.splitlines()[:3]:  # each repaired signature is valid Python now
        compile(line.strip() + "\n    ...\n", "<stub>", "exec")


@pytest.mark.slow
@needs_stubs
def test_thin_layer_passes_and_canary_is_rejected(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "typecheck_trt.py"), "--work-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   thin layer passes" in proc.stdout
    assert "ok   canary misusing the TensorRT API is rejected" in proc.stdout
