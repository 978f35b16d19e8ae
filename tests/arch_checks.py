"""Checks the per-architecture test files share: per-image PSNR against a reference, the NTIRE counter, and the
ONNX operator set with ONNX Runtime agreeing with torch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_deploy.archs.base import Architecture, SRNet
from sr_deploy.imaging.io import from_model_output, read_image, to_tensor_layout
from sr_deploy.imaging.metrics import psnr
from sr_deploy.imaging.resize import modcrop
from sr_deploy.profile import profile_model

COMMON_ONNX_OPS = {"Conv", "Add", "DepthToSpace", "Cast"}


def assert_reference_psnr(model: SRNet, folder: Path, expected: Mapping[str, Mapping[str, float]]) -> None:
    """Every image of `folder` (LR_bicubic_x4/ and HR/), RGB and Y, within 0.005 dB of `expected[name]`."""
    assert expected
    for name, want in expected.items():
        lr = read_image(folder / "LR_bicubic_x4" / name).rgb
        hr = modcrop(read_image(folder / "HR" / name).rgb, 4)
        with torch.no_grad():
            sr = from_model_output(model(torch.from_numpy(to_tensor_layout(lr))).numpy(), 8)
        assert sr.shape == hr.shape and sr.dtype == np.uint8
        for y_channel, kind in ((False, "rgb"), (True, "y")):
            got = psnr(sr, hr, crop_border=4, y_channel=y_channel)
            assert abs(got - want[kind]) <= 0.005, (name, kind, got, want[kind])


def assert_ntire_counter(model: SRNet, want: Mapping[str, Any]) -> None:
    """The challenge counter's params and convs exactly, FLOPs (G) and activations (M) to 4 decimals."""
    got = profile_model(model, (256, 256))
    assert got.params == want["params"] and got.convs == want["convs"]
    assert round(got.flops / 1e9, 4) == round(want["flops_g"], 4)
    assert round(got.activations / 1e6, 4) == round(want["activations_m"], 4)


def assert_onnx_ops_and_ort_agree(model: SRNet, arch: Architecture[Any]) -> None:
    """The project's export (dynamic batch, height and width) holds exactly the descriptor's operators beyond the
    common set, and ONNX Runtime matches torch at odd, non-square sizes."""
    import onnxruntime as ort

    from sr_deploy.export.onnx import build_onnx_model

    proto = build_onnx_model(model)
    assert {n.op_type for n in proto.graph.node} - COMMON_ONNX_OPS == arch.onnx_ops
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for hw in ((37, 29), (50, 61)):
        x = torch.rand(1, 3, *hw)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"lr": x.numpy()})[0]
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) < 1e-4
