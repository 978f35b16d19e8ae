"""Weights in and out: our safetensors format, the NTIRE/KAIR IMDN layout, and named published weights.

Our format is a safetensors file whose metadata carries the ModelSpec (so the network can always be
rebuilt) and provenance: where the weights came from, the sha256 of that source, and the srdeploy version.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from sr_deploy import __version__
from sr_deploy.archs.base import SRNet, check_state_dict
from sr_deploy.archs.registry import arch_of, build_model, load_state_dict, published_weights, spec_from_json
from sr_deploy.archs.spec import ArchSpec, PublishedWeights
from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import atomic_path, read_error, refuse_overwriting_inputs, sha256_file, write_error
from sr_deploy.fusion import collapse_verified, prove_collapse

FORMAT_TAG = "srdeploy"


def named_weights() -> dict[str, PublishedWeights]:
    """Every published checkpoint any registered architecture knows, by name (``ntire:team26``, ...)."""
    return published_weights()


@dataclass
class LoadedWeights:
    """A state dict with the spec it belongs to and where it came from."""

    spec: ArchSpec
    state_dict: dict[str, torch.Tensor]
    source: str
    sha256: str
    format: Literal["srdeploy", "ntire"]
    provenance: dict[str, str] = field(default_factory=dict)

    def build(self) -> SRNet:
        model = build_model(self.spec)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "arch": self.spec.name,
            "source": self.source,
            "sha256": self.sha256,
            "format": self.format,
            "provenance": dict(self.provenance),
        }


def cache_dir(override: str | Path | None = None) -> Path:
    """Where named weights are cached: `override`, else $SRDEPLOY_CACHE, else ~/.cache/srdeploy."""
    if override is not None:
        return Path(override)
    env = os.environ.get("SRDEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "srdeploy"


def resolve_named(name: str, cache: str | Path | None = None, *, download: bool = True) -> Path:
    """Path of a named checkpoint in the cache, downloading it (hash-checked) on first use."""
    known = named_weights()
    if name not in known:
        raise SRDeployError(f"unknown named weights {name!r}: expected one of {', '.join(known)}")
    entry = known[name]
    folder = cache_dir(cache)
    path = folder / entry.filename
    if not path.is_file():
        if not download:
            raise SRDeployError(f"{name}: {path} is not cached")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(e, folder, f"{name}: the weights cache") from None
        try:
            with urllib.request.urlopen(entry.url, timeout=30) as resp:
                data = resp.read()
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise SRDeployError(
                f"{name}: cannot download {entry.url} ({e}); put the file there by hand as {path}"
            ) from None
        with atomic_path(path, "cache file") as tmp:  # a full disk or read-only cache is its own one-line error
            tmp.write_bytes(data)
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise SRDeployError(f"{name}: {path} has sha256 {digest}, expected {entry.sha256}; delete it and retry")
    return path


# ---------------------------------------------------------------------------------------------- layout
def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside common wrappers ({'params': ...}, {'state_dict': ...}, DataParallel prefixes)."""
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SRDeployError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    sd: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        sd[str(k).removeprefix("module.")] = v
    return sd


