"""Weights in and out: our safetensors format, the NTIRE/KAIR IMDN layout, and named published weights.

Our format is a safetensors file whose metadata carries the ModelSpec (so the network can always be
rebuilt) and provenance: where the weights came from, the sha256 of that source, and the srdeploy version.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sr_deploy import __version__
from sr_deploy.errors import SRDeployError, name_list
from sr_deploy.fileio import atomic_path, sha256_file
from sr_deploy.fusion import collapse_verified, uncollapse
from sr_deploy.models.imdn import IMDN
from sr_deploy.models.spec import BLOCK_CONVS, ModelSpec

FORMAT_TAG = "srdeploy"

_MODEL_ZOO = "https://raw.githubusercontent.com/ofsoundof/NTIRE2022_ESR/main/model_zoo/"


@dataclass(frozen=True)
class NamedWeights:
    name: str
    filename: str
    sha256: str
    description: str

    @property
    def url(self) -> str:
        return _MODEL_ZOO + self.filename


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    w.name: w
    for w in (
        NamedWeights(
            "ntire:team26",
            "team26_imdn_nb7.pth",
            "c8bd64b7eebe5d955c00fb5626385e13fa5775518be77a265f3f74b5e33e55a7",
            "xilinxSR (team 26), collapsed 7-block IMDN of 'Efficient Image SR with Collapsible Linear Blocks'",
        ),
        NamedWeights(
            "ntire:imdn-baseline",
            "imdn_baseline.pth",
            "115b4cc557eba9daaf1a6543c4858014c7e2a410655aafef7c8348ae54acc203",
            "the NTIRE 2022 ESR challenge's 8-block IMDN baseline",
        ),
    )
}


@dataclass
class LoadedWeights:
    """A state dict with the spec it belongs to and where it came from."""

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    source: str
    sha256: str
    format: Literal["srdeploy", "ntire"]
    provenance: dict[str, str] = field(default_factory=dict)

    def build(self) -> IMDN:
        model = IMDN(self.spec)
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
    if name not in NAMED_WEIGHTS:
        raise SRDeployError(f"unknown named weights {name!r}: expected one of {', '.join(NAMED_WEIGHTS)}")
    entry = NAMED_WEIGHTS[name]
    folder = cache_dir(cache)
    path = folder / entry.filename
    if not path.is_file():
        if not download:
            raise SRDeployError(f"{name}: {path} is not cached")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(entry.url, timeout=30) as resp, atomic_path(path, "cache file") as tmp:
                tmp.write_bytes(resp.read())
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise SRDeployError(
                f"{name}: cannot download {entry.url} ({e}); put the file there by hand as {path}"
            ) from None
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise SRDeployError(f"{name}: {path} has sha256 {digest}, expected {entry.sha256}; delete it and retry")
    return path


# ---------------------------------------------------------------------------------------------- layout
_BLOCK_RE = re.compile(r"^model\.1\.sub\.(\d+)\.")


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


def infer_spec(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> ModelSpec:
    """Architecture from key names and tensor shapes (the spandrel approach)."""
    if "model.0.weight" not in sd or "model.2.weight" not in sd:
        some = ", ".join(sorted(sd)[:4])
        raise SRDeployError(
            f"{source}: not an IMDN checkpoint (no model.0.weight / model.2.weight; keys start {some}, ...)"
        )
    block_ids = {int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))}
    with_conv1 = {i for i in block_ids if any(k.startswith(f"model.1.sub.{i}.conv1.") for k in sd)}
    if not with_conv1:
        raise SRDeployError(f"{source}: no IMDN blocks found (no model.1.sub.<i>.conv1 keys)")
    blocks = max(with_conv1) + 1
    head = sd["model.0.weight"]
    channels, in_channels = int(head.shape[0]), int(head.shape[1])
    conv4 = next((v for k, v in sd.items() if k.startswith("model.1.sub.0.conv4.") and k.endswith("weight")), None)
    if conv4 is None:
        raise SRDeployError(f"{source}: missing model.1.sub.0.conv4 weights")
    distilled = int(conv4.shape[0])
    up = int(sd["model.2.weight"].shape[0])
    out_channels = in_channels
    scale = round((up / out_channels) ** 0.5)
    if scale * scale * out_channels != up:
        raise SRDeployError(f"{source}: upsampler has {up} output channels, not 3 x scale^2")
    clb = tuple(c for c in BLOCK_CONVS if any(k.startswith(f"model.1.sub.0.{c}") and ".branches.1." in k for k in sd))
    return ModelSpec(
        blocks=blocks,
        channels=channels,
        distilled=distilled,
        scale=scale,
        in_channels=in_channels,
        out_channels=out_channels,
        clb_convs=clb,
    )


def check_state_dict(spec: ModelSpec, sd: dict[str, torch.Tensor], source: str) -> None:
    """Every missing, unexpected or mis-shaped key, by name, as one error."""
    expected = {k: tuple(v.shape) for k, v in IMDN(spec).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(k for k in set(expected) & set(sd) if tuple(sd[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing keys {name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {name_list(unexpected)}")
    if shapes:
        k = shapes[0]
        problems.append(f"wrong shapes {name_list(shapes)} (e.g. {k}: {tuple(sd[k].shape)}, expected {expected[k]})")
    if problems:
        raise SRDeployError(f"{source}: does not match {spec.name}: " + "; ".join(problems))


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
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SRDeployError(f"{path}: not a PyTorch weights file that loads with weights_only=True ({first})") from None


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
    kind = _looks_like(path)
    if kind:
        raise SRDeployError(f"{path}: is {kind}, expected weights (.safetensors or .pth)")
    digest = sha256_file(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON header.
    is_safetensors = path.suffix.lower() == ".safetensors" or head[8:9] == b"{"
    meta: dict[str, str] = {}
    if is_safetensors:
        sd, meta = _load_safetensors(path)
    else:
        sd = _unwrap(_load_pth(path), path)
    ours = meta.get("format") == FORMAT_TAG and "spec" in meta
    spec = ModelSpec.from_json(meta["spec"]) if ours else infer_spec(sd, str(path))
    check_state_dict(spec, sd, str(path))
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
) -> tuple[IMDN, LoadedWeights]:
    """Build the model for `source` in eval mode, converting CLB <-> plain when `form` asks for it.

    Conversion is exact either way: CLB -> plain is the proven collapse, plain -> CLB adds zero 1x1 branches.
    """
    weights = load_weights(source, cache=cache)
    model = weights.build()
    if form == "plain" and model.spec.clb:
        collapsed, _ = collapse_verified(model)
        assert isinstance(collapsed, IMDN)
        model = collapsed
    elif form == "clb" and not model.spec.clb:
        model = uncollapse(model).eval()
    return model, weights


def save_weights(
    model: IMDN,
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
    with atomic_path(path, "weights") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def ntire_state_dict(model: IMDN) -> dict[str, torch.Tensor]:
    """The state dict in the challenge's own key layout (plain models only)."""
    if model.spec.clb:
        raise SRDeployError(
            f"{model.spec.name} is a training-time (CLB) model; "
            "collapse it first (srdeploy fuse) to export the NTIRE layout"
        )
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}


def save_ntire(model: IMDN, path: str | Path) -> Path:
    """Write a .pth that loads strict=True into the challenge's IMDN class."""
    sd = ntire_state_dict(model)
    with atomic_path(path, "weights") as tmp:
        torch.save(sd, tmp)
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
) -> FuseReport:
    """Collapse a training-time checkpoint, prove it equal, and only then write it (atomically)."""
    from sr_deploy.fileio import check_output_path, write_text_atomic

    fmt = output_format_for(output, output_format)
    check_output_path(output, "-o")
    if report_path is not None:
        check_output_path(report_path, "--report")
    weights = load_weights(source)
    train_model = weights.build()
    deploy, proof = collapse_verified(train_model, seed=seed)
    assert isinstance(deploy, IMDN)
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
    )
    if report_path is not None:
        write_text_atomic(report_path, json.dumps(report.to_dict(), indent=2) + "\n", "--report")
    return report
