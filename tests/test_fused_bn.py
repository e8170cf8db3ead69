"""The fused batch-norm kernels (reslab.kernels, issue 25) against the eager ops, their
fallback where they cannot be built, and how a run picks them (old runs resume eager)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reslab.kernels as kernels
from reslab.data import load_image_data
from reslab.kernels import load_extension, pick_kernels, set_kernels
from reslab.kernels.fused_bn import batch_norm_act, fusable
from reslab.models import create_model
from reslab.train.recipes import TrainConfig
from reslab.train.trainer import train

CL = torch.channels_last


@pytest.fixture(scope="module")
def ext():
    """The compiled kernels (built once per CPU and cached); the test skips where they
    cannot be built, e.g. on a machine without a C++ compiler."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = load_extension()
    if module is None:
        pytest.skip(f"the fused kernels are not available here: {kernels._state['why']}")
    return module


@pytest.fixture(scope="module")
def tiny_data():
    return load_image_data("synthetic:256:128", progress=False)


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    values = dict(model="resnet8", data="synthetic:256:128", out=str(out), iterations=4,
                  batch_size=32, eval_every=4, progress=False, tensorboard=False, device="cpu")
    values.update(kw)
    return TrainConfig(**values)


def _bn_pair(c: int) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    a = nn.BatchNorm2d(c)
    nn.init.normal_(a.weight)
    nn.init.normal_(a.bias)
    a.running_mean.normal_()
    a.running_var.uniform_(0.5, 2)
    b = nn.BatchNorm2d(c)
    b.load_state_dict(a.state_dict())
    return a, b


