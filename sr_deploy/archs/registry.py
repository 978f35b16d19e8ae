"""The architecture registry: one line per architecture, imported only when asked for.

Everything that needs to know which network a spec, a preset name or a state dict belongs to asks here.
"""

from __future__ import annotations

import difflib
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sr_deploy.archs.base import Architecture, SRNet, check_state_dict, seeded_build
from sr_deploy.archs.spec import ArchSpec, PublishedWeights
from sr_deploy.errors import SRDeployError, name_list

#: id -> module defining ``ARCH``. Adding an architecture is its module, one line here and its test file.
ARCH_MODULES: dict[str, str] = {
    "imdn": "sr_deploy.archs.imdn",
    "rfdn": "sr_deploy.archs.rfdn",
    "rlfn": "sr_deploy.archs.rlfn",
    "fmen": "sr_deploy.archs.fmen",
}

#: Specs written before the registry existed carry no "arch" field; they were all IMDN.
LEGACY_ARCH = "imdn"


def get_arch(arch_id: str) -> Architecture[Any]:
    if arch_id not in ARCH_MODULES:
        raise SRDeployError(f"unknown architecture {arch_id!r}: expected one of {', '.join(ARCH_MODULES)}")
    arch: Architecture[Any] = importlib.import_module(ARCH_MODULES[arch_id]).ARCH
    return arch


def all_archs() -> list[Architecture[Any]]:
    return [get_arch(a) for a in ARCH_MODULES]


def arch_of(spec: ArchSpec) -> Architecture[Any]:
    return get_arch(spec.ARCH)


def spec_from_dict(d: Mapping[str, Any], source: str = "spec") -> ArchSpec:
    arch_id = d.get("arch", LEGACY_ARCH)
    if not isinstance(arch_id, str) or arch_id not in ARCH_MODULES:
        raise SRDeployError(f"{source}: unknown architecture {arch_id!r}; expected one of {', '.join(ARCH_MODULES)}")
    spec: ArchSpec = get_arch(arch_id).spec_from_dict(d, source)
    return spec


def spec_from_json(text: str, source: str = "spec") -> ArchSpec:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise SRDeployError(f"{source}: model spec is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise SRDeployError(f"{source}: model spec JSON must be an object")
    return spec_from_dict(d, source)


def preset_names() -> dict[str, str]:
    """Every listed preset of every architecture, name -> description."""
    out: dict[str, str] = {}
    for arch in all_archs():
        out.update(arch.presets())
    return out


def preset(name: str, flag: str = "--arch") -> ArchSpec:
    """The spec for a preset name of any architecture; an unknown name lists the close ones."""
    key = name.strip().lower()
    for arch in all_archs():
        try:
            spec: ArchSpec | None = arch.parse_preset(key)
        except SRDeployError as e:  # a preset pattern with out-of-range numbers: name the flag and what was typed
            raise SRDeployError(f"{flag} {name!r}: {e}") from None
        if spec is not None:
            return spec
    names = list(preset_names())
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise SRDeployError(f"{flag} {name!r}: unknown architecture; {hint}known: {', '.join(names)}")


def build_model(spec: ArchSpec, seed: int | None = None) -> SRNet:
    """The network for `spec`; with `seed`, reproducible weights without touching global RNG state."""
    return seeded_build(arch_of(spec), spec, seed)


@dataclass(frozen=True)
class Detection:
    arch: Architecture[Any]
    layout: str

    @property
    def label(self) -> str:
        return f"{self.arch.id} ({self.layout} layout)"


def detect(sd: Mapping[str, torch.Tensor], source: str) -> Detection:
    """The one architecture and key layout a state dict matches; none or two are one clear error."""
    keys = set(sd)
    found = [Detection(a, lay.name) for a in all_archs() for lay in a.layouts if lay.matches(keys)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise SRDeployError(f"{source}: ambiguous checkpoint, it matches {' and '.join(d.label for d in found)}")
    ranked = sorted(
        ((lay.overlap(keys), a, lay) for a in all_archs() for lay in a.layouts), key=lambda t: t[0], reverse=True
    )
    score, arch, layout = ranked[0]
    some = name_list(sorted(keys), 3)
    if score <= 0:
        # Not one signature key: naming a "closest" architecture would only mislead.
        raise SRDeployError(
            f"{source}: no known architecture matches this state dict (keys {some}); it has none of the signature keys "
            f"of {', '.join(ARCH_MODULES)}"
        )
    missing = [k for k in layout.required if k not in keys]
    present = [k for k in layout.forbidden if k in keys]
    details = []
    if missing:
        details.append(f"missing {name_list(missing, 3)}")
    if present:
        details.append(f"unexpected {name_list(present, 3)}")
    raise SRDeployError(
        f"{source}: no known architecture matches this state dict (keys {some}); closest is {arch.id} "
        f"({layout.name} layout, {score:.0%} of its signature keys): {'; '.join(details)}"
    )


def load_state_dict(sd: Mapping[str, torch.Tensor], source: str) -> tuple[ArchSpec, dict[str, torch.Tensor]]:
    """Detect, rename into the architecture's own keys, infer the spec from shapes and check every key strictly."""
    found = detect(sd, source)
    canonical = found.arch.to_canonical(dict(sd), found.layout)
    # infer_spec builds the spec, whose own checks run then and name `source`.
    spec: ArchSpec = found.arch.infer_spec(canonical, source)
    check_state_dict(found.arch, spec, canonical, source)
    return spec, canonical


def published_weights() -> dict[str, PublishedWeights]:
    return {w.name: w for a in all_archs() for w in a.published}


def receptive_radius(spec: ArchSpec) -> int:
    """LR pixels of context per side of the architecture's local path (see ``Architecture.receptive_radius``)."""
    radius: int = arch_of(spec).receptive_radius(spec)
    return radius


def uncollapse(model: SRNet) -> SRNet:
    """Deploy weights as the training form with zero extra branches: the same function, ready to fine-tune."""
    return arch_of(model.spec).uncollapse(model)


def check_precision_supported(spec: ArchSpec, precision: str, flag: str = "--precision") -> None:
    """Refuse a precision the architecture declares unsafe, before anything is built."""
    reason = arch_of(spec).fp16_refusal
    if precision == "fp16" and reason:
        raise SRDeployError(f"{flag} fp16: refused for {spec.name}: {reason}; use fp32 or bf16")
