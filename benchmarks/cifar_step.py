"""The ResNet-20 CIFAR training step that `profile_step.py` and `cpu_paths.py` measure.

One step, as the paper's CIFAR recipe (Sec. 4.2) and reslab's trainer do it: a batch of
128 uint8 images kept in memory -> float, per-pixel mean subtracted -> pad-4 random crop
+ flip on the whole batch (`reslab.data.random_crop_flip`) -> (channels_last) -> ResNet-20
-> cross-entropy -> backward -> SGD (lr 0.1, momentum 0.9, weight decay 1e-4).

A `Path` names one way of running that step (precision, memory format, SGD
implementation, torch.compile, oneDNN settings, threads); a `Runner` runs it from a seed
over a fixed stream of batches and augmentations, so two runners of the same seed see the
same data and differ only by how they compute. Depends only on `reslab.models.create_model`,
`reslab.data.random_crop_flip`, `reslab.data.load_image_data` and torch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path as FilePath

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from reslab.data import load_image_data, random_crop_flip
from reslab.kernels import set_kernels
from reslab.models import create_model

BATCH = 128
ARCHIVE = FilePath(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg75.tar.gz"
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
              "amx_bf16")
# Labels of the phases of one step (torch.profiler ranges; profile_step.py groups by them).
PHASES = ("step:preprocess", "step:forward", "step:loss", "step:backward", "step:optimizer")


def cpu_summary() -> str:
    """'<model name>; flags: avx2 ... (missing: amx_tile ...); torch <v>, ATen <capability>,
    <n> threads' from /proc/cpuinfo and torch."""
    name, flags = "unknown CPU", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    have = [f for f in SIMD_FLAGS if f in flags]
    missing = [f for f in SIMD_FLAGS if f not in flags]
    native = "native bf16" if {"avx512_bf16", "amx_bf16"} & flags else "bf16 EMULATED"
    return (f"CPU: {name}; flags: {' '.join(have) or '-'} (absent: {' '.join(missing) or '-'})"
            f" -> {native}\ntorch {torch.__version__}, ATen CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
            f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'unavailable'}")


@dataclass(frozen=True)
class Data:
    """Training images (uint8, N x 3 x 32 x 32), labels and the per-pixel mean in [0, 1]."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    num_classes: int


def load_data(spec: str | None, max_images: int = 0) -> Data:
    """`spec` as `load_image_data` takes it; None: the shared CIFAR-10 JPEG copy beside the
    repository when present, else synthetic data. `max_images` > 0 keeps the first ones."""
    if spec is None:
        spec = str(ARCHIVE) if ARCHIVE.is_file() else "synthetic:10000:100"
    data = load_image_data(spec, progress=False)
    images, labels = data.train.images, data.train.labels
    if max_images:
        images, labels = images[:max_images].contiguous(), labels[:max_images].contiguous()
    mean = images.to(torch.float64).mean(0).div(255).to(torch.float32)
    return Data(data.name, images, labels, mean, len(data.classes))


@dataclass(frozen=True)
class Path:
    """One way to run the training step."""

    name: str
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = True
    sgd: str = "default"  # default (a for-loop over parameters on CPU) | foreach | fused
    # none | model (torch.compile(model)) | fwd+loss (forward and loss as one compiled
    # function; AOTAutograd compiles their backward) | fwd+loss+opt (and optimizer.step)
    compile: str = "none"
    bn_fp32: bool = False  # under bf16: run BatchNorm in fp32
    conv_fp32_precision: str | None = None  # torch.backends.mkldnn.conv.fp32_precision
    mkldnn: bool = True  # torch.backends.mkldnn.enabled
    threads: int | None = None  # torch.set_num_threads for this path (None: as the process)
    kernels: str = "eager"  # eager | fused (reslab.kernels: fused batch norm + ReLU + add)

    def with_(self, **kw) -> Path:
        return replace(self, **kw)


class FP32BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d computed in fp32 with autocast off (input cast up, fp32 output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float())


def _batches(data: Data, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches (epochs of random permutations, last partial batch dropped)."""
    g = torch.Generator().manual_seed(seed)
    n = data.images.shape[0]
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - BATCH + 1, BATCH):
            idx = perm[i : i + BATCH]
            yield data.images[idx], data.labels[idx]


