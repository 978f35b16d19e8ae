"""The network, the checkpoint import and the metric against the challenge's own numbers (reference_psnr.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_deploy.checkpoints import load_model
from sr_deploy.imaging.io import from_model_output, read_image, to_tensor_layout
from sr_deploy.imaging.metrics import psnr
from sr_deploy.imaging.resize import modcrop


@pytest.mark.parametrize("weights", ["team26_imdn_nb7.pth", "imdn_baseline.pth"])
def test_set5_per_image_psnr_matches_the_reference(shared: Path, weights: str) -> None:
    reference = json.loads((shared / "data" / "reference_psnr.json").read_text())["results"][f"Set5/{weights}"]
    model, _ = load_model(shared / "data" / "weights" / weights)
    for name, expected in reference["per_image"].items():
        lr = read_image(shared / "data" / "Set5" / "LR_bicubic_x4" / name).rgb
        hr = modcrop(read_image(shared / "data" / "Set5" / "HR" / name).rgb, 4)
        with torch.no_grad():
            sr = from_model_output(model(torch.from_numpy(to_tensor_layout(lr))).numpy(), 8)
        assert sr.shape == hr.shape and sr.dtype == np.uint8
        got_rgb = psnr(sr, hr, crop_border=4, y_channel=False)
        got_y = psnr(sr, hr, crop_border=4, y_channel=True)
        assert abs(got_rgb - expected["psnr_rgb"]) <= 0.005, (name, got_rgb, expected)
        assert abs(got_y - expected["psnr_y"]) <= 0.005, (name, got_y, expected)
