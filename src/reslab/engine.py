"""The engine: what runs the model, apart from the loop (docs/architecture.md).

The device, the precision (bf16 autocast or fp32), the memory format, and the machine and
version facts that every result records. The trainer, the CLI, evaluation and the
experiments import it; none of it knows about recipes.
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass
from functools import cache

import torch
import torchvision
from torch import nn

from reslab import __version__
from reslab.errors import ReslabError

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu; an unavailable device is a ReslabError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReslabError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReslabError("--device cuda asked for, but no CUDA GPU is available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ReslabError("--device mps asked for, but MPS is not available")
    return dev


@cache
def cpu_info() -> dict[str, object]:
    """{"cpu": model name, "flags": the SIMD flags that matter for training speed,
    "native_bf16": bool} from /proc/cpuinfo (empty values where it cannot be read)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown", ""):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if name not in ("unknown", "") and flags:
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    simd = [f for f in wanted if f in flags]
    return {"cpu": name, "flags": simd,
            "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags}


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX)."""
    return bool(cpu_info()["native_bf16"])


#: What `--precision auto` picks on a CPU with native bf16 (AVX-512 BF16 or AMX), chosen
#: from the precision study (`reslab reproduce precision`, docs/results.md): with the
#: residual addition kept in fp32 (`blocks._combine`), ResNet-20 and ResNet-56 trained in
#: bf16 stay within seed noise of fp32 (3 seeds each), at 1.5x fp32's speed. CPUs without
#: native bf16 (AVX2 only) always get fp32: there bf16 is emulated and ~10x slower.
CPU_NATIVE_BF16_AUTO = True


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32.

    auto: bf16 on CUDA GPUs that support it; on a CPU, bf16 only where it is native and
    `CPU_NATIVE_BF16_AUTO` says the study found it faithful; fp32 elsewhere.
    """
    if precision not in PRECISIONS:
        raise ReslabError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                          f"{precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and CPU_NATIVE_BF16_AUTO and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_reason(precision: str, device: torch.device) -> str:
    """Why `precision` resolved as it did on `device` (recorded in run.json)."""
    name = precision_name(precision, device)
    if precision != "auto":
        return f"{name}: asked for"
    if device.type == "cuda":
        return f"{name}: auto on CUDA (bf16 where the GPU supports it)"
    if device.type != "cpu":
        return f"{name}: auto on {device.type}"
    native = cpu_has_native_bf16()
    return (f"{name}: auto on a CPU {'with' if native else 'without'} native bf16 "
            f"({cpu_info()['cpu']}; the precision study, docs/results.md)")


def precision_name(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32": what `precision` (possibly "auto") resolves to on `device`."""
    return "bf16" if pick_precision(precision, device) is not None else "fp32"


@dataclass(frozen=True)
class Engine:
    """Runs a model on `device` under bf16 autocast (`dtype`) or in fp32, with NCHW or
    channels_last inputs. `engine(model, x)` is the forward pass every loop uses."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype is not None else "fp32"

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device (and channels_last memory format) in place."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16,
                              enabled=self.dtype is not None)

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return model(x)


def make_engine(device: str = "auto", precision: str = "auto",
                channels_last: bool | None = None) -> Engine:
    """The engine for the flags: channels_last defaults to on (faster for oneDNN on CPU and
    cuDNN on GPU; MPS keeps NCHW)."""
    dev = pick_device(device)
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"--precision bf16 on {cpu_info()['cpu']}, a CPU without native bf16 "
                      "(no AVX-512 BF16 or AMX): bf16 is emulated there, about 10x slower "
                      "than fp32 (docs/cpu-profile.md)", stacklevel=2)
    if channels_last is None:
        channels_last = dev.type in ("cuda", "cpu")
    return Engine(dev, pick_precision(precision, dev), channels_last)


def machine_info(device: torch.device | None = None) -> dict[str, object]:
    """What a result was measured on: platform, CPU (name, SIMD flags), threads, GPU."""
    cpu = cpu_info()
    info: dict[str, object] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu["cpu"], "cpu_flags": cpu["flags"], "native_bf16": cpu["native_bf16"],
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
            info["gpu_count"] = torch.cuda.device_count()
    return info


def versions() -> dict[str, str]:
    return {"reslab": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__}
