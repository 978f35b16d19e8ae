"""Type-check the TensorRT thin layer with mypy --strict against the published `tensorrt-stubs`.

Usage (one command for CI):  python tools/typecheck_trt.py
Exit 0 = the thin layer passes and the canary is rejected; 1 = either check failed; 2 = set-up problem.

Why this script exists: `tensorrt-stubs` ships `.pyi` files without a `py.typed` marker, so a plain mypy run
treats `tensorrt` as untyped and every TensorRT call silently becomes `Any`; such a check cannot fail. The stubs
also hold syntax errors (parameters named `in`, a non-default parameter after defaulted ones). So we copy them into
`.typecheck/stubs`, repair them, put that folder on mypy's path, silence errors *inside* the stub modules only, and
run mypy --strict on the thin layer. A canary file that misuses the API must be rejected, which proves the stubs
are really in use (a check that resolves `tensorrt` to `Any` would pass the canary).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Every module that imports tensorrt or pycuda (tests/test_trt_import_cycle.py keeps this list complete).
THIN_LAYER = ("sr_deploy/trt_env.py", "sr_deploy/export/tensorrt.py", "sr_deploy/runtime/trt_backend.py")
CANARY = "tests/typecheck/trt_canary.py"
# Each line of this list must appear in mypy's report on the canary: the misuse it was written to show.
CANARY_EXPECTED = (
    'has no attribute "FP16X"',  # misspelt BuilderFlag member
    'Argument 1 to "set_memory_pool_limit"',  # int where a MemoryPoolType is required
    'Argument 1 to "execute_async_v3"',  # a str where the CUDA stream handle (int) is required
)
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")

# The generated stubs name some plugin parameters `in` (a keyword): `def f(self, in: list[...], ...)`.
_IN_PARAM = re.compile(r"(?<=[(,\s])in(?=\s*:)")
# `add_scale_nd(..., power: Weights = None, channel_axis: int)`: a required parameter after defaulted ones.
_SCALE_ND = re.compile(r"(def add_scale_nd\(.*power: Weights = None, channel_axis: int)\)")
# `OnnxParser.get_error` is declared `-> ...`, which would make parser errors `Any`; it returns a ParserError.
_GET_ERROR = re.compile(r"(def get_error\(self, index: int\) -> )\.\.\.:")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    output: str


def find_installed_stubs() -> Path:
    """The site-packages folder that holds the `tensorrt-stubs` distribution's `tensorrt/` and `tensorrt_bindings/`."""
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            "typecheck_trt: tensorrt-stubs is not installed; pip install --no-deps 'tensorrt-stubs>=10.13'"
        ) from None
    root = Path(str(dist.locate_file("")))
    missing = [p for p in STUB_PACKAGES if not (root / p / "__init__.pyi").is_file()]
    if missing:
        raise SystemExit(f"typecheck_trt: {root} lacks {', '.join(missing)}/__init__.pyi from tensorrt-stubs")
    return root


def repair_stub_text(text: str) -> str:
    """Fix the syntax errors of the generated stubs so mypy can parse them (pure function, tested)."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("def "):
            line = _IN_PARAM.sub("in_", line)
            line = _SCALE_ND.sub(r"\1 = ...)", line)
            line = _GET_ERROR.sub(r"\1ParserError:", line)
        lines.append(line)
    return "".join(lines)


def build_stub_dir(site: Path, dest: Path) -> Path:
    """Copy and repair the stubs into `dest` (recreated each run so an upgrade of the stubs is picked up)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pkg in STUB_PACKAGES:
        shutil.copytree(site / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for pyi in (dest / pkg).rglob("*.pyi"):
            pyi.write_text(repair_stub_text(pyi.read_text(encoding="utf-8")), encoding="utf-8")
        # Marker for tools that look for it; on mypy_path the stubs count as typed regardless.
        (dest / pkg / "py.typed").write_text("", encoding="utf-8")
    return dest


def write_mypy_config(path: Path, stub_dir: Path) -> Path:
    """A config of its own, so this check does not depend on (or disturb) the project's [tool.mypy]."""
    path.write_text(
        "\n".join(
            [
                "[mypy]",
                "python_version = 3.10",
                "strict = True",
                f"mypy_path = {stub_dir}",
                "follow_imports = silent",
                "show_error_codes = True",
                "# As in the project's config. It does not reach tensorrt, which resolves to the stubs on mypy_path;",
                "# pycuda, which has no types, is cast to precise Protocols in the runtime.",
                "ignore_missing_imports = True",
                "cache_dir = " + str(path.parent / "mypy_cache"),
                "",
                "# Errors inside the generated stubs are not ours to fix; calls into them still get checked.",
                "[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt,tensorrt_bindings]",
                "ignore_errors = True",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return path


def run_mypy(config: Path, files: list[str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_thin_layer(config: Path) -> CheckResult:
    rc, out = run_mypy(config, list(THIN_LAYER))
    return CheckResult("thin layer passes mypy --strict against tensorrt-stubs", rc == 0, out)


def check_canary_rejected(config: Path) -> CheckResult:
    rc, out = run_mypy(config, [CANARY])
    missing = [e for e in CANARY_EXPECTED if e not in out]
    ok = rc != 0 and not missing
    detail = out if not missing else out + "\nexpected but not reported: " + "; ".join(missing)
    return CheckResult("canary misusing the TensorRT API is rejected", ok, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".typecheck", help="stub dir and mypy cache")
    parser.add_argument("-v", "--verbose", action="store_true", help="print mypy's output even on success")
    args = parser.parse_args(argv)

    work: Path = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    stub_dir = build_stub_dir(find_installed_stubs(), work / "stubs")
    config = write_mypy_config(work / "mypy.ini", stub_dir)

    results = [check_thin_layer(config), check_canary_rejected(config)]
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}")
        if not r.ok or args.verbose:
            print("    " + r.output.replace("\n", "\n    "))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