def _looks_like(path: Path) -> str | None:
    """Name a file kind that is not weights, from its extension or magic bytes."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "an ONNX model"
    if suffix in (".engine", ".plan", ".trt"):
        return "a TensorRT engine"
    if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"):
        return "an image"
    return None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta: dict[str, str] = dict(f.metadata() or {})
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SRDeployError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def _load_pth(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise read_error(e, path) from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SRDeployError(f"{path}: not a PyTorch weights file that loads with weights_only=True ({first})") from None


def weights_path(source: str | Path, cache: str | Path | None = None) -> Path | None:
    """The file `source` reads (a named checkpoint's place in the cache, downloaded or not), for the checks that
    keep a command from writing over its own input; None for an unknown name (loading reports it)."""
    text = str(source)
    if text.startswith("ntire:"):
        entry = named_weights().get(text)
        return cache_dir(cache) / entry.filename if entry is not None else None
    return Path(text)


def load_weights(source: str | Path, *, cache: str | Path | None = None) -> LoadedWeights:
    """Load weights from our safetensors, an NTIRE/KAIR .pth (or .safetensors), or a name like ntire:team26."""
    text = str(source)
    if text.startswith("ntire:"):
        path = resolve_named(text, cache)
    else:
        path = Path(text)
        if not path.exists():
            raise SRDeployError(f"{path}: no such file")
        if path.is_dir():
            raise SRDeployError(f"{path}: is a folder, expected a weights file (.safetensors or .pth)")
        if not path.is_file():  # /dev/zero would be hashed forever, a FIFO would wait for a writer
            raise SRDeployError(f"{path}: not a regular file, expected a weights file (.safetensors or .pth)")
    kind = _looks_like(path)
    if kind:
        raise SRDeployError(f"{path}: is {kind}, expected weights (.safetensors or .pth)")
    digest = sha256_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise read_error(e, path) from None
    # safetensors: 8-byte little-endian header length, then a JSON header.
    is_safetensors = path.suffix.lower() == ".safetensors" or head[8:9] == b"{"
    meta: dict[str, str] = {}
    if is_safetensors:
        sd, meta = _load_safetensors(path)
    else:
        sd = _unwrap(_load_pth(path), path)
    ours = meta.get("format") == FORMAT_TAG and "spec" in meta
    if ours:
        spec = spec_from_json(meta["spec"], str(path))
        check_state_dict(arch_of(spec), spec, sd, str(path))
    else:
        spec, sd = load_state_dict(sd, str(path))
    provenance = {k: v for k, v in meta.items() if k not in ("format", "spec")}
    if not ours:
        provenance = {"source": text, "source_sha256": digest}
    return LoadedWeights(
        spec=spec,
        state_dict={k: v.float() for k, v in sd.items()},
        source=text,
        sha256=digest,
        format="srdeploy" if ours else "ntire",
        provenance=provenance,
    )


def load_model(
    source: str | Path, *, form: Literal["any", "plain", "clb"] = "any", cache: str | Path | None = None
) -> tuple[SRNet, LoadedWeights]:
    """Build the model for `source` in eval mode, converting training <-> deploy form when `form` asks for it.

    Conversion is exact either way: training -> deploy is the proven collapse, deploy -> training adds zero branches.
    """
    weights = load_weights(source, cache=cache)
    model = weights.build()
    if form == "plain" and model.spec.training_form:
        collapsed, _ = collapse_verified(model)
        assert isinstance(collapsed, SRNet)
        model = collapsed
    elif form == "clb" and not model.spec.training_form:
        model = arch_of(model.spec).uncollapse(model).eval()
    return model, weights


def save_weights(
    model: SRNet,
    path: str | Path,
    *,
    source: str = "",
    source_sha256: str = "",
    extra: dict[str, str] | None = None,
) -> Path:
    """Write our format atomically: safetensors + spec + provenance metadata."""
    meta = {
        "format": FORMAT_TAG,
        "spec": model.spec.to_json(),
        "arch": model.spec.name,
        "source": source,
        "source_sha256": source_sha256,
        "srdeploy_version": __version__,
    }
    meta.update(extra or {})
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    data = canonical_safetensors(save(tensors, metadata=meta))
    with atomic_path(path, "weights") as tmp:
        tmp.write_bytes(data)
    return Path(path)


def canonical_safetensors(data: bytes) -> bytes:
    """`data` (a safetensors file) with its JSON header's keys sorted: the same weights and metadata give the same
    bytes. safetensors keeps the metadata in a Rust HashMap, whose order changes from one process to the next.

    The header is ``u64 little-endian length + JSON``, padded with spaces to a multiple of 8 so the tensor data
    stays aligned; tensor offsets count from the end of the header, so rewriting it moves nothing else.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def ntire_state_dict(model: SRNet) -> dict[str, torch.Tensor]:
    """The state dict in the challenge's own key layout (deploy-form models only)."""
    if model.spec.training_form:
        raise SRDeployError(
            f"{model.spec.name} is a training-time model; collapse it first (srdeploy fuse) to export the NTIRE layout"
        )
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}


