"""The bench report: everything one run measured and on what, its JSON (`to_dict`) and its JSON Schema."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sr_deploy.bench.measure import RowResult
from sr_deploy.bench.rows import backend_choices
from sr_deploy.bench.verdict import Verdict
from sr_deploy.runtime.registry import Registry, default_registry

#: Bumped when the report's JSON layout changes incompatibly.
SCHEMA_VERSION = 1


def report_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema a report's `to_dict` conforms to (shipped as package data), with the backend and precision
    enums made from `registry` here, so the schema cannot name other backends than the code."""
    from importlib.resources import files

    reg = registry or default_registry()
    text = files("sr_deploy").joinpath("schemas/bench_report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    settings = schema["properties"]["settings"]["properties"]
    row = schema["$defs"]["row"]["properties"]
    settings["backend"]["enum"] = list(backend_choices(reg))
    # A row keeps kind "auto" when it was skipped before auto chose.
    row["kind"]["enum"] = list(reg.kinds)
    settings["precision"]["enum"] = row["precision"]["enum"] = list(reg.precisions)
    return schema


@dataclass
class BenchReport:
    """Everything one bench run measured and on what, ready for JSON (`to_dict`) and markdown."""

    settings: dict[str, Any]
    model: dict[str, Any]
    inputs: dict[str, Any]
    environment: dict[str, Any]
    rows: list[RowResult]
    headline: str | None
    notes: list[str] = field(default_factory=list)
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def headline_row(self) -> RowResult | None:
        return next((r for r in self.rows if r.plan.key == self.headline), None)

    @property
    def verdict(self) -> Verdict | None:
        row = self.headline_row
        return row.verdict if row else None

    def to_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "schema_version": SCHEMA_VERSION,
            "created_utc": self.created_utc,
            "settings": dict(self.settings),
            "model": dict(self.model),
            "inputs": dict(self.inputs),
            "environment": dict(self.environment),
            "rows": [r.to_dict() for r in self.rows],
            "headline": self.headline,
            "verdict": v.to_dict() if v else None,
            "notes": list(self.notes),
        }
