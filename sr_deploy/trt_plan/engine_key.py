"""The engine cache key and the files named after it: what makes a built engine valid or stale (and why, worded
for the user), the engine's file name, its sidecar's, and the timing cache's."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sr_deploy.precision import Precision, parse_precision
from sr_deploy.trt_plan.profiles import ShapeProfile, format_shape
from sr_deploy.trt_plan.versions import TRT_PRECISIONS, Route, TrtVersion, parse_route, parse_trt_version

KEY_SCHEMA = 1


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.9"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.compute_capability}


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes a built engine valid or stale. Two equal keys mean the cached engine can be
    reused.
    """

    onnx_sha256: str
    precision: Precision
    route: Route
    profiles: tuple[ShapeProfile, ...]
    trt_version: str  # full version, e.g. "10.13.0.35": engines are tied to the exact build
    gpu_name: str
    compute_capability: str
    opt_level: int
    workspace_bytes: int
    schema: int = KEY_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision,
            "route": self.route,
            "profiles": [p.to_dict() for p in self.profiles],
            "trt_version": self.trt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "opt_level": self.opt_level,
            "workspace_bytes": self.workspace_bytes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineKey:
        return cls(
            onnx_sha256=str(d["onnx_sha256"]),
            precision=parse_precision(str(d["precision"]), "engine key precision", TRT_PRECISIONS),
            route=parse_route(str(d["route"]), "engine key route"),
            profiles=tuple(ShapeProfile.from_dict(p) for p in d["profiles"]),
            trt_version=str(d["trt_version"]),
            gpu_name=str(d["gpu_name"]),
            compute_capability=str(d["compute_capability"]),
            opt_level=int(d["opt_level"]),
            workspace_bytes=int(d["workspace_bytes"]),
            schema=int(d.get("schema", KEY_SCHEMA)),
        )

    def digest(self) -> str:
        """sha256 of the canonical JSON: stable across runs, Python versions and dict orders."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _short(h: str) -> str:
    return h[:12]


def explain_key_mismatch(cached: EngineKey, wanted: EngineKey) -> list[str]:
    """Why a cached engine cannot be reused, one reason per differing field, worded for the user."""
    reasons: list[str] = []
    if cached.schema != wanted.schema:
        reasons.append(f"sidecar key schema {cached.schema}, this srdeploy writes {wanted.schema}")
    if cached.gpu_name != wanted.gpu_name or cached.compute_capability != wanted.compute_capability:
        reasons.append(
            f"built on another GPU ({cached.gpu_name}, sm {cached.compute_capability}; "
            f"this machine: {wanted.gpu_name}, sm {wanted.compute_capability})"
        )
    if cached.trt_version != wanted.trt_version:
        reasons.append(f"built with another TensorRT ({cached.trt_version}; this machine: {wanted.trt_version})")
    if cached.onnx_sha256 != wanted.onnx_sha256:
        reasons.append(f"the ONNX changed (sha256 {_short(cached.onnx_sha256)} -> {_short(wanted.onnx_sha256)})")
    if cached.precision != wanted.precision or cached.route != wanted.route:
        reasons.append(
            f"other precision route ({cached.precision}/{cached.route} -> {wanted.precision}/{wanted.route})"
        )
    if cached.profiles != wanted.profiles:
        reasons.append(
            "other optimization profiles ("
            + "; ".join(_profile_text(p) for p in cached.profiles)
            + " -> "
            + "; ".join(_profile_text(p) for p in wanted.profiles)
            + ")"
        )
    if cached.opt_level != wanted.opt_level:
        reasons.append(f"other builder optimization level ({cached.opt_level} -> {wanted.opt_level})")
    if cached.workspace_bytes != wanted.workspace_bytes:
        reasons.append(
            f"other workspace ({cached.workspace_bytes / 2**30:g} GiB -> {wanted.workspace_bytes / 2**30:g} GiB)"
        )
    return reasons


def _profile_text(p: ShapeProfile) -> str:
    return f"{p.name} {format_shape(p.min)}..{format_shape(p.opt)}..{format_shape(p.max)}"


def explain_runtime_mismatch(key: EngineKey, trt_version: str, gpu: GpuInfo) -> list[str]:
    """Why this machine cannot run an engine (checked from the sidecar, before deserializing anything)."""
    wanted = EngineKey(
        key.onnx_sha256, key.precision, key.route, key.profiles, trt_version, gpu.name,
        gpu.compute_capability,
        key.opt_level, key.workspace_bytes, key.schema,
    )  # fmt: skip
    return explain_key_mismatch(key, wanted)


def slugify(text: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (file-name safe, stable)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "unknown"


def model_name_from_onnx(path: Path) -> str:
    """'imdn-b7-fp16.onnx' / 'imdn-b7.int8.onnx' -> 'imdn-b7': the precision belongs to the engine name, not the
    model name."""
    stem = path.stem
    return re.sub(r"[-_.](fp16|fp32|half|float16|float32|int8)$", "", stem, flags=re.IGNORECASE) or stem


def engine_filename(model: str, precision: Precision, gpu_name: str, trt_version: TrtVersion | str) -> str:
    """`<model>-<precision>-<gpu-slug>-trt<major.minor.patch>.engine`."""
    v = str(parse_trt_version(trt_version) if isinstance(trt_version, str) else trt_version)
    return f"{slugify(model)}-{precision}-{slugify(gpu_name)}-trt{v}.engine"


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(".json")


def timing_cache_filename(gpu_name: str, compute_capability: str, trt_version: TrtVersion | str) -> str:
    """One timing cache per (TensorRT version, GPU): caches are only valid for the exact TensorRT version."""
    v = trt_version if isinstance(trt_version, str) else trt_version.full
    return f"timing-{slugify(gpu_name)}-sm{compute_capability.replace('.', '')}-trt{v}.cache"