def save_ntire(model: SRNet, path: str | Path) -> Path:
    """Write a .pth that loads strict=True into the challenge's IMDN class."""
    sd = ntire_state_dict(model)
    # Into memory first: torch.save names the zip's top folder after the file, and the temporary file's name is
    # random, so saving to it directly would give different bytes for the same weights on every run.
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    with atomic_path(path, "weights") as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def describe_meta(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True)


@dataclass(frozen=True)
class FuseReport:
    """What `srdeploy fuse` did: the forms, parameter counts and the equivalence proof."""

    source: str
    source_sha256: str
    output: str
    output_format: str
    arch_in: str
    arch_out: str
    params_in: int
    params_out: int
    equivalence: dict[str, Any]
    #: Empty when something was folded; otherwise why the weights were written as they are.
    note: str = ""
    #: What became what (``CollapseReport.to_dict()``): each merge, its kernel, params and border error.
    collapse: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_sha256": self.source_sha256,
            "output": self.output,
            "output_format": self.output_format,
            "arch_in": self.arch_in,
            "arch_out": self.arch_out,
            "params_in": self.params_in,
            "params_out": self.params_out,
            "equivalence": dict(self.equivalence),
            "note": self.note,
            "collapse": dict(self.collapse),
        }


def output_format_for(path: str | Path, requested: str | None) -> Literal["safetensors", "ntire"]:
    """`requested` if given, else from the extension: .pth/.pt -> ntire, anything else -> safetensors."""
    if requested is None:
        return "ntire" if Path(path).suffix.lower() in (".pth", ".pt") else "safetensors"
    if requested not in ("safetensors", "ntire"):
        raise SRDeployError(f"--format {requested!r}: expected safetensors or ntire")
    return "ntire" if requested == "ntire" else "safetensors"


def fuse_checkpoint(
    source: str | Path,
    output: str | Path,
    *,
    output_format: str | None = None,
    report_path: str | Path | None = None,
    seed: int = 0,
    accept_border_error: bool = False,
) -> FuseReport:
    """Collapse a training-time checkpoint, prove it equal, and only then write it (atomically).

    A fold that is not exact at the image border is refused unless `accept_border_error`; then the proof holds
    beyond the network's receptive radius and the report carries the border error.
    """
    from sr_deploy.fileio import check_output_path, dumps_json, write_text_atomic

    fmt = output_format_for(output, output_format)
    check_output_path(output, "-o")
    if report_path is not None:
        check_output_path(report_path, "--report")
    # `fuse X -o X` would replace the training-time weights by their collapse: the CLB form is gone for good.
    refuse_overwriting_inputs([("-o", output), ("--report", report_path)], [("the checkpoint", weights_path(source))])
    weights = load_weights(source)
    train_model = weights.build()
    proven = prove_collapse(train_model, seed=seed, accept_border_error=accept_border_error)
    deploy, proof = proven.model, proven.equivalence
    assert isinstance(deploy, SRNet)
    if fmt == "ntire":
        save_ntire(deploy, output)
    else:
        save_weights(
            deploy,
            output,
            source=weights.provenance.get("source", weights.source),
            source_sha256=weights.provenance.get("source_sha256", weights.sha256),
            extra={"fused_from_sha256": weights.sha256},
        )
    report = FuseReport(
        source=weights.source,
        source_sha256=weights.sha256,
        output=str(output),
        output_format=fmt,
        arch_in=train_model.spec.name,
        arch_out=deploy.spec.name,
        params_in=sum(p.numel() for p in train_model.parameters()),
        params_out=sum(p.numel() for p in deploy.parameters()),
        equivalence=proof.to_dict(),
        note=""
        if train_model.spec.training_form
        else f"nothing to fold: {train_model.spec.name} is already in deploy form; weights written unchanged",
        collapse=proven.collapse.to_dict(),
    )
    if report_path is not None:
        write_text_atomic(report_path, dumps_json(report.to_dict()), "--report")
    return report
