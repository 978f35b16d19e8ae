"""The one comparison module against naive float64 oracles written out element by element."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from strict_json import loads_strict
from torch import nn

from sr_deploy.archs.imdn import IMDN
from sr_deploy.compare import (
    Comparison,
    Tolerance,
    check,
    compare_outputs,
    mean_brightness_shift,
    psnr_db,
    psnr_vs_hr,
)
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.export.onnx import (
    HALF_LABEL,
    ExportGates,
    ReferenceImage,
    _gates,
    build_onnx_model,
    random_references,
    verify_onnx,
)
from sr_deploy.fusion import verify_equivalence
from sr_deploy.precision import PRECISIONS, parse_precision
from sr_deploy.runtime.torch_backend import check_precision, require_precision


def _naive_psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    total = 0.0
    for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True):
        total += (x - y) ** 2
    mse = total / a.size
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def test_psnr_matches_a_naive_sum_and_is_inf_for_identical() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((1, 3, 5, 7)).astype(np.float32)
    b = (a + rng.normal(0, 0.01, a.shape)).astype(np.float32)
    assert psnr_db(a, b) == pytest.approx(_naive_psnr(a.astype(np.float64), b.astype(np.float64), 1.0), abs=1e-9)
    assert psnr_db(a * 255, b * 255, peak=255.0) == pytest.approx(psnr_db(a, b), abs=1e-4)
    assert psnr_db(a, a) == math.inf


def test_comparison_pools_samples_and_keeps_the_worst() -> None:
    rng = np.random.default_rng(1)
    refs = [rng.random((1, 3, 4, 4)) for _ in range(3)]
    cands = [r + s for r, s in zip(refs, (0.001, 0.02, 0.005), strict=True)]
    comp = compare_outputs(refs, cands)
    assert comp.samples == 3
    assert comp.max_abs == pytest.approx(0.02)
    assert comp.mean_abs == pytest.approx((0.001 + 0.02 + 0.005) / 3)
    assert comp.worst_psnr_db == pytest.approx(_naive_psnr(refs[1], cands[1], 1.0))
    pooled = np.concatenate([r.reshape(-1) for r in refs]), np.concatenate([c.reshape(-1) for c in cands])
    assert comp.psnr_db == pytest.approx(_naive_psnr(*pooled, 1.0))


def test_nonfinite_values_are_counted_and_fail_every_check() -> None:
    ref = np.zeros((1, 3, 2, 2))
    bad = ref.copy()
    bad[0, 0, 0, 0] = np.nan
    bad[0, 1, 1, 1] = np.inf
    comp = Comparison().add(ref, bad)
    assert comp.nonfinite == 2
    assert comp.max_abs == 0.0  # the finite values agree
    assert comp.worst_psnr_db == -math.inf
    report = check(comp, Tolerance(max_abs=1.0))
    assert not report.passed
    assert "2 NaN/Inf" in report.reasons[0]
    # a non-finite reference (a broken oracle) is no pass either
    assert Comparison().add(bad, ref).nonfinite == 2
    # strict JSON: no NaN or Infinity tokens
    json.dumps(report.to_dict(), allow_nan=False)


def test_check_names_each_failed_bound_and_passes_within_them() -> None:
    ref = np.zeros((1, 3, 4, 4))
    comp = Comparison().add(ref, ref + 0.01)
    ok = check(comp, Tolerance(max_abs=0.02, min_psnr_db=39.0))
    assert ok.passed and ok.reasons == ()
    failed = check(comp, Tolerance(max_abs=0.005, mean_abs=0.001, min_psnr_db=41.0, min_worst_psnr_db=41.0))
    assert len(failed.reasons) == 4
    assert "max abs error 0.01 > 0.005" in failed.reasons[0]
    assert json.loads(json.dumps(failed.to_dict(), allow_nan=False))["passed"] is False


def test_identical_outputs_report_null_psnr_in_json() -> None:
    ref = np.ones((1, 3, 2, 2))
    d = compare_outputs([ref], [ref]).to_dict()
    assert d["psnr_db"] is None and d["max_abs"] == 0.0


def test_mismatched_inputs_are_one_line_errors() -> None:
    with pytest.raises(SRDeployError, match="shape"):
        Comparison().add(np.zeros((1, 3, 2, 2)), np.zeros((1, 3, 2, 3)))
    with pytest.raises(SRDeployError, match="2 reference outputs but 1"):
        compare_outputs([np.zeros(1), np.zeros(1)], [np.zeros(1)])


def test_psnr_vs_hr_gives_rgb_and_y_from_a_float_output() -> None:
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = (hr.transpose(2, 0, 1)[None].astype(np.float64) + 3.0) / 255.0  # every level +3, clipped at 255
    got = psnr_vs_hr(out, hr, crop_border=2)
    sr = np.clip(hr.astype(np.int64) + 3, 0, 255)[2:-2, 2:-2]
    assert got.rgb_db == pytest.approx(_naive_psnr(sr.astype(np.float64), hr[2:-2, 2:-2].astype(np.float64), 255.0))
    assert math.isfinite(got.y_db)


def test_brightness_shift_is_per_channel() -> None:
    ref = np.full((1, 3, 4, 4), 0.5)
    cand = ref.copy()
    cand[0, 2] += 2 / 255
    assert mean_brightness_shift(ref, cand) == pytest.approx(2.0)


def test_precision_words_parse_with_a_named_flag() -> None:
    assert parse_precision("bf16") == "bf16"
    assert PRECISIONS == ("fp32", "fp16", "bf16", "int8")
    with pytest.raises(SRDeployError, match=r"--io 'fp8': expected one of fp32, fp16"):
        parse_precision("fp8", "--io", ("fp32", "fp16"))


# ---------------------------------------------------------------------------------------------- the gates
class _Shifted(nn.Module):
    """`inner`'s output plus a fixed perturbation: a deploy form, half graph or reduced-precision run that is off by a
    known amount."""

    def __init__(self, inner: nn.Module, delta: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("delta", delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x) + self.delta
        return out


def _fp32(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """`model` as check_precision's `run`: NCHW float32 in and out."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out

    return run