def _eager(bn: nn.BatchNorm2d, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """The eager block's ops: relu(bn(x)), or relu(bn(x) + shortcut) summed in fp32."""
    out = bn(x)
    return F.relu(out) if residual is None else F.relu(out.float() + residual.float())


def _tol(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else \
        {"rtol": 1.6e-2, "atol": 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("channels", [16, 24])  # a width with an unrolled loop, and another
def test_values_gradients_and_running_stats_equal_eager(ext, dtype, with_residual, channels):
    torch.manual_seed(channels)
    shape = (6, channels, 7, 5)
    x = (3 * torch.randn(shape) + 2).to(dtype).contiguous(memory_format=CL)
    r = torch.randn(shape).contiguous(memory_format=CL) if with_residual else None
    bn_f, bn_e = _bn_pair(channels)
    xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    rf = r.clone().requires_grad_() if r is not None else None
    re_ = r.clone().requires_grad_() if r is not None else None
    assert fusable(bn_f, xf, rf)
    yf, low = batch_norm_act(bn_f, xf, rf, want_low=True)
    ye = _eager(bn_e, xe, re_)
    assert yf.dtype == ye.dtype and yf.is_contiguous(memory_format=CL)
    torch.testing.assert_close(yf, ye, **_tol(dtype))
    # the bf16 copy for the next conv: with a residual under bf16 only
    assert (low is not None) == (with_residual and dtype == torch.bfloat16)
    g = torch.randn(shape)
    loss_f, loss_e = (yf.float() * g).sum(), (ye.float() * g).sum()
    if low is not None:
        torch.testing.assert_close(low, ye.to(torch.bfloat16), rtol=0, atol=0)
        gl = torch.randn(shape)
        loss_f = loss_f + (low.float() * gl).sum()
        loss_e = loss_e + (ye.to(torch.bfloat16).float() * gl).sum()
    loss_f.backward()
    loss_e.backward()
    tol = _tol(dtype)
    torch.testing.assert_close(xf.grad, xe.grad, **tol)
    assert xf.grad.is_contiguous(memory_format=CL)
    torch.testing.assert_close(bn_f.weight.grad, bn_e.weight.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(bn_f.bias.grad, bn_e.bias.grad, rtol=1e-3, atol=1e-3)
    if r is not None:
        torch.testing.assert_close(rf.grad, re_.grad, **tol)
    torch.testing.assert_close(bn_f.running_mean, bn_e.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn_f.running_var, bn_e.running_var, rtol=1e-5, atol=1e-6)
    assert bn_f.num_batches_tracked.item() == bn_e.num_batches_tracked.item() == 1


def test_only_the_bf16_copy_used_and_cumulative_momentum(ext):
    """An output whose gradient never arrives (here y; only its bf16 copy feeds the loss),
    and momentum=None (running statistics as a cumulative average), as torch does them."""
    torch.manual_seed(1)
    x = torch.randn(4, 16, 6, 6).to(torch.bfloat16).contiguous(memory_format=CL)
    r = torch.randn(4, 16, 6, 6).contiguous(memory_format=CL)
    bn_f, bn_e = _bn_pair(16)
    bn_f.momentum = bn_e.momentum = None
    xf, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):
        _, low = batch_norm_act(bn_f, xf, r, want_low=True)
        ye = _eager(bn_e, xe, r)
    low.float().square().sum().backward()
    ye.to(torch.bfloat16).float().square().sum().backward()
    torch.testing.assert_close(xf.grad, xe.grad, **_tol(torch.bfloat16))
    torch.testing.assert_close(bn_f.running_var, bn_e.running_var, rtol=1e-5, atol=1e-6)
    assert bn_f.num_batches_tracked.item() == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nchw_and_eval_run_the_eager_ops(dtype):
    """What the kernels do not cover runs the eager ops themselves: the same values, bit
    for bit (NCHW input; eval mode)."""
    torch.manual_seed(2)
    x = torch.randn(4, 16, 5, 5).to(dtype)  # NCHW
    r = torch.randn(4, 16, 5, 5)
    bn_f, bn_e = _bn_pair(16)
    assert not fusable(bn_f, x, r)
    y, _ = batch_norm_act(bn_f, x, r)
    assert torch.equal(y, _eager(bn_e, x, r))
    bn_f.eval()
    assert not fusable(bn_f, x.contiguous(memory_format=CL))


def _step(model: nn.Module, x, y, bf16: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    return loss.item()


def _rel(a: nn.Module, b: nn.Module) -> float:
    return max(((p.grad - q.grad).norm() / p.grad.norm().clamp_min(1e-12)).item()
               for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("bf16", [False, True])
def test_resnet_step_equals_eager_up_to_rounding(ext, bf16):
    """A ResNet-20 training step with the fused kernels against the eager model: the same
    loss; gradients as close as eager channels_last is to eager NCHW (a different summation
    order: what rounding alone does); the same state_dict keys and eval outputs."""
    torch.manual_seed(3)
    eager = create_model("resnet20").to(memory_format=CL).train()
    fused = set_kernels(copy.deepcopy(eager), "fused")
    nchw = copy.deepcopy(eager).to(memory_format=torch.contiguous_format)
    assert list(fused.state_dict()) == list(eager.state_dict())
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (16,))
    le, lf = _step(eager, x, y, bf16), _step(fused, x, y, bf16)
    _step(nchw, x.contiguous(), y, bf16)
    assert lf == pytest.approx(le, rel=1e-3 if bf16 else 1e-5)
    assert _rel(eager, fused) <= 1.5 * _rel(eager, nchw) + (0.02 if bf16 else 1e-3)
    for a, b in zip(eager.buffers(), fused.buffers(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)
    eager.eval()
    fused.eval()
    with torch.no_grad():
        fused.load_state_dict(eager.state_dict())
        assert torch.equal(eager(x), fused(x))


# ---- the fallback -------------------------------------------------------------------------

def _forget_extension(monkeypatch) -> None:
    for key, value in (("tried", False), ("ext", None), ("why", None)):
        monkeypatch.setitem(kernels._state, key, value)


def _fallback_warnings(caught) -> list:
    return [w for w in caught if "fused batch-norm kernels are not used" in str(w.message)]


@pytest.mark.parametrize("how", ["no compiler", "RESLAB_NO_EXTENSION"])
def test_fallback_trains_eager_and_says_so_once(tmp_path, tiny_data, monkeypatch, how):
    """Where the extension cannot be built (a machine without a C++ compiler), a run that
    asks for the fused kernels trains on the eager ops, warns once, and records why."""
    _forget_extension(monkeypatch)
    if how == "RESLAB_NO_EXTENSION":
        monkeypatch.setenv("RESLAB_NO_EXTENSION", "1")
    else:
        monkeypatch.delenv("RESLAB_NO_EXTENSION", raising=False)

        def no_compiler():
            raise RuntimeError("Error building extension\ng++: command not found")
        monkeypatch.setattr(kernels, "_build", no_compiler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(tiny_cfg(tmp_path / "r", kernels="fused"), tiny_data)
        train(tiny_cfg(tmp_path / "s", kernels="auto"), tiny_data)
        assert load_extension() is None
    assert result.status == "finished"
    assert len(_fallback_warnings(caught)) == 1
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["kernels"] == "eager" and info["config"]["kernels"] == "fused"
    assert ("command not found" if how == "no compiler" else how) in info["kernels_choice"]


# ---- how a run picks them ------------------------------------------------------------------

def test_pick_kernels(monkeypatch):
    cpu = torch.device("cpu")
    assert pick_kernels("eager", cpu, True)[0] == "eager"
    assert pick_kernels("auto", torch.device("cuda"), True)[0] == "eager"
    assert pick_kernels("auto", cpu, False)[0] == "eager"  # NCHW
    assert pick_kernels("auto", cpu, True, compiled=True)[0] == "eager"
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: False)  # an AVX2-only CPU
    kind, why = pick_kernels("auto", cpu, True)
    assert kind == "eager" and "without native bf16" in why
    with pytest.raises(Exception, match="for CPU training"):
        pick_kernels("fused", torch.device("cuda"), True)
    with pytest.raises(Exception, match="--kernels must be"):
        TrainConfig(kernels="fast")


@pytest.mark.parametrize("fused_here", [True, False])
def test_auto_follows_the_measured_choice_for_this_cpu(tmp_path, tiny_data, ext, monkeypatch,
                                                       fused_here):
    """auto resolves to what FUSED_AUTO_ON_* says for this kind of CPU (the measured
    choice), and run.json records the resolved kernels and why."""
    native = kernels.cpu_has_native_bf16()
    monkeypatch.setattr(kernels, "FUSED_AUTO_ON_NATIVE_BF16" if native else
                        "FUSED_AUTO_ON_OTHER_CPUS", fused_here)
    result = train(tiny_cfg(tmp_path / "r"), tiny_data)
    info = json.loads((result.out / "run.json").read_text())
    assert info["config"]["kernels"] == "auto"
    assert info["kernels"] == ("fused" if fused_here else "eager"), info["kernels_choice"]
    assert ("not faster" in info["kernels_choice"]) != fused_here


def _make_old(out: Path) -> None:
    """Rewrite a run folder as one made before the `kernels` option existed."""
    path = out / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["kernels"]
    torch.save(ckpt, path)
    info = json.loads((out / "run.json").read_text())
    del info["config"]["kernels"], info["kernels"], info["kernels_choice"]
    (out / "run.json").write_text(json.dumps(info))


@pytest.mark.parametrize("how", ["for_resume", "full config"])
def test_a_run_from_before_the_option_resumes_eager_bit_identically(tmp_path, tiny_data, how,
                                                                     sigterm_at_batch):
    """A run.json / last.pt without `kernels` (today's runs, docs/experiments/) continues
    on the eager ops it ran, and ends with the weights of an uninterrupted eager run."""
    full = train(tiny_cfg(tmp_path / "full", iterations=8, kernels="eager"), tiny_data)
    out = tmp_path / "old"
    sigterm_at_batch(4)  # stopped (and saved) after 5 of 8 iterations
    assert train(tiny_cfg(out, iterations=8, kernels="eager"), tiny_data).iteration == 5
    sigterm_at_batch(None)
    _make_old(out)
    assert TrainConfig.from_dict(torch.load(out / "last.pt", weights_only=True)["config"]
                                 ).kernels == "eager"
    cfg = (TrainConfig.for_resume(out, iterations=8, progress=False) if how == "for_resume"
           else tiny_cfg(out, iterations=8, resume=True))  # kernels "auto", as a sweep's
    resumed = train(cfg, tiny_data)
    assert resumed.iteration == 8
    info = json.loads((out / "run.json").read_text())
    assert info["kernels"] == "eager" and info["config"]["kernels"] == "eager"
    assert torch.load(out / "last.pt", weights_only=True)["config"]["kernels"] == "eager"
    wf = torch.load(full.out / "last.pt", weights_only=True)["model"]
    wr = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
