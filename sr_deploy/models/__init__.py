"""Model specs, presets and the IMDN network."""

from sr_deploy.models.clb import ParallelConv
from sr_deploy.models.imdn import IMDN, build_model, receptive_radius
from sr_deploy.models.spec import BLOCK_CONVS, PRESETS, ModelSpec, preset

__all__ = ["BLOCK_CONVS", "IMDN", "PRESETS", "ModelSpec", "ParallelConv", "build_model", "preset", "receptive_radius"]
