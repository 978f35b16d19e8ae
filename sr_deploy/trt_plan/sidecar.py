"""The sidecar written beside every engine (its key, audit and gate, as JSON), reading it back, and whether a cached
engine may be reused."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sr_deploy.errors import SRDeployError
from sr_deploy.trt_plan.engine_key import EngineKey, explain_key_mismatch, sidecar_path
from sr_deploy.trt_plan.gate import GateReport
from sr_deploy.trt_plan.inspector import PrecisionAudit

SIDECAR_SCHEMA = 1


@dataclass(frozen=True)
class EngineSidecar:
    key: EngineKey
    engine_file: str
    engine_bytes: int
    engine_sha256: str
    build_seconds: float
    built_at: str  # ISO 8601, UTC
    plan: dict[str, Any]
    audit: PrecisionAudit
    gate: GateReport | None
    io_names: dict[str, str] = field(default_factory=dict)  # {"input": name, "output": name}
    srdeploy_version: str = ""
    schema: int = SIDECAR_SCHEMA

    @property
    def key_digest(self) -> str:
        return self.key.digest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "key": self.key.to_dict(),
            "key_digest": self.key_digest,
            "engine_file": self.engine_file,
            "engine_bytes": self.engine_bytes,
            "engine_sha256": self.engine_sha256,
            "build_seconds": self.build_seconds,
            "built_at": self.built_at,
            "plan": dict(self.plan),
            "audit": self.audit.to_dict(),
            "gate": None if self.gate is None else self.gate.to_dict(),
            "io_names": dict(self.io_names),
            "srdeploy_version": self.srdeploy_version,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineSidecar:
        try:
            key = EngineKey.from_dict(d["key"])
            if "key_digest" in d and d["key_digest"] != key.digest():
                raise SRDeployError("sidecar: key_digest does not match its key (file edited or corrupt)")
            gate = d.get("gate")
            return cls(
                key=key,
                engine_file=str(d["engine_file"]),
                engine_bytes=int(d["engine_bytes"]),
                engine_sha256=str(d["engine_sha256"]),
                build_seconds=float(d["build_seconds"]),
                built_at=str(d["built_at"]),
                plan=dict(d.get("plan", {})),
                audit=PrecisionAudit.from_dict(d["audit"]),
                gate=None if gate is None else GateReport.from_dict(gate),
                io_names={str(k): str(v) for k, v in d.get("io_names", {}).items()},
                srdeploy_version=str(d.get("srdeploy_version", "")),
                schema=int(d.get("schema", SIDECAR_SCHEMA)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SRDeployError(f"sidecar: missing or malformed field ({e})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "sidecar") -> EngineSidecar:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SRDeployError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, Mapping):
            raise SRDeployError(f"{source}: expected a JSON object")
        return cls.from_dict(data)


def load_sidecar(engine_path: Path) -> EngineSidecar:
    """The sidecar of `engine_path`; a missing one is an error (we cannot tell where the engine came from)."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise SRDeployError(
            f"{engine_path}: sidecar {side.name} is missing; rebuild with `srdeploy export-trt` "
            "(an engine without one cannot be checked against this machine)"
        )
    return EngineSidecar.from_json(side.read_text(encoding="utf-8"), str(side))


def cache_decision(sidecar: EngineSidecar | None, wanted: EngineKey, engine_exists: bool) -> tuple[bool, list[str]]:
    """(reuse?, reasons to rebuild). A cached engine is reused only if it exists, passed its checks, and
    matches.
    """
    if not engine_exists:
        return False, ["no cached engine"]
    if sidecar is None:
        return False, ["cached engine has no sidecar"]
    reasons = explain_key_mismatch(sidecar.key, wanted)
    if not sidecar.audit.ok:
        reasons.append(f"cached engine failed its precision audit ({sidecar.audit.message})")
    if sidecar.gate is not None and not sidecar.gate.passed:
        reasons.append("cached engine failed the accuracy gate")
    return (not reasons), reasons
