"""One typed, frozen config describes a training run (docs/architecture.md); the paper's recipes are
its constructors.

`TrainConfig.cifar(...)` is Sec. 4.2's CIFAR-10 recipe, `TrainConfig.imagenet(...)` Sec.
3.4's ImageNet recipe. A field left at None takes the recipe's value when the config is
built, so `TrainConfig(recipe="imagenet")`, `TrainConfig.imagenet()` and `reslab train
--recipe imagenet` are the same run. The config validates itself completely when it is
built (before any data is read) and is never mutated: `dataclasses.replace` makes a new
one, and `TrainConfig.for_resume(out, ...)` rebuilds the one a run folder's checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from reslab.engine import PRECISIONS
from reslab.errors import ReslabError
from reslab.kernels import KERNELS
from reslab.train.run_folder import recorded_config
from reslab.train.schedule import PAPER_ITERATIONS, PAPER_MILESTONES, scale_milestones

RECIPES = ("cifar", "imagenet")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The largest --seed: every seed derived from it, (seed * 1_000_003 + iteration) * 64 +
#: rank, must fit torch's 64-bit generator seed.
MAX_SEED = 2**32 - 1

#: Sec. 4.2: "weight decay of 0.0001 and momentum of 0.9 ... mini-batch size of 128 ...
#: start with a learning rate of 0.1, divide it by 10 at 32k and 48k iterations, and
#: terminate training at 64k iterations ... 4 pixels are padded on each side".
CIFAR_RECIPE: dict[str, Any] = {
    "iterations": PAPER_ITERATIONS, "batch_size": 128, "lr_policy": "step", "pad": 4,
    "eval_batch_size": 1000,
}

#: Sec. 3.4: "The image is resized with its shorter side randomly sampled in [256, 480]
#: for scale augmentation. A 224x224 crop is randomly sampled ... the standard color
#: augmentation ... SGD with a mini-batch size of 256. The learning rate starts from 0.1
#: and is divided by 10 when the error plateaus, and the models are trained for up to
#: 60 x 10^4 iterations ... In testing ... the shorter side [resized to] 256". The plateau
#: patience is ours (the paper gives none); `eval_every` is about one epoch at batch 256.
IMAGENET_RECIPE: dict[str, Any] = {
    "iterations": 600_000, "batch_size": 256, "lr_policy": "plateau", "pad": 0,
    "eval_batch_size": 100, "eval_every": 5005, "scale": (256, 480), "crop": 224,
    "test_resize": 256, "lighting": 0.1, "workers": min(8, os.cpu_count() or 1),
}

_RECIPE_DEFAULTS = {"cifar": CIFAR_RECIPE, "imagenet": IMAGENET_RECIPE}
#: The most DataLoader workers a run or command starts (each is a process holding a decoder).
MAX_WORKERS = 256
_IMAGENET_ONLY = ("scale", "crop", "test_resize", "lighting", "workers", "classes",
                  "images_per_class")

#: Fields that may change when a run is resumed: they do not change what it computes
#: per iteration (the length, evaluation cadence and the engine).
RESUMABLE_CHANGES = ("out", "resume", "iterations", "epochs", "eval_every",
                     "eval_batch_size", "log_every", "device", "precision", "channels_last",
                     "compile", "compile_mode", "kernels", "progress", "tensorboard", "workers",
                     "data_root", "skip_corrupt")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. None means "the recipe's value"."""

    #: What a sweep needs to compare a recorded config with this one (`DetectConfig`'s
    #: differ): fields recorded since, at the values older runs were made with, and
    #: whether --data may join several roots with ",".
    legacy_defaults: ClassVar[dict[str, Any]] = {"kernels": "eager"}
    data_union: ClassVar[bool] = False

    model: str = "resnet20"
    shortcut: str | None = None  # None: the paper's default for the net (A CIFAR, B ImageNet)
    data: str = "cifar10"  # cifar10, cifar100, synthetic[:N:M], or a PATH
    data_root: str | None = None  # where cifar10/cifar100 live ($RESLAB_HOME/data by default)
    val_split: int = 0  # hold out this many training images as validation (paper: 5000)
    skip_corrupt: bool = False
    out: str | None = None  # None: runs/MODEL
    recipe: str = "cifar"
    # optimisation (Sec. 4.2, Sec. 3.4)
    iterations: int | None = None
    epochs: float | None = None  # if set, overrides iterations (ceil(epochs * N / batch))
    batch_size: int | None = None  # global (all ranks together)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] | None = None  # None: 32k/48k of 64k, scaled to the run
    gamma: float = 0.1
    lr_policy: str | None = None  # step (fixed milestones) or plateau (/10 when eval stalls)
    plateau_patience: int = 5  # evaluations without improvement before lr /= 10
    plateau_threshold: float = 1e-3
    warmup: bool | None = None  # None: on for nets of >= 110 layers, as the paper
    warmup_lr: float = 0.01
    warmup_until_error: float = 0.8
    # input (Sec. 4.2: pad + crop + flip; Sec. 3.4: scale, crop, flip, lighting)
    pad: int | None = None
    mean: str = "per-pixel"  # per-pixel (the paper) or per-channel mean subtraction
    scale: tuple[int, int] | None = None  # imagenet: shorter side drawn from [MIN, MAX]
    crop: int | None = None  # imagenet: training and test crop
    test_resize: int | None = None  # imagenet: shorter side before the centre crop
    lighting: float | None = None  # imagenet: PCA lighting noise std (AlexNet's 0.1)
    workers: int | None = None  # imagenet: DataLoader decoding workers
    classes: int | None = None  # imagenet: train on the first K classes (ImageNet-100 style)
    images_per_class: int | None = None  # imagenet: at most N training images per class
    # evaluation and outputs
    eval_every: int | None = None  # None: about 20 evaluations per run, at most every 1000
    eval_batch_size: int | None = None
    log_every: int = 20
    # engine
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto, fp32, bf16
    channels_last: bool | None = None  # None: on (faster for oneDNN and cuDNN)
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead captures CUDA graphs
    # fused batch norm + ReLU (+ residual add) kernels in CPU training (reslab.kernels):
    # auto (where they are faster), fused, eager. A recorded config without the field (a
    # run made before it) reads as "eager" (`from_dict`): old runs resume bit-identically.
    kernels: str = "auto"
    seed: int = 0
    resume: bool = False  # continue the run in `out` from its last.pt
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ReslabError(f"--recipe must be one of {', '.join(RECIPES)}, got "
                              f"{self.recipe!r}")
        if self.recipe != "imagenet":
            for name in _IMAGENET_ONLY:
                if getattr(self, name) is not None:
                    raise ReslabError(f"--{name.replace('_', '-')} is an option of "
                                      "--recipe imagenet")
        for name, value in _RECIPE_DEFAULTS[self.recipe].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.out is None:
            object.__setattr__(self, "out", f"runs/{self.model}")
        object.__setattr__(self, "data", absolute_data(self.data))
        for name in ("milestones", "scale"):  # lists from JSON or argparse
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def cifar(cls, **options: Any) -> TrainConfig:
        """The paper's CIFAR-10 recipe (Sec. 4.2): SGD momentum 0.9, weight decay 1e-4,
        batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, 64k iterations,
        per-pixel mean, 4-pixel pad + random crop + flip, warm-up at 0.01 for 110+ layers."""
        return cls(recipe="cifar", **options)

    @classmethod
    def imagenet(cls, **options: Any) -> TrainConfig:
        """The paper's ImageNet recipe (Sec. 3.4): batch 256, lr 0.1 divided by 10 when the
        validation error plateaus, up to 60e4 iterations, shorter side in [256, 480], 224
        crop + flip, per-pixel mean, PCA lighting; centre crop of shorter side 256 to test."""
        return cls(recipe="imagenet", **options)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from `to_dict()` (run.json, checkpoints); reads the older layout with an
        `extra` dict of ImageNet sizes too, and a config recorded before `kernels` existed
        as one with kernels "eager" (what it ran: its resume stays bit-identical)."""
        d = dict(d)
        d.setdefault("kernels", "eager")
        for key, value in (d.pop("extra", None) or {}).items():
            d.setdefault(key, value)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ReslabError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def for_resume(cls, out: str | os.PathLike, **changes: Any) -> TrainConfig:
        """The config of the run in `out` (from its last.pt; from its run.json when it was
        stopped before its first checkpoint: it restarts at iteration 0), with `changes`
        applied and `resume=True`: `reslab train --resume --out DIR` needs no other flag.
        A folder that records no run starts one with `changes`."""
        found = recorded_config(out)
        if found is None:
            return cls(out=str(out), resume=True, **changes)
        saved, path = found
        if saved is None:
            raise ReslabError(f"{path} records no training config; resume with the full "
                              "command that started the run")
        if "head" in saved:  # a DetectConfig's (Tables 7-8)
            raise ReslabError(f"{out} holds a detector's run: continue it with `reslab detect "
                              f"train --resume --out {out}`")
        saved = {k: v for k, v in saved.items() if k not in _IMAGENET_ONLY or
                 changes.get("recipe", saved.get("recipe")) == "imagenet"}
        data = changes.get("data", saved.get("data"))
        check_recorded_data(data, path, hint=", or pass --data with the data's full path")
        return cls.from_dict({**saved, **changes, "out": str(out), "resume": True})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("milestones", "scale"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    # ---- derived values -------------------------------------------------------------------
    def iterations_for(self, train_size: int) -> int:
        """The run's length: `iterations`, or `epochs` over a training set of `train_size`."""
        if self.epochs is None:
            return int(self.iterations)
        return max(1, math.ceil(self.epochs * train_size / self.batch_size))

    def milestones_for(self, iterations: int) -> tuple[int, ...]:
        """The milestones used: the given ones, or the paper's scaled to `iterations`."""
        if self.milestones is not None:
            return self.milestones
        return scale_milestones(iterations, PAPER_MILESTONES, PAPER_ITERATIONS)

    def eval_every_for(self, iterations: int) -> int:
        return self.eval_every or max(1, min(1000, iterations // 20))

    def changes_from(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (other's, self's)} for fields that differ and change what a run computes
        (resuming `other` with `self` is refused when this is not empty)."""
        a, b = other.to_dict(), self.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]
                and not (k == "data" and same_data(a[k], b[k]))}

    # ---- validation -----------------------------------------------------------------------
    def _validate(self) -> None:
        """Raise ReslabError for values no run can use (all of them, before any data)."""
        def finite_positive(x: float) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

        ms = self.milestones or ()
        checks = [
            (isinstance(self.model, str) and self.model.strip() != "", "--model is empty"),
            (self.iterations >= 1, f"--iterations must be >= 1, got {self.iterations}"),
            (self.epochs is None or finite_positive(self.epochs),
             f"--epochs must be > 0, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (finite_positive(self.lr), f"--lr must be a finite number > 0, got {self.lr}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             "--weight-decay must be >= 0"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}"),
            (all(isinstance(m, int) and m >= 1 for m in ms) and list(ms) == sorted(set(ms)),
             f"--milestones must be increasing iterations >= 1, got {list(ms)}"),
            (finite_positive(self.warmup_lr), "warmup_lr must be a finite number > 0"),
            (self.eval_every is None or self.eval_every >= 1, "--eval-every must be >= 1"),
            (self.eval_batch_size >= 1, "--eval-batch-size must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.val_split >= 0, "--val-split must be >= 0"),
            (self.precision in PRECISIONS, "--precision must be auto, fp32 or bf16"),
            (self.kernels in KERNELS, f"--kernels must be one of {', '.join(KERNELS)}"),
            (self.pad >= 0, "--pad must be >= 0"),
            (self.lr_policy in ("step", "plateau"), "--lr-policy must be step or plateau"),
            (self.plateau_patience >= 0, "plateau_patience must be >= 0"),
            (self.mean in ("per-pixel", "per-channel"), "--mean must be per-pixel or per-channel"),
            (self.shortcut in (None, "A", "B", "C"), "--shortcut must be A, B or C"),
            (self.compile_mode in COMPILE_MODES,
             f"--compile-mode must be one of {', '.join(COMPILE_MODES)}"),
            (valid_seed(self.seed), f"--seed must be an integer in 0..{MAX_SEED}, got "
             f"{str(self.seed)[:40]}"),
        ]
        if self.recipe == "imagenet":
            lo, hi = self.scale if len(self.scale) == 2 else (0, -1)
            checks += [
                (len(self.scale) == 2 and 0 < lo <= hi,
                 f"--scale must be MIN MAX with 0 < MIN <= MAX, got {list(self.scale)}"),
                (0 < self.crop <= lo, f"--crop {self.crop} must be in [1, --scale MIN = {lo}]"),
                (self.crop <= self.test_resize,
                 f"--crop {self.crop} must be <= --test-resize {self.test_resize}"),
                (self.lighting >= 0, "--lighting must be >= 0"),
                (0 <= self.workers <= MAX_WORKERS,
                 f"--workers must be in 0..{MAX_WORKERS}, got {self.workers}"),
                (self.classes is None or self.classes >= 1, "--classes must be >= 1"),
                (self.images_per_class is None or self.images_per_class >= 1,
                 "--images-per-class must be >= 1"),
            ]
        for ok, msg in checks:
            if not ok:
                raise ReslabError(msg)


def valid_seed(seed: Any) -> bool:
    """Whether `seed` is a --seed a run can use (an int in 0..MAX_SEED)."""
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


def names_a_path(data: str) -> bool:
    """Whether a --data value is a PATH (or detection's ROOT1,ROOT2) rather than a named
    set: cifar10, cifar100, synthetic[:N:M] (`reslab.data.load_image_data` tries the names
    first) or detection's synthetic-det[:key=value,...]."""
    key = data.strip().lower()
    return not (key in ("cifar10", "cifar-10", "cifar100", "cifar-100")
                or key.split(":", 1)[0] in ("synthetic", "synthetic-det"))


def _data_parts(data: str, union: bool) -> list[str]:
    return [p.strip() for p in data.split(",")] if union else [data]


def absolute_data(data: Any, *, union: bool = False) -> Any:
    """`data` (a --data value) as a run records it: each part naming an existing file or
    folder made absolute (`~` expanded), so that a resume from another working directory
    finds the same data; named sets (`names_a_path`), parts naming nothing and non-strings
    are left as given. `union`: "," joins several roots (detection's VOC 07+12, Appendix
    A), each made absolute on its own. `TrainConfig` and `DetectConfig` both record this."""
    if not isinstance(data, str) or not names_a_path(data):
        return data

    def absolute(part: str) -> str:
        path = os.path.expanduser(part)
        return os.path.abspath(path) if part and os.path.exists(path) else part

    return ",".join(absolute(p) for p in _data_parts(data, union))


def missing_relative_part(data: Any, *, union: bool = False) -> str | None:
    """The first relative path of `data` that names nothing from the working directory (a
    run recorded before --data was made absolute, resumed elsewhere), else None."""
    if not isinstance(data, str) or not names_a_path(data):
        return None
    return next((p for p in _data_parts(data, union) if p and not os.path.isabs(
        os.path.expanduser(p)) and not os.path.exists(os.path.expanduser(p))), None)


def check_recorded_data(data: Any, path: Path, *, union: bool = False, hint: str = "") -> None:
    """ReslabError when `data`, as the run at `path` recorded its --data (runs made before
    --data was recorded absolute), holds a relative part that names nothing from the
    working directory: only the folder the run was started in finds it. One check for
    `TrainConfig` and `DetectConfig` (`union`: its ROOT1,ROOT2); `hint` ends the message."""
    missing = missing_relative_part(data, union=union)
    if missing is not None:
        raise ReslabError(f"{path} was trained on --data {data!r}; {missing!r} is a relative "
                          f"path that does not exist from {os.getcwd()}: resume from the "
                          f"folder the run was started in{hint}")


def same_data(a: str, b: str, *, union: bool = False) -> bool:
    """Whether two --data values name the same data: the same name, or paths naming the
    same file or folder (`inet`, `./inet/` and `/abs/inet` alike); with `union`, the same
    roots in the same order ("," joins them, as `absolute_data`)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and names_a_path(a) and names_a_path(b)):
        return False
    pa, pb = _data_parts(a, union), _data_parts(b, union)
    return len(pa) == len(pb) and all(_same_path(x, y) for x, y in zip(pa, pb, strict=True))


def _same_path(a: str, b: str) -> bool:
    a, b = os.path.expanduser(a), os.path.expanduser(b)
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is gone: compare what the spellings name
        return os.path.realpath(a) == os.path.realpath(b)


def cifar_recipe(**options: Any) -> TrainConfig:
    """`TrainConfig.cifar(**options)`: the paper's CIFAR-10 recipe (Sec. 4.2)."""
    return TrainConfig.cifar(**options)


def imagenet_recipe(**options: Any) -> TrainConfig:
    """`TrainConfig.imagenet(**options)`: the paper's ImageNet recipe (Sec. 3.4)."""
    return TrainConfig.imagenet(**options)
