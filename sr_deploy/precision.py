"""The precision words srdeploy speaks, defined once: every backend, exporter, gate, report and flag takes them
from here (a backend declares the subset it runs in its descriptor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

from sr_deploy.errors import SRDeployError

Precision = Literal["fp32", "fp16", "bf16", "int8"]

#: Every precision, in the order flags, tables and reports list them.
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16", "int8")

#: The floating-point ones (an int8 graph is a Q/DQ graph, not a cast of the model).
FLOAT_PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16")

#: What each word means, for help texts and reports.
MEANINGS: dict[Precision, str] = {
    "fp32": "32-bit float, the reference",
    "fp16": "16-bit float (IEEE half)",
    "bf16": "bfloat16 (fp32's range, 8-bit mantissa)",
    "int8": "8-bit integer from an explicitly quantized (Q/DQ) graph",
}


def parse_precision(text: str, flag: str = "--precision", allowed: Sequence[Precision] = PRECISIONS) -> Precision:
    """`text` as a Precision from `allowed`, or a one-line SRDeployError naming `flag` and what was expected."""
    if text not in allowed:
        raise SRDeployError(f"{flag} {text!r}: expected one of {', '.join(allowed)}")
    return cast(Precision, text)
