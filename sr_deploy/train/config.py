"""Training configuration: the paper's recipe as defaults, loadable from TOML, overridable from flags.

The defaults reproduce "Efficient Image Super-Resolution with Collapsible Linear Blocks" (xilinxSR, NTIRE
2022 ESR) as far as the paper states it: a 7-block IMDN whose block convs are trained as 3x3 + parallel
1x1 (``imdn-b7-clb``); stage 1 on 64x64 LR crops, 10 random crops per image per epoch; stage 2 on 160x160
LR crops starting from stage 1's weights; Adam (0.9, 0.999), lr 2e-4, MultiStepLR milestones
[200, 400, 450, 475] with gamma 0.5 over 500 epochs, batch 32, L1 loss; random flips and 90-degree rotations.

Where the paper is silent, these are our assumptions (also in the README's training section):

- Stage 2 repeats stage 1's schedule: 500 epochs, the same milestones, gamma 0.5, batch 32, and 10 crops
  per image per epoch. It starts from stage 1's final weights with a fresh Adam state and the learning rate
  back at 2e-4 (a new optimizer and scheduler per stage).
- The scheduler steps once per epoch (milestones are epochs, not iterations).
- An epoch is ``crops_per_image`` crops of every usable image, shuffled together; the last batch may be
  smaller (no samples dropped). Crop positions and augmentations are drawn independently per crop.
- Augmentation: horizontal flip, vertical flip and transpose, each with probability 1/2 (the 8 dihedral
  transforms of a square crop, uniformly), applied identically to the LR and HR crops.
- No weight decay, no gradient clipping, no EMA, no warm-up; Adam eps 1e-8 (PyTorch's default).
- LR images are MATLAB-bicubic downscales (antialiased) of the modcropped HR in float, rounded to uint8,
  as DIV2K's ``LR_bicubic``; training pixels are RGB in [0, 1] without mean subtraction.
- ``batch_size`` is the global batch: under DDP each of N processes takes ``batch_size / N``.
- Validation: RGB PSNR with a 4-pixel border (the challenge's metric) on the uint8 output; "best" is the
  highest RGB PSNR over the whole run, both stages.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sr_deploy.archs.registry import arch_of, preset
from sr_deploy.archs.spec import ArchSpec
from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import write_text_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
LOSSES: tuple[str, ...] = ("l1",)
STORAGES: tuple[str, ...] = ("decoded", "memory", "png")
PAPER_MILESTONES: tuple[int, ...] = (200, 400, 450, 475)
#: Seeds feed numpy's SeedSequence and torch.Generator (after x1000 + stage): non-negative and within 32 bits.
MAX_SEED = 2**32 - 1
#: A bound on epochs, batch sizes, crops and the like: larger is a typo, and would overflow step counters' plans.
MAX_COUNT = 10**9


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return _is_number(value)
    if kind is int:
        return _is_int(value)
    return isinstance(value, kind)


def _type_problems(obj: Any, where: str) -> list[str]:
    """Every field of a config dataclass whose value cannot be of its declared kind, element types of the lists
    included (``betas = ["a", "b"]``, ``milestones = ["x"]``), as messages naming the key. Optional fields (default
    None) and nested tables are checked where they are used."""
    out = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:  # pragma: no cover - every config field has a default
            continue
        if default is None or isinstance(default, dict) or dataclasses.is_dataclass(default):
            continue
        if isinstance(default, tuple):
            elem = type(default[0]) if default else str
            if dataclasses.is_dataclass(elem):
                continue
            ok = isinstance(value, (tuple, list)) and all(_kind_ok(v, elem) for v in value)
        else:
            ok = _kind_ok(value, type(default))
        if not ok:
            out.append(f"{where}.{f.name} has the wrong type: {value!r}")
    return out


@dataclass(frozen=True)
class StageConfig:
    """One stage of training: crops, optimizer and learning-rate schedule."""

    name: str = "stage1"
    lr_patch: int = 64  # LR crop side; the HR crop is lr_patch * scale
    crops_per_image: int = 10
    epochs: int = 500
    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = PAPER_MILESTONES
    gamma: float = 0.5
    loss: str = "l1"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["milestones"] = list(self.milestones)
        return d

    def problems(self, where: str) -> list[str]:
        # Types first: a TOML string where a number belongs must be named, not crash the comparisons below.
        wrong = _type_problems(self, where)
        if wrong:
            return wrong
        out = []
        for name in ("lr_patch", "crops_per_image", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                out.append(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
            elif getattr(self, name) > MAX_COUNT:
                out.append(f"{where}.{name} must be <= {MAX_COUNT}, got {getattr(self, name)}")
        # math.isfinite: `lr = inf` compares > 0 and would only fail once the run folder exists.
        if not (math.isfinite(self.lr) and self.lr > 0):
            out.append(f"{where}.lr must be a finite number > 0, got {self.lr}")
        if not math.isfinite(self.eps) or self.eps < 0:
            out.append(f"{where}.eps must be a finite number >= 0, got {self.eps}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            out.append(f"{where}.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(f"{where}.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            out.append(f"{where}.milestones must be increasing epochs >= 1, got {list(self.milestones)}")
        if not 0 < self.gamma <= 1:
            out.append(f"{where}.gamma must be in (0, 1], got {self.gamma}")
        if self.loss not in LOSSES:
            out.append(f"{where}.loss must be one of {list(LOSSES)}, got {self.loss!r}")
        return out


def paper_stages() -> tuple[StageConfig, ...]:
    """The paper's two stages (stage 2's epochs, schedule and crops per image are our assumption)."""
    return (StageConfig(name="stage1", lr_patch=64), StageConfig(name="stage2", lr_patch=160))


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are fed. Empty strings in TOML mean "not set"."""

    hr_dirs: tuple[str, ...] = ()
    #: empty (LR made with the MATLAB bicubic and cached) or one LR folder per HR folder, in the same order.
    lr_dirs: tuple[str, ...] = ()
    val_hr_dir: str | None = None
    #: where made LR images and decoded arrays are cached; None: $SRDEPLOY_CACHE/train or ~/.cache/srdeploy/train.
    cache_dir: str | None = None
    num_workers: int = 4
    #: how crops are read: "decoded" (every image decoded once to an .npy in cache_dir and memory-mapped: a crop
    #: reads only its own pages, shared by all workers and DDP ranks through the page cache; DIV2K + Flickr2K
    #: take about 30 GB of disk), "memory" (decoded into each process's RAM), "png" (decoded for every crop).
    storage: str = "decoded"
    augment: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hr_dirs"] = list(self.hr_dirs)
        d["lr_dirs"] = list(self.lr_dirs)
        return d


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. `stages` run in order; each after the first starts from the previous weights."""

    arch: str = "imdn-b7-clb"
    #: overrides of the arch's ArchSpec fields, e.g. {"channels": 16, "distilled": 4} for a tiny model.
    model: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = True  # only applied on CUDA
    #: plain or CLB weights (e.g. a published NTIRE .pth) that stage 1 starts from instead of a random init.
    init_from: str | None = None
    val_every: int = 5  # epochs; validation also runs at the end of every stage
    val_at_start: bool = False  # validate the initial weights (useful with init_from)
    checkpoint_every: int = 10  # epochs; checkpoints also at every stage end and on SIGINT/SIGTERM
    keep_last: int = 3  # epoch snapshots kept in checkpoints/ (best/last are always kept)
    log_every: int = 50  # steps between "step" lines in metrics.jsonl
    data: DataConfig = field(default_factory=DataConfig)
    stages: tuple[StageConfig, ...] = field(default_factory=paper_stages)

    def spec(self, source: str = "config") -> ArchSpec:
        """The ArchSpec this run trains: the arch preset with `model` overrides applied, checked like a
        checkpoint's spec (types and bounds: ``channels = "sixteen"`` or ``blocks = 100000`` name the key)."""
        base = preset(self.arch, "arch")
        known = {f.name for f in fields(base)}  # type: ignore[arg-type]
        unknown = sorted(set(self.model) - known)
        if unknown:
            raise SRDeployError(f"{source}: unknown key model.{unknown[0]}; expected one of {sorted(known)}")
        merged = {**base.to_dict(), **self.model}
        spec: ArchSpec = arch_of(base).spec_from_dict(merged, f"{source}: [model]")
        return spec

    def validate(self, source: str = "") -> TrainConfig:
        """Raise one SRDeployError listing every problem (naming `source`, the config file, when given); return
        self so calls chain. Everything a run needs from its config is checked here, before a run folder exists."""
        try:
            return self._validate(source or "config")
        except SRDeployError as e:
            if source and not str(e).startswith(source):
                raise SRDeployError(f"{source}: {e}") from None
            raise

    def _validate(self, source: str) -> TrainConfig:
        problems: list[str] = []
        problems += [p.replace("config.", "", 1) for p in _type_problems(self, "config")]
        problems += [p.replace("config.", "", 1) for p in _type_problems(self.data, "config.data")]
        if problems:  # the range checks below would compare a string with a number
            raise SRDeployError("invalid training config: " + "; ".join(problems))
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        for name in ("val_every", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
            elif getattr(self, name) > MAX_COUNT:
                problems.append(f"{name} must be <= {MAX_COUNT}, got {getattr(self, name)}")
        if self.data.storage not in STORAGES:
            problems.append(f"data.storage must be one of {list(STORAGES)}, got {self.data.storage!r}")
        if self.data.num_workers < 0:
            problems.append(f"data.num_workers must be >= 0, got {self.data.num_workers}")
        if self.data.lr_dirs and len(self.data.lr_dirs) != len(self.data.hr_dirs):
            problems.append(
                f"give one LR folder per HR folder (got {len(self.data.lr_dirs)} LR for "
                f"{len(self.data.hr_dirs)} HR) or none to make LR with the MATLAB bicubic"
            )
        if not self.stages:
            problems.append("stages: at least one stage is needed")
        for i, stage in enumerate(self.stages):
            problems.extend(stage.problems(f"stages[{i}]"))
        if problems:
            raise SRDeployError("invalid training config: " + "; ".join(problems))
        self.spec(source)  # raises on a bad arch or model override
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "model": dict(self.model),
            "seed": self.seed,
            "device": self.device,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "init_from": self.init_from,
            "val_every": self.val_every,
            "val_at_start": self.val_at_start,
            "checkpoint_every": self.checkpoint_every,
            "keep_last": self.keep_last,
            "log_every": self.log_every,
            "data": self.data.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a TOML-shaped dict; any unknown key is an error that names it."""
        top = _check_keys(d, cls, source, "", nested={"data", "stages", "model"})
        kwargs: dict[str, Any] = {k: _none_if_empty(v) for k, v in top.items()}
        if "model" in d:
            if not isinstance(d["model"], dict):
                raise SRDeployError(f"{source}: model must be a table of ArchSpec fields")
            kwargs["model"] = dict(d["model"])
        if "data" in d:
            if not isinstance(d["data"], dict):
                raise SRDeployError(f"{source}: data must be a table")
            data = _check_keys(d["data"], DataConfig, source, "data.")
            for key in ("hr_dirs", "lr_dirs"):
                if key in data:
                    data[key] = tuple(str(p) for p in _as_list(data[key], f"{source}: data.{key}"))
            kwargs["data"] = DataConfig(**{k: _none_if_empty(v) for k, v in data.items()})
        if "stages" in d:
            raw = _as_list(d["stages"], f"{source}: stages")
            stages = []
            for i, s in enumerate(raw):
                if not isinstance(s, dict):
                    raise SRDeployError(f"{source}: stages[{i}] must be a table ([[stages]])")
                st = _check_keys(s, StageConfig, source, f"stages[{i}].")
                for key in ("betas", "milestones"):
                    if key in st:
                        st[key] = tuple(_as_list(st[key], f"{source}: stages[{i}].{key}"))
                st.setdefault("name", f"stage{i + 1}")
                stages.append(StageConfig(**st))
            kwargs["stages"] = tuple(stages)
        try:
            cfg = cls(**kwargs)
        except TypeError as e:  # a wrong value type that dataclasses caught
            raise SRDeployError(f"{source}: {e}") from None
        return cfg.validate(source)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_toml(), "config")

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """Flags over the config. Stage-level keys (epochs, batch_size, lr, ...) apply to every stage.

        Keys whose value is None are ignored, so a CLI can pass every flag through unchanged.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        stage_keys = {f.name for f in fields(StageConfig)} - {"name"}
        data_keys = {f.name for f in fields(DataConfig)}
        top_keys = {f.name for f in fields(TrainConfig)} - {"data", "stages"}
        unknown = sorted(set(given) - stage_keys - data_keys - top_keys)
        if unknown:
            raise SRDeployError(f"unknown override {unknown[0]!r}")
        stage_over = {k: v for k, v in given.items() if k in stage_keys}
        data_over = {k: v for k, v in given.items() if k in data_keys}
        top_over = {k: v for k, v in given.items() if k in top_keys}
        for key in ("hr_dirs", "lr_dirs"):
            if key in data_over:
                data_over[key] = tuple(str(p) for p in data_over[key])
        stages = tuple(replace(s, **stage_over) for s in self.stages)
        return replace(self, **top_over, data=replace(self.data, **data_over), stages=stages).validate()


def _none_if_empty(v: Any) -> Any:
    # TOML has no null: an empty string stands for "not set" in optional string fields.
    return None if v == "" else v


def _as_list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise SRDeployError(f"{what} must be a list, got {type(v).__name__}")
    return v


def _check_keys(
    d: dict[str, Any], cls: type[Any], source: str, prefix: str, nested: set[str] | None = None
) -> dict[str, Any]:
    """The entries of `d` that are plain fields of `cls`; an unknown key is an error that names it."""
    known = {f.name: f for f in fields(cls)}
    for key, value in d.items():
        if key not in known:
            raise SRDeployError(f"{source}: unknown key {prefix}{key!r}; expected one of {sorted(known)}")
        _check_type(known[key], value, f"{source}: {prefix}{key}")
    return {k: v for k, v in d.items() if k not in (nested or set())}


def _check_type(f: dataclasses.Field[Any], value: Any, where: str) -> None:
    """A TOML value whose type cannot be the field's (a string for an int, ...) is an error naming the key."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:  # pragma: no cover - every config field has a default
        return
    if default is None or value == "":
        ok = isinstance(value, str)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, list)
    elif isinstance(default, dict) or dataclasses.is_dataclass(default):
        ok = isinstance(value, (dict, list))
    else:  # pragma: no cover
        ok = True
    if not ok:
        raise SRDeployError(f"{where}: wrong type {type(value).__name__} ({value!r})")


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML file (every key optional; missing ones keep the paper's defaults)."""
    p = Path(path)
    if not p.is_file():
        raise SRDeployError(f"{p}: no such config file")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SRDeployError(f"{p}: not valid TOML ({e})") from None
    return TrainConfig.from_dict(raw, source=str(p))


# --- a small TOML writer: enough for TrainConfig (no dependency on tomli_w) -------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: dict[str, Any]) -> str:
    """Scalars and lists at the top, then tables, then arrays of tables. None values are left out."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    for name, items in arrays:
        for item in items:
            lines += ["", f"[[{name}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None]
    return "\n".join(lines) + "\n"
