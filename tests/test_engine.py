"""The engine: device and precision choice (what `--precision auto` picks on each CPU kind
and why, recorded in run.json), CPU facts, the forward wrapper."""

from __future__ import annotations

import pytest
import torch

from reslab import engine
from reslab.engine import Engine, cpu_info, make_engine, pick_precision, precision_reason
from reslab.errors import ReslabError

CPU = torch.device("cpu")


def test_cpu_info_names_the_cpu_and_its_flags():
    info = cpu_info()
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert set(info["flags"]) <= {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                  "amx_bf16", "amx_tile"}
    assert info["native_bf16"] == ("avx512_bf16" in info["flags"] or "amx_bf16" in info["flags"])


@pytest.mark.parametrize("native, policy, expect", [
    (False, False, None), (False, True, None),  # AVX2 only: never emulated bf16 by default
    (True, False, None), (True, True, torch.bfloat16),
])
def test_auto_precision_on_cpu_follows_the_cpu_and_the_study(monkeypatch, native, policy,
                                                            expect):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(engine, "CPU_NATIVE_BF16_AUTO", policy)
    assert pick_precision("auto", CPU) == expect
    assert pick_precision("fp32", CPU) is None and pick_precision("bf16", CPU) == torch.bfloat16
    reason = precision_reason("auto", CPU)
    assert reason.startswith("bf16" if expect else "fp32")
    assert ("with native" if native else "without native") in reason


def test_bad_precision_and_device_are_clear_errors():
    with pytest.raises(ReslabError, match="--precision"):
        pick_precision("fp16", CPU)
    with pytest.raises(ReslabError, match="unknown device"):
        make_engine("tpu:0")


def test_engine_runs_bf16_autocast_and_channels_last():
    model = torch.nn.Conv2d(3, 4, 3)
    e = Engine(CPU, torch.bfloat16, channels_last=True)
    e.prepare(model)
    out = e(model, torch.randn(2, 3, 8, 8))
    assert out.dtype == torch.bfloat16 and e.precision == "bf16"
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert Engine(CPU)(model, torch.randn(1, 3, 8, 8)).dtype == torch.float32


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        make_engine("cpu", "bf16")
