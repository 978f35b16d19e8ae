"""Progress on stderr for commands that would otherwise sit silent for seconds (export-onnx, info)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape


@contextmanager
def status(what: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on stderr; yields a function that names the next step.

    Only on a terminal, and transient: stdout stays the command's result and a piped stderr stays the one-line
    error contract (rich's status draws nothing when stderr is not a terminal).
    """
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda step: None
        return
    # escape: a step may name a file, and "[...]" in a path is not rich markup.
    with console.status(escape(f"{what}...")) as spinner:
        yield lambda step: spinner.update(escape(f"{what}: {step}..."))
