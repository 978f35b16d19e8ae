"""The one comparison module against naive float64 oracles written out element by element."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sr_deploy.compare import (
    Comparison,
    Tolerance,
    check,
    compare_outputs,
    mean_brightness_shift,
    psnr_db,
    psnr_vs_hr,
)
from sr_deploy.errors import SRDeployError
from sr_deploy.precision import PRECISIONS, parse_precision


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
