"""`srdeploy`: one thin typer command per entry point. Commands live in sr_deploy.commands.*."""

from __future__ import annotations

import functools
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from sr_deploy.errors import Interrupted, SRDeployError

if TYPE_CHECKING:
    import typer

# Nothing heavy at module level, here or in sr_deploy.commands.*: `srdeploy --help` and every command's --help
# must not import torch, onnx, onnxruntime, openvino or cv2 (tests/test_cli_startup.py checks it). Even typer is
# imported inside main()'s try: a Ctrl-C while it loads is then one line, not a KeyboardInterrupt traceback.

#: Exit codes of a command stopped by a signal: the shell's 128 + signal number.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


def _command_classes() -> tuple[type[Any], type[Any]]:
    """typer's command and group classes, with flags shown as flags in the help."""
    from typer.core import TyperCommand, TyperGroup

    class _FlagsAsFlags:
        """Help shows a boolean flag as ``--json``, not ``--json <bool>``: typer gives flags a type label too."""

        def get_params(self, ctx: Any) -> list[Any]:
            params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
            for param in params:
                if getattr(param, "is_flag", False) and param.metavar is None:
                    param.metavar = ""  # an empty label: the help's type column stays blank
            return params

    class _Command(_FlagsAsFlags, TyperCommand):
        pass

    class _Group(_FlagsAsFlags, TyperGroup):
        pass

    return _Command, _Group


def _version_callback(value: bool) -> None:
    import typer

    from sr_deploy import __version__

    if value:
        typer.echo(f"srdeploy {__version__}")
        raise typer.Exit(0)


def build_app() -> typer.Typer:
    import typer
    from typer.core import TyperCommand

    from sr_deploy.commands import bench, core, imaging, onnx, quantize, tensorrt, train

    command_cls, group_cls = _command_classes()
    app = typer.Typer(
        name="srdeploy",
        help="Efficient image super-resolution from training to TensorRT.",
        cls=group_cls,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        """The options of srdeploy itself (--version); the work is done by the commands."""

    for module in (core, train, onnx, quantize, tensorrt, imaging, bench):
        module.register(app)
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):  # typer's default: give it the flag-aware help
            command.cls = command_cls
        if command.callback is not None:
            command.callback = _passing_interrupts(command.callback)
    return app


class _CommandInterrupted(Exception):
    """Carries a KeyboardInterrupt out of a command past typer, which would turn it into a silent exit 130."""


def _passing_interrupts(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)  # typer reads the parameters through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            raise _CommandInterrupted() from e

    return run


def one_line(message: str) -> str:
    """An error message as one line: no terminal colour codes (torch puts some in its errors), no line breaks."""
    lines = [line.strip() for line in _ANSI.sub("", message).splitlines()]
    return "; ".join(line for line in lines if line)


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Interrupted` while a command runs, so ``finally`` blocks (temporary files, locks) run as for
    Ctrl-C; Python's default for SIGTERM is to die on the spot. The previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interruption(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind `exc`, if any: typer turns one into ``Exit(130)``, and torch's ONNX exporter into
    a TorchExportError whose cause is its own wrapper of the interrupt (or only names it in its text)."""
    todo = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt):
            return e
        if type(e).__module__.startswith("torch") and "KeyboardInterrupt" in str(e):
            return KeyboardInterrupt()
        todo += [e.__cause__, e.__context__]
    return None


def _interrupted(exc: KeyboardInterrupt) -> int:
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    name = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    print(f"srdeploy: {name}", file=sys.stderr)
    return SIGNAL_EXIT.get(signal.Signals(signum), 128 + int(signum))


def _error(message: str) -> int:
    print(f"srdeploy: error: {one_line(message)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback; an interruption is
    one line and exit 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        with _sigterm_raises():
            return _main(argv)
    except KeyboardInterrupt as e:  # also a SIGTERM that arrived between the handler's restore and here
        return _interrupted(e)


def _main(argv: list[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["--help"]  # no arguments: the help, exit 0 (not a usage error with an empty message)
    elif args[0] == "--version" and len(args) > 1:
        return _error(f"--version takes nothing else, got: {' '.join(args[1:])}")
    try:
        from typer import Abort, Exit
        from typer.exceptions import TyperException

        app = build_app()
        try:
            result = app(args=args, prog_name="srdeploy", standalone_mode=False)
        except Exit as e:
            stop = _interruption(e)
            if stop is not None:  # typer turned a Ctrl-C into a silent Exit(130): say it
                return _interrupted(stop)
            return int(e.exit_code)
        except Abort as e:
            stop = _interruption(e)
            if stop is not None:
                return _interrupted(stop)
            print("srdeploy: aborted", file=sys.stderr)
            return 130
        except TyperException as e:
            # Usage errors (bad flag value, missing argument): one line, naming the flag.
            print(f"srdeploy: error: {one_line(e.format_message())}", file=sys.stderr)
            return e.exit_code
    except SRDeployError as e:
        return _error(str(e))
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except MemoryError:
        return _error("out of memory: use smaller inputs, --tile for upscale, or --memory-budget")
    except OSError as e:
        # The last net for an operating-system failure the commands did not name themselves.
        where = f"{e.filename}: " if e.filename else ""
        return _error(f"{where}{e.strerror or e}")
    except Exception as e:
        stop = _interruption(e)
        if stop is None:
            raise  # a bug: the traceback is what a report needs
        return _interrupted(stop)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
