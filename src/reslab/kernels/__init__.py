"""Hand-written CPU kernels for training, and whether a run uses them (issue 25).

`fused_bn.cpp` fuses batch norm's training statistics and normalisation with the ReLU
that follows it (Sec. 3.4: BN after every convolution, before the activation) and, at the
end of a residual block, with the shortcut addition of Eqn. (1) and the bf16 copy of the
fp32 residual stream that the next convolution reads; forward and backward. Why by hand:
docs/cpu-profile.md (over half of a bf16 ResNet-20 step on an AMX CPU is memory-bound
passes over the same activations, one eager op at a time; Inductor, which fuses the same
ops, made the step slower there).

The extension is compiled on first use with torch's `cpp_extension.load` (g++ -O3
-march=native, so one build per CPU model and torch version), cached under
torch's extensions folder (`TORCH_EXTENSIONS_DIR`,
default `~/.cache/torch_extensions/`). Where it cannot be built (no compiler, or
`RESLAB_NO_EXTENSION=1`), training runs the eager ops, and says so once per process.

`kernels` ("auto", "fused", "eager") is a `TrainConfig` field; `pick_kernels` resolves
it per run, as `engine.pick_precision` resolves the precision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from reslab.engine import cpu_has_native_bf16, cpu_info
from reslab.errors import ReslabError

KERNELS = ("auto", "fused", "eager")

#: Where `--kernels auto` picks the fused kernels: CPUs with native bf16 (AVX-512 BF16 or
#: AMX). Measured on a Zen 4 EPYC (avx512_bf16): the ResNet-20 bf16 step 1.23x the eager
#: one, 0.70 of the convolution-only bound (docs/cpu-profile.md, "Fused batch norm").
#: CPUs without it (AVX2 only) keep the eager ops until a measurement there says
#: otherwise; `--kernels fused` runs them anywhere the extension builds.
FUSED_AUTO_ON_NATIVE_BF16 = True
FUSED_AUTO_ON_OTHER_CPUS = False

SOURCE = Path(__file__).with_name("fused_bn.cpp")

_state: dict[str, object] = {"tried": False, "ext": None, "why": None}


def _cpu_key() -> str:
    """What -march=native depends on: the CPU's name and its full flags line."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return f"{platform.machine()} {cpu_info()['cpu']} {flags}"


def extension_name() -> str:
    """The build's name: a hash of the source, the torch version and the CPU (a build
    directory shared between machines never hands one CPU another's -march=native code)."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), _cpu_key().encode()):
        h.update(part)
    return f"reslab_fused_bn_{h.hexdigest()[:12]}"


def _build() -> ModuleType:
    # torch.utils.cpp_extension logs "No CUDA runtime is found" at import on a CPU-only
    # machine: noise for a CPU build, and a second stderr line before a CLI's one-line error.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load

    # Built in torch's extensions folder (TORCH_EXTENSIONS_DIR, default
    # ~/.cache/torch_extensions), not under $RESLAB_HOME: one build per machine, shared by
    # runs, tests and subprocesses that point RESLAB_HOME elsewhere (a build is minutes).
    name = extension_name()
    # -fopenmp for at::parallel_for, which inlines its `omp parallel`; the library links
    # libgomp.so.1 by name, i.e. the one torch has already loaded (one thread pool).
    return load(name=name, sources=[str(SOURCE)],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"], verbose=False)


def load_extension() -> ModuleType | None:
    """The compiled kernels, built on first use; None (and one warning per process) where
    they cannot be had."""
    if _state["tried"]:
        return _state["ext"]  # type: ignore[return-value]
    _state["tried"] = True
    if os.environ.get("RESLAB_NO_EXTENSION", "") not in ("", "0"):
        why = "RESLAB_NO_EXTENSION is set"
    else:
        try:
            _state["ext"] = _build()
            return _state["ext"]  # type: ignore[return-value]
        except Exception as e:  # no compiler, headers, ... : the eager ops will do
            lines = [s.strip() for s in str(e).splitlines() if s.strip()]
            # the compiler's own complaint says more than ninja's last line
            said = [s for s in lines if any(w in s for w in ("error:", "not found",
                                                              "No such file"))]
            line = (said or lines or [""])[0 if said else -1][:200]
            why = f"they could not be built ({type(e).__name__}: {line})"
    _state["why"] = why
    warnings.warn(f"reslab: the fused batch-norm kernels are not used: {why}; training runs "
                  "the eager ops (slower on CPU, same results; docs/cpu-profile.md)",
                  RuntimeWarning, stacklevel=2)
    return None


def extension_available() -> bool:
    return load_extension() is not None


def _cpu_wants_fused() -> bool:
    return FUSED_AUTO_ON_NATIVE_BF16 if cpu_has_native_bf16() else FUSED_AUTO_ON_OTHER_CPUS


def pick_kernels(kernels: str, device: torch.device, channels_last: bool,
                 compiled: bool = False) -> tuple[str, str]:
    """("fused" or "eager", why) for a run's `kernels` setting on `device`.

    auto: fused on a CPU that `FUSED_AUTO_ON_*` names, in channels_last, without
    torch.compile (Inductor fuses these ops itself), where the extension builds. fused:
    the same requirements, asked for (eager, with the reason, where one is not met)."""
    if kernels not in KERNELS:
        raise ReslabError(f"--kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "eager":
        return "eager", "eager: asked for"
    asked = "asked for" if kernels == "fused" else "auto"
    if device.type != "cpu":
        if kernels == "fused":
            raise ReslabError(f"--kernels fused is for CPU training, not {device.type}")
        return "eager", f"eager: auto on {device.type} (the fused kernels are CPU ones)"
    if not channels_last:
        return "eager", f"eager: {asked}, but the fused kernels need channels_last"
    if kernels == "auto" and compiled:
        return "eager", "eager: auto with torch.compile (Inductor fuses these ops itself)"
    if kernels == "auto" and not _cpu_wants_fused():
        kind = "with" if cpu_has_native_bf16() else "without"
        return "eager", (f"eager: auto on a CPU {kind} native bf16 ({cpu_info()['cpu']}), "
                         "where the fused kernels are not faster (docs/cpu-profile.md)")
    if not extension_available():
        return "eager", f"eager: {asked}, but {_state['why']}"
    where = "a CPU with native bf16" if cpu_has_native_bf16() else "this CPU"
    return "fused", f"fused: {asked} on {where} ({cpu_info()['cpu']}; docs/cpu-profile.md)"


def set_kernels(model: nn.Module, kernels: str) -> nn.Module:
    """Switch every block (and the stem) of `model` to the fused kernels in training
    (`kernels` "fused") or back to the eager ops ("eager"); eval always runs eager ops.
    No parameter or buffer changes: state_dicts are the same either way."""
    if kernels not in ("fused", "eager"):
        raise ValueError(f"kernels must be fused or eager, got {kernels!r}")
    for m in model.modules():
        if hasattr(type(m), "fused_bn"):
            m.fused_bn = kernels == "fused"
    return model
