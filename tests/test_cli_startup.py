"""The CLI starts fast: `--help` of srdeploy and of every command imports no heavy library (checked through
sys.modules in a fresh interpreter, not by timing); --version; no arguments; flags shown as flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sr_deploy import __version__

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "cv2", "matplotlib")

# One interpreter for every --help (the machine is shared): after each, the heavy modules now loaded are recorded,
# so a failure names the command that pulled one in.
_PROBE = """
import io, json, sys
from contextlib import redirect_stdout
from sr_deploy.cli import build_app, main

heavy = {heavy!r}
names = [c.name for c in build_app().registered_commands]
found = {{}}
for argv in [["--help"], *[[n, "--help"] for n in names]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    found[" ".join(argv)] = {{
        "code": code,
        "heavy": [m for m in heavy if m in sys.modules],
        "help": out.getvalue(),
    }}
print(json.dumps({{"commands": names, "found": found}}))
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def helps() -> dict[str, dict[str, object]]:
    proc = _run(_PROBE.format(heavy=HEAVY))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"info", "fuse", "export-onnx", "export-trt", "eval", "upscale", "bench", "train"} <= set(result["commands"])
    found: dict[str, dict[str, object]] = result["found"]
    assert len(found) == len(result["commands"]) + 1
    return found


def test_help_of_every_command_imports_nothing_heavy(helps: dict[str, dict[str, object]]) -> None:
    pulled = {argv: r["heavy"] for argv, r in helps.items() if r["heavy"]}
    assert pulled == {}, f"--help imported heavy modules: {pulled}"
    assert all(r["code"] == 0 for r in helps.values())


def test_flags_show_as_flags(helps: dict[str, dict[str, object]]) -> None:
    for argv, r in helps.items():
        assert "<bool>" not in str(r["help"]), argv
    assert "--json" in str(helps["info --help"]["help"])


def test_eval_defaults_to_auto_like_upscale_and_bench() -> None:
    import typer

    from sr_deploy.cli import build_app

    group = typer.main.get_command(build_app())
    commands = group.commands  # type: ignore[attr-defined]
    for name in ("eval", "upscale", "bench"):
        backend = next(p for p in commands[name].params if p.name == "backend")
        assert backend.default == "auto", name


def test_version_no_arguments_and_version_with_a_command() -> None:
    proc = _run("import sys; from sr_deploy.cli import main; sys.exit(main(sys.argv[1:]))", "--version")
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, f"srdeploy {__version__}", "")

    proc = _run("import sys; from sr_deploy.cli import main; sys.exit(main([]))")
    assert proc.returncode == 0 and "Usage: srdeploy" in proc.stdout and "error" not in proc.stderr

    proc = _run("import sys; from sr_deploy.cli import main; sys.exit(main(sys.argv[1:]))", "--version", "info")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("srdeploy: error: --version") and "\n" not in err


def test_backend_and_precision_help_come_from_the_registry() -> None:
    import typer

    from sr_deploy.cli import build_app
    from sr_deploy.runtime.registry import default_registry

    registry = default_registry()
    commands = typer.main.get_command(build_app()).commands  # type: ignore[attr-defined]
    for name in ("eval", "upscale", "bench"):
        params = {p.name: p for p in commands[name].params}
        backend_help, precision_help = str(params["backend"].help), str(params["precision"].help)
        for d in registry:
            assert f"{d.name} ({'/'.join(d.precisions)})" in backend_help, name
        assert all(p in precision_help for p in registry.precisions), name
    assert "all (side by side)" in str({p.name: p for p in commands["bench"].params}["backend"].help)
