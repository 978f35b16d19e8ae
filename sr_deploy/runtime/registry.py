"""The backends srdeploy knows, one descriptor each, and everything derived from that list: the kinds a user can
name, what is usable here, the flags' help, the bench report's enums.

A backend is a plug-in: a descriptor module (``runtime/<name>_descriptor.py``) exports one `BackendDescriptor`,
and `default_registry` lists it on one line; the Backend class it makes lives in its own module. Descriptor
modules import no runtime at import time (their checks and makers import lazily), so naming the backends for
``--help`` stays cheap; and a backend module never imports its maker's exporter (sr_deploy.export runs backends
in its checks), so no import cycle joins the two. Callers that want another set (tests, a fake backend) pass their own
`Registry`; nothing here is mutated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sr_deploy.errors import SRDeployError
from sr_deploy.precision import PRECISIONS, Precision

if TYPE_CHECKING:
    from sr_deploy.archs.base import SRNet
    from sr_deploy.bench.rows import RowContext, RowPlan
    from sr_deploy.runtime.base import Backend

#: The kind that stands for a policy, not a backend (sr_deploy.runtime.factory.choose_auto).
AUTO = "auto"

#: Options only some backends use, by flag.
CUDA_GRAPHS = "--cuda-graphs"
COMPILE = "--compile"


@dataclass(frozen=True)
class BackendRequest:
    """What `make_backend` was asked for, checked against the descriptor before its maker sees it.

    ``device`` is as given ("auto", "cpu", "cuda:0"); ``resolved_device`` is what "auto" became."""

    model: SRNet
    precision: Precision
    device: str
    resolved_device: str
    channels_last: bool | None = None
    weights_sha256: str = ""
    work_dir: Path | None = None
    references: Sequence[Any] | None = None
    providers: Sequence[str] | None = None
    cuda_graphs: bool = False
    compile_mode: str | None = None
    int8_graph: Path | None = None


@dataclass(frozen=True)
class BackendDescriptor:
    """One backend: what it is called, what it runs, how to tell whether it runs here, how to make it, and the rows
    it adds to ``srdeploy bench --backend all``."""

    name: str
    #: One line for help texts.
    summary: str
    precisions: tuple[Precision, ...]
    #: Device types it runs on ("cpu", "cuda").
    devices: tuple[str, ...]
    #: None when usable here, else the reason (one line, what to install).
    available: Callable[[], str | None]
    make: Callable[[BackendRequest], Backend]
    bench_rows: Callable[[RowContext], Sequence[RowPlan]]
    #: Flags among CUDA_GRAPHS and COMPILE that it uses.
    options: frozenset[str] = frozenset()
    #: Its `prepare` runs a forward pass (a warm-up), so bench skips it to keep the first image cold.
    prepare_runs_forward: bool = False

    def __post_init__(self) -> None:
        if self.name in (AUTO, "all") or not self.name:
            raise ValueError(f"backend name {self.name!r} is reserved")
        if not self.precisions or any(p not in PRECISIONS for p in self.precisions):
            raise ValueError(f"{self.name}: precisions must be a non-empty subset of {PRECISIONS}")


@dataclass(frozen=True)
class Registry:
    """An ordered set of descriptors; the order is the order of help texts and of bench's ``all`` table."""

    descriptors: tuple[BackendDescriptor, ...]

    def __post_init__(self) -> None:
        names = [d.name for d in self.descriptors]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique: {names}")

    def __iter__(self) -> Iterator[BackendDescriptor]:
        return iter(self.descriptors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.descriptors)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind a user can name: ``auto`` and each backend."""
        return (AUTO, *self.names)

    @property
    def precisions(self) -> tuple[Precision, ...]:
        """Every precision some backend runs, in the order of sr_deploy.precision.PRECISIONS."""
        return tuple(p for p in PRECISIONS if any(p in d.precisions for d in self.descriptors))

    def get(self, name: str) -> BackendDescriptor:
        """The descriptor of `name`, or a one-line error naming --backend and the choices."""
        for d in self.descriptors:
            if d.name == name:
                return d
        raise SRDeployError(f"--backend {name!r}: expected one of {', '.join(self.kinds)}")

    def check_kind(self, kind: str) -> str:
        if kind != AUTO:
            self.get(kind)
        return kind

    def check_precision(self, name: str, precision: Precision) -> None:
        """Refuse, one line naming --precision and the backends that do run it, a precision `name` does not run."""
        descriptor = self.get(name)
        if precision in descriptor.precisions:
            return
        others = [d.name for d in self.descriptors if precision in d.precisions]
        hint = f"; use --backend {' or '.join(others)}" if others else ""
        if precision == "int8":
            raise SRDeployError(f"--precision int8: the {name} backend does not run the int8 graph here{hint}")
        raise SRDeployError(
            f"--precision {precision}: the {name} backend runs {', '.join(descriptor.precisions)}{hint}"
        )

    def available(self) -> dict[str, str | None]:
        """Backend name -> None when usable here, else the reason it is not."""
        return {d.name: d.available() for d in self.descriptors}

    def with_option(self, option: str) -> tuple[str, ...]:
        """The names of the backends that use `option` (CUDA_GRAPHS, COMPILE)."""
        return tuple(d.name for d in self.descriptors if option in d.options)

    def backend_help(self, extra: str = "") -> str:
        """The --backend help: each kind, with what it runs."""
        parts = [f"{AUTO} (picks one)"] + [f"{d.name} ({'/'.join(d.precisions)})" for d in self.descriptors]
        return ", ".join(parts) + (f", or {extra}" if extra else "") + "."

    def precision_help(self, int8_note: str) -> str:
        """The --precision help: the words, with `int8_note` after int8 (where its graph comes from)."""
        words = [f"{p} {int8_note}" if p == "int8" else p for p in self.precisions]
        return ", ".join(words) + "."


#: srdeploy's backends, one line each: the module that exports the backend's DESCRIPTOR. The order is the order of
#: help texts and of bench's ``all`` table.
DESCRIPTOR_MODULES: tuple[str, ...] = (
    "sr_deploy.runtime.torch_descriptor",
    "sr_deploy.runtime.ort_descriptor",
    "sr_deploy.runtime.ov_descriptor",
    "sr_deploy.runtime.trt_descriptor",
)


def default_registry() -> Registry:
    """srdeploy's backends (DESCRIPTOR_MODULES), imported when asked for: descriptor modules import this one."""
    descriptors: list[BackendDescriptor] = []
    for module in DESCRIPTOR_MODULES:
        descriptor = getattr(importlib.import_module(module), "DESCRIPTOR", None)
        if not isinstance(descriptor, BackendDescriptor):
            raise TypeError(f"{module} exports no BackendDescriptor named DESCRIPTOR")
        descriptors.append(descriptor)
    return Registry(tuple(descriptors))
