"""The models a bench run times: the deploy form and, for ``--backend all``, the training-time CLB form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sr_deploy.archs.base import SRNet


@dataclass
class BenchModels:
    """The deploy model to time, the training-time CLB form (for ``--backend all``), and their provenance."""

    deploy: SRNet
    clb: SRNet | None
    arch: str
    weights_source: str
    weights_sha256: str
    random_weights: bool
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "random_weights": self.random_weights,
            "params": self.params,
            "scale": self.deploy.spec.scale,
        }


def load_bench_models(weights: str | None, *, need_clb: bool, seed: int) -> BenchModels:
    """Weights from `weights`, or the paper's deploy model with seeded random weights.

    The random model is built in its training-time CLB form and collapsed, so the CLB row and the deploy rows
    of ``--backend all`` compute the same function, as they do with real weights.
    """
    from sr_deploy.archs.base import SRNet
    from sr_deploy.archs.registry import arch_of, build_model, preset
    from sr_deploy.checkpoints import load_model
    from sr_deploy.fusion import collapse

    if weights is None:
        clb = build_model(preset("imdn-b7-clb"), seed=seed).eval()
        deploy = collapse(clb)
        assert isinstance(deploy, SRNet)
        return BenchModels(
            deploy=deploy,
            clb=clb if need_clb else None,
            arch=deploy.spec.name,
            weights_source=f"seeded random (seed {seed})",
            weights_sha256="",
            random_weights=True,
            params=sum(p.numel() for p in deploy.parameters()),
        )
    deploy, loaded = load_model(weights, form="plain")
    has_training_form = arch_of(deploy.spec).training_spec(deploy.spec) is not None
    clb_model = load_model(weights, form="clb")[0] if need_clb and has_training_form else None
    return BenchModels(
        deploy=deploy,
        clb=clb_model,
        arch=deploy.spec.name,
        weights_source=loaded.source,
        weights_sha256=loaded.sha256,
        random_weights=False,
        params=sum(p.numel() for p in deploy.parameters()),
    )
