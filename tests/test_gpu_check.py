"""``benchmarks/gpu_check.py --device cpu``: the device check runs in the suite, so it cannot rot before a GPU comes."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check


@pytest.fixture(autouse=True)
def fresh_dynamo():
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_the_device_check_passes_at_cpu_size(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert gpu_check.main(["--device", "cpu", "--compile-backend", "aot_eager", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    checks = {c["check"]: c["ok"] for c in report["checks"]}
    fused = [name for name in checks if name.startswith("fused ")]
    assert len(fused) == 4 * len(gpu_check.MODELS) and all(checks[name] for name in fused)
    assert [checks[name] for name in checks if name.startswith("exact ")] == [True, True]
    measures = {m["measure"] for m in report["measures"]}
    assert {"decode GUIDE compiled", "decode eager / compiled"} <= measures
    assert all(m["met"] is None for m in report["measures"]), "goals are judged on a GPU only"
    assert "| check | result |" in out.with_suffix(".md").read_text()


def test_a_math_kernel_fallback_fails_the_fused_check(monkeypatch):
    """Only fused kernels may run: a q/k/v width the fused kernels refuse must fail, not pass."""
    monkeypatch.setattr(gpu_check, "FUSED", [gpu_check.SDPBackend.EFFICIENT_ATTENTION])  # none on CPU
    report = gpu_check.Report("cpu")
    gpu_check.fused_checks(report, "smollm2-shape", gpu_check.SIZES["cpu"], "cpu", gpu_check.torch.bfloat16)
    assert [c["ok"] for c in report.checks] == [False] * 4
    assert report.checks[0]["detail"].startswith("RuntimeError: No viable backend")