@pytest.fixture(scope="module")
def perturbed(tiny_model: IMDN) -> tuple[np.ndarray, np.ndarray, float]:
    """(LR, perturbation, PSNR of fp32 output + perturbation against the output: a naive float64 oracle)."""
    lr = random_references(tiny_model.spec, seed=3, shapes=((9, 7),))[0].lr
    with torch.inference_mode():
        out = tiny_model(torch.from_numpy(lr)).numpy()
    delta = (0.003 * np.random.default_rng(4).standard_normal(out.shape)).astype(np.float32)
    shifted = out + delta  # float32, as every perturbed runtime below adds it
    return lr, delta, _naive_psnr(out.astype(np.float64), shifted.astype(np.float64), 1.0)


def test_fusion_proof_measures_a_known_perturbation(
    tiny_model: IMDN, perturbed: tuple[np.ndarray, np.ndarray, float]
) -> None:
    lr, delta, oracle = perturbed
    deploy = _Shifted(tiny_model, torch.from_numpy(delta).double())
    x = torch.from_numpy(lr).double()
    top = float(np.abs(delta).max())
    proof = verify_equivalence(tiny_model, deploy, inputs=x, tol_f64=2 * top, tol_f32=2 * top)
    assert proof.psnr_f32_db == pytest.approx(oracle, abs=1e-6)
    assert proof.max_abs_f64 == pytest.approx(top, rel=1e-6) and proof.passed
    tight = verify_equivalence(tiny_model, deploy, inputs=x, tol_f64=2 * top, tol_f32=top / 2)
    assert not tight.passed and len(tight.reasons) == 1 and tight.reasons[0].startswith("float32: max abs error")


def test_fusion_proof_fails_on_nan_and_reports_strict_json(tiny_model: IMDN) -> None:
    x = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = torch.zeros(1, 3, 36, 28, dtype=torch.float64)
    delta[0, 1, 5, 5] = math.nan
    proof = verify_equivalence(tiny_model, _Shifted(tiny_model, delta), inputs=x)
    assert not proof.passed and proof.max_abs_f64 < 1e-10  # the finite values agree; the NaN fails it
    d = loads_strict(json.dumps(proof.to_dict()))
    assert d["nonfinite_f64"] == 1 and d["psnr_f32_db"] is None and not d["passed"]


def test_onnx_fp16_gate_measures_a_known_perturbation(
    tiny_model: IMDN, perturbed: tuple[np.ndarray, np.ndarray, float]
) -> None:
    """The gate takes the worse runtime: here torch half, replaced by fp32 plus the perturbation."""
    lr, delta, oracle = perturbed
    graph = build_onnx_model(tiny_model).SerializeToString()
    report = verify_onnx(
        graph,
        tiny_model,
        [ReferenceImage("lr", lr)],
        precision="fp16",
        real_images=False,
        label="one input",
        gates=ExportGates(fp16_min_psnr_db=oracle - 0.5),
        half_graph=_Shifted(tiny_model, torch.from_numpy(delta)),
    )
    gate = report.gates[1]
    assert gate.source == HALF_LABEL and gate.value == pytest.approx(oracle, abs=1e-6) and report.passed
    assert report.psnr_db > oracle + 20  # ONNX Runtime itself is float32-close to torch
    failed = _gates(report, "fp16", ExportGates(fp16_min_psnr_db=oracle + 0.5))
    assert not failed[1].passed and failed[0].passed


def test_bf16_check_measures_a_known_perturbation(
    tiny_model: IMDN, perturbed: tuple[np.ndarray, np.ndarray, float]
) -> None:
    lr, delta, oracle = perturbed
    run = _fp32(_Shifted(tiny_model, torch.from_numpy(delta)))
    refs = [ReferenceImage("lr", lr)]
    ok = check_precision(tiny_model, refs, precision="bf16", run=run, min_psnr_db=oracle - 0.5)
    assert ok.psnr_vs_fp32_db == pytest.approx(oracle, abs=1e-6) and ok.passed
    strict = check_precision(tiny_model, refs, precision="bf16", run=run, min_psnr_db=oracle + 0.5)
    with pytest.raises(GateFailedError, match=f"output PSNR {oracle:.2f} dB"):
        require_precision(strict)


def test_bf16_check_refuses_nan_and_reports_identical_outputs_in_strict_json(tiny_model: IMDN) -> None:
    lr = random_references(tiny_model.spec, seed=5, shapes=((9, 7),))[0].lr
    hr = np.full((36, 28, 3), 128, dtype=np.uint8)  # with HR the Y-PSNR rule applies, which clamps NaN away

    def run(x: np.ndarray) -> np.ndarray:
        out = _fp32(tiny_model)(x)
        out[0, 0, 0, 0] = math.nan
        return out

    bad = check_precision(tiny_model, [ReferenceImage("lr", lr, hr)], precision="bf16", run=run, max_y_drop_db=1e9)
    assert not bad.passed and bad.comparison.nonfinite == 1
    with pytest.raises(GateFailedError, match="1 NaN/Inf output values"):
        require_precision(bad)
    exact = check_precision(tiny_model, [ReferenceImage("lr", lr)], precision="bf16", run=_fp32(tiny_model))
    d = loads_strict(json.dumps(exact.to_dict()))
    assert exact.passed and d["psnr_vs_fp32_db"] is None and d["max_abs"] == 0.0