def _sgd(params, kind: str) -> torch.optim.SGD:
    opts = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[kind]
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, **opts)


class Runner:
    """A model, optimizer, batch stream and augmentation generator from `seed`, stepped
    the way `path` says. `run(n)` does n steps and returns the last loss."""

    def __init__(self, path: Path, data: Data, seed: int = 0,
                 snapshot_at: tuple[int, ...] = ()) -> None:
        self.path, self.data = path, data
        self.snapshot_at = snapshot_at
        self.snapshots: dict[int, torch.Tensor] = {}  # step -> flat_weights() after it
        torch.manual_seed(seed)
        model = create_model("resnet20", num_classes=data.num_classes)
        if path.bn_fp32:
            for m in model.modules():
                if type(m) is nn.BatchNorm2d:
                    m.__class__ = FP32BatchNorm2d
        if path.channels_last:
            model = model.to(memory_format=torch.channels_last)
        set_kernels(model, path.kernels)
        model.train()
        self.model = model
        self.opt = _sgd(model.parameters(), path.sgd)
        self.batches = _batches(data, seed)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.mean = data.mean
        self.steps = 0
        self.losses: list[float] = []
        self.first_step_s: float | None = None  # includes compiling for compiled paths
        self._opt_step = self.opt.step
        self.model_fn = torch.compile(model) if path.compile == "model" else model
        if path.compile in ("fwd+loss", "fwd+loss+opt"):
            self._forward = torch.compile(self._fwd_loss)
        if path.compile == "fwd+loss+opt":
            opt = self.opt

            @torch.compile
            def opt_step() -> None:
                opt.step()

            self._opt_step = opt_step

    def _fwd_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.path.precision == "bf16"):
            out = self.model_fn(x)
        return F.cross_entropy(out.float(), y)

    @contextlib.contextmanager
    def _settings(self) -> Iterator[None]:
        """The process-wide knobs of this path, restored afterwards."""
        p = self.path
        threads = torch.get_num_threads()
        conv = torch.backends.mkldnn.conv.fp32_precision
        mkldnn = torch.backends.mkldnn.enabled
        try:
            if p.threads:
                torch.set_num_threads(p.threads)
            if p.conv_fp32_precision:
                torch.backends.mkldnn.conv.fp32_precision = p.conv_fp32_precision
            torch.backends.mkldnn.enabled = p.mkldnn
            yield
        finally:
            torch.set_num_threads(threads)
            torch.backends.mkldnn.conv.fp32_precision = conv
            torch.backends.mkldnn.enabled = mkldnn

    def step(self) -> torch.Tensor:
        with record_function("step:preprocess"):
            xb, y = next(self.batches)
            x = xb.to(torch.float32).div_(255.0).sub_(self.mean)
            x = random_crop_flip(x, 4, self.gen)
            if self.path.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        if self.path.compile in ("fwd+loss", "fwd+loss+opt"):  # one compiled region
            with record_function("step:forward"):
                loss = self._forward(x, y)
        else:
            with record_function("step:forward"), torch.autocast(
                    "cpu", dtype=torch.bfloat16, enabled=self.path.precision == "bf16"):
                out = self.model_fn(x)
            with record_function("step:loss"):
                loss = F.cross_entropy(out.float(), y)
        with record_function("step:backward"):
            loss.backward()
        with record_function("step:optimizer"):
            self._opt_step()
            self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, n: int) -> float:
        """n steps; returns the loss of the last one (and records every loss)."""
        loss = torch.zeros(())
        with self._settings():
            for _ in range(n):
                t0 = time.perf_counter()
                loss = self.step()
                self.losses.append(float(loss))
                if self.first_step_s is None:
                    self.first_step_s = time.perf_counter() - t0
                self.steps += 1
                if self.steps in self.snapshot_at:
                    self.snapshots[self.steps] = self.flat_weights()
        return float(loss)

    def timed(self, n: int) -> float:
        """Images/s over n steps."""
        t0 = time.perf_counter()
        self.run(n)
        return n * BATCH / (time.perf_counter() - t0)

    def flat_weights(self) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten() for p in self.model.parameters()])
