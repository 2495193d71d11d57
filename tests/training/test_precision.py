"""core.training.precision: the bf16 training probe measures and decides consistently."""

from __future__ import annotations

from core.training.precision import MARGIN, PrecisionProbe, probe_cpu_bf16


def test_the_probe_times_both_precisions_and_decides_by_them() -> None:
    probe = probe_cpu_bf16(repeats=1)
    assert 0 < probe.fp32_s < 30 and 0 < probe.bf16_s < 30
    assert probe.bf16_faster == (probe.bf16_s * MARGIN < probe.fp32_s)
    assert "fp32" in probe.describe() and "bf16" in probe.describe()


def test_bf16_must_win_by_the_margin() -> None:
    assert PrecisionProbe(fp32_s=1.0, bf16_s=0.5).bf16_faster
    assert not PrecisionProbe(fp32_s=1.0, bf16_s=0.9).bf16_faster  # within the jitter
    assert not PrecisionProbe(fp32_s=0.1, bf16_s=5.7).bf16_faster
