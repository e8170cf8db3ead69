"""One typed, frozen config describes a detection run (as `TrainConfig` a classifier's);
the paper's recipes (Appendix A) are its constructors.

`DetectConfig.voc(...)` is the PASCAL VOC recipe: Faster R-CNN's hyper-parameters as the
paper keeps them (shorter side 600, longer side at most 1000, horizontal flips, SGD
momentum 0.9, weight decay 5e-4, lr 0.001 for 60k mini-batches then 0.0001 for 20k, one
image per mini-batch; at test, per-class NMS of the detections at IoU 0.3 as py-faster-rcnn,
`test_nms`). `DetectConfig.coco(...)` is the COCO one: 8 images per mini-batch
(1 per GPU on 8 GPUs), lr 0.001 for 240k iterations then 0.0001 for 80k. A field left
None takes the recipe's value; `--iterations` scales the milestone in proportion, and
`--min-size`, `--max-size`, `--batch-size` shrink a run for a CPU. Validated completely
when built (before any data is read), never mutated; `for_resume(out)` rebuilds the
config a run folder's checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from reslab.detection.models import (
    BACKBONES,
    HEADS,
    LEGACY_TEST_NMS,
    PAPER_ASPECT_RATIOS,
    PAPER_TEST_NMS,
    VGG,
)
from reslab.engine import PRECISIONS
from reslab.errors import ReslabError
from reslab.train.recipes import (
    MAX_SEED,
    MAX_WORKERS,
    absolute_data,
    check_recorded_data,
    same_data,
    valid_seed,
)
from reslab.train.run_folder import recorded_config
from reslab.train.schedule import scale_milestones

RECIPES = ("voc", "coco")

#: Appendix A, PASCAL VOC (Faster R-CNN's settings): 80k iterations, lr /10 at 60k, one
#: image per mini-batch; splits of a VOC root's ImageSets/Main.
VOC_RECIPE: dict[str, Any] = {
    "iterations": 80_000, "batch_size": 1, "train_split": "trainval", "val_split": "test",
}
#: Appendix A, MS COCO: "lr 0.001 for 240k iterations and 0.0001 for the next 80k", 8
#: GPUs with one image each (the RPN step's mini-batch); the 80k train and 40k val images
#: of COCO 2014 (annotation files named by their split).
COCO_RECIPE: dict[str, Any] = {
    "iterations": 320_000, "batch_size": 8, "train_split": "train2014", "val_split": "val2014",
}
_RECIPE_DEFAULTS = {"voc": VOC_RECIPE, "coco": COCO_RECIPE}
#: The paper's lr drop (/10) of each recipe; a shorter run drops at the same fraction.
PAPER_MILESTONES = {"voc": (60_000,), "coco": (240_000,)}

#: Fields a resume may change: they do not change what an iteration computes.
RESUMABLE_CHANGES = ("out", "resume", "iterations", "eval_every", "eval_batch_size",
                     "log_every", "device", "precision", "progress", "tensorboard", "workers")

#: Fields recorded since the first detection runs, at the values runs without them were
#: made with (`from_dict`; a sweep compares an old run.json with them).
LEGACY_DEFAULTS: dict[str, Any] = {"test_nms": LEGACY_TEST_NMS}

#: The sizes a run may ask for (a typo beyond them, or an allocation no machine makes; `reslab
#: detect` refuses them when its flags are parsed): the shorter side's range and the longer
#: side's (at least the shorter), images per mini-batch, and proposals, anchors and RoIs
#: per image (the RPN keeps at most its pre-NMS 12000 boxes).
MIN_SIDE = (32, 4096)
MAX_SIDE = (32, 8192)
MAX_BATCH = 1024
MAX_PER_IMAGE = 20_000

#: DetectConfig field -> torchvision FasterRCNN option (the RPN/RoI settings of Appendix A).
MODEL_OPTIONS = {
    "rpn_batch_size": "rpn_batch_size_per_image", "rpn_nms": "rpn_nms_thresh",
    "rpn_train_proposals": "rpn_post_nms_top_n_train",
    "rpn_test_proposals": "rpn_post_nms_top_n_test",
    "roi_batch_size": "box_batch_size_per_image",
    "roi_positive_fraction": "box_positive_fraction",
    "detections_per_image": "box_detections_per_img",
    "score_threshold": "box_score_thresh", "test_nms": "box_nms_thresh",
}


@dataclass(frozen=True)
class DetectConfig:
    """Everything that defines a detection run. None means "the recipe's value"."""

    legacy_defaults: ClassVar[dict[str, Any]] = LEGACY_DEFAULTS  # as TrainConfig's
    data_union: ClassVar[bool] = True  # ROOT1,ROOT2 (VOC 07+12)

    backbone: str = "resnet101"  # resnet18..152, plain18..152, vgg16
    head: str = "c4"  # c4 (the paper's, Appendix A) or fpn
    data: str = "synthetic-det"  # a VOC root (ROOT1,ROOT2 for 07+12), a COCO root, synthetic-det
    train_split: str | None = None  # VOC ImageSets/Main name or COCO annotation file's name
    val_split: str | None = None
    skip_bad: bool = False  # skip (and count) bad annotations and images instead of stopping
    weights: str | None = None  # the backbone's ImageNet classifier weights; None: scratch
    trainable_layers: int | None = None  # None: 3 with weights, 5 (all) from scratch
    shortcut: str | None = None  # None: the weights' (a reslab checkpoint's), else B
    stride_in_1x1: bool | None = None  # None: the weights', else the paper's (True)
    out: str | None = None  # None: runs/detect-BACKBONE-HEAD
    recipe: str = "voc"
    # optimisation (Appendix A / Faster R-CNN)
    iterations: int | None = None
    batch_size: int | None = None  # images per mini-batch, global (all ranks together)
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] | None = None  # None: the recipe's, scaled to the run
    gamma: float = 0.1
    # input
    min_size: int = 600  # shorter side
    max_size: int = 1000  # longer side at most
    flip: bool = True  # horizontal flips, probability 0.5
    # anchors, RPN and RoI sampling (Appendix A; models.PAPER_OPTIONS)
    anchor_sizes: tuple[int, ...] | None = None  # None: the head's, scaled by min_size
    aspect_ratios: tuple[float, ...] = PAPER_ASPECT_RATIOS
    rpn_batch_size: int = 256  # anchors sampled per image, up to half positive
    rpn_nms: float = 0.7
    rpn_train_proposals: int = 2000
    rpn_test_proposals: int = 300
    roi_batch_size: int = 128  # RoIs per image
    roi_positive_fraction: float = 0.25
    detections_per_image: int = 100
    score_threshold: float = 0.05
    test_nms: float = PAPER_TEST_NMS  # per-class NMS of the detections (py-faster-rcnn's 0.3)
    # evaluation and outputs
    eval_every: int | None = None  # None: about 8 evaluations per run, at most every 5000
    eval_batch_size: int = 2
    log_every: int = 20
    workers: int = 0  # DataLoader processes decoding the training images
    # engine
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16, else fp32
    seed: int = 0
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ReslabError(f"--recipe must be one of {', '.join(RECIPES)}, got "
                              f"{self.recipe!r}")
        for name, value in _RECIPE_DEFAULTS[self.recipe].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if isinstance(self.backbone, str):
            object.__setattr__(self, "backbone", self.backbone.strip().lower())
        if self.out is None:
            object.__setattr__(self, "out", f"runs/detect-{self.backbone}-{self.head}")
        # each root recorded absolute, so that a resume from another folder finds the data
        object.__setattr__(self, "data", absolute_data(self.data, union=self.data_union))
        for name in ("milestones", "anchor_sizes", "aspect_ratios"):  # lists from JSON
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def voc(cls, **options: Any) -> DetectConfig:
        """Appendix A on PASCAL VOC: 80k iterations of one image, lr 0.001 -> 0.0001 at 60k,
        SGD momentum 0.9, weight decay 5e-4, shorter side 600 (longer <= 1000), flips."""
        return cls(recipe="voc", **options)

    @classmethod
    def coco(cls, **options: Any) -> DetectConfig:
        """Appendix A on MS COCO: 320k iterations of 8 images, lr 0.001 -> 0.0001 at 240k."""
        return cls(recipe="coco", **options)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectConfig:
        """A config from `to_dict()` (run.json, checkpoints). A dict without `test_nms`
        (an older layout) gets torchvision's 0.5, which its run was trained and evaluated
        with; the paper's 0.3 (Faster R-CNN's, Appendix A) is the default of new runs."""
        d = {**LEGACY_DEFAULTS, **d}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ReslabError(f"unknown detection options: {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def for_resume(cls, out: str | os.PathLike, **changes: Any) -> DetectConfig:
        """The config of the run in `out` (from its last.pt; from its run.json when it was
        stopped before its first checkpoint: it restarts at iteration 0) with `changes` and
        `resume=True`: `reslab detect train --resume --out DIR` needs no other flag. A
        folder that records no run starts one with `changes`."""
        found = recorded_config(out)
        if found is None:
            return cls(out=str(out), resume=True, **changes)
        saved, path = found
        if saved is None or "head" not in saved:
            raise ReslabError(f"{path} records no detection config (is it a classifier's "
                              "run? use `reslab train --resume`)")
        if "data" not in changes:
            check_recorded_data(saved.get("data"), path, union=True)
        # recorded --data is made absolute again; the trainer keeps the spelling of the
        # run's data identity on resume (`recorded_data_spelling`)
        return cls.from_dict({**saved, **changes, "out": str(out), "resume": True})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("milestones", "anchor_sizes", "aspect_ratios"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    # ---- derived values -------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The backbone's name (what a sweep's log line calls the run's net)."""
        return self.backbone

    def milestones_for(self, iterations: int) -> tuple[int, ...]:
        """The given milestones, or the recipe's scaled to `iterations` (60k of 80k)."""
        if self.milestones is not None:
            return self.milestones
        return scale_milestones(iterations, PAPER_MILESTONES[self.recipe],
                                _RECIPE_DEFAULTS[self.recipe]["iterations"])

    def eval_every_for(self, iterations: int) -> int:
        return self.eval_every or max(1, min(5000, iterations // 8))

    def model_options(self) -> dict[str, float]:
        """The FasterRCNN options of this config (torchvision's names)."""
        return {tv: getattr(self, name) for name, tv in MODEL_OPTIONS.items()}

    def changes_from(self, other: DetectConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (other's, self's)} of fields that differ and change what a run computes."""
        a, b = other.to_dict(), self.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]
                and not (k == "data" and same_data(a[k], b[k], union=True))}

    # ---- validation -----------------------------------------------------------------------
    def _validate(self) -> None:
        """Raise ReslabError for values no run can use (all of them, before any data)."""
        def finite_positive(x: Any) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

        def fraction(x: Any) -> bool:
            return isinstance(x, (int, float)) and 0 < x <= 1

        ms = self.milestones or ()
        anchors = self.anchor_sizes or ()
        checks = [
            (self.backbone in BACKBONES,
             f"--backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}"),
            (self.head in HEADS, f"--head must be c4 or fpn, got {self.head!r}"),
            (not (self.backbone == VGG and self.head == "fpn"),
             "vgg16 is the paper's single-level baseline: use --head c4 with it"),
            (isinstance(self.data, str) and self.data.strip() != "", "--data is empty"),
            (bool(self.train_split) and bool(self.val_split),
             "--train-split and --val-split must name splits"),
            (self.iterations >= 1, f"--iterations must be >= 1, got {self.iterations}"),
            (1 <= self.batch_size <= MAX_BATCH,
             f"--batch-size must be in 1..{MAX_BATCH}, got {self.batch_size}"),
            (finite_positive(self.lr), f"--lr must be a finite number > 0, got {self.lr}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             "--weight-decay must be >= 0"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}"),
            (all(isinstance(m, int) and m >= 1 for m in ms) and list(ms) == sorted(set(ms)),
             f"--milestones must be increasing iterations >= 1, got {list(ms)}"),
            (self.trainable_layers is None or 0 <= self.trainable_layers <= 5,
             f"--trainable-layers must be in 0..5, got {self.trainable_layers}"),
            (self.shortcut in (None, "A", "B", "C"), "--shortcut must be A, B or C"),
            (isinstance(self.min_size, int) and MIN_SIDE[0] <= self.min_size <= MIN_SIDE[1],
             f"--min-size must be in {MIN_SIDE[0]}..{MIN_SIDE[1]} pixels, got "
             f"{self.min_size}"),
            (isinstance(self.max_size, int) and self.min_size <= self.max_size <= MAX_SIDE[1],
             f"--max-size must be in [--min-size {self.min_size}, {MAX_SIDE[1]}], got "
             f"{self.max_size}"),
            (all(isinstance(a, int) and 1 <= a <= MAX_SIDE[1] for a in anchors),
             f"--anchor-sizes must be pixel sizes in 1..{MAX_SIDE[1]}, got {list(anchors)}"),
            (len(self.aspect_ratios) >= 1 and all(finite_positive(r) for r in self.aspect_ratios),
             f"--aspect-ratios must be positive, got {list(self.aspect_ratios)}"),
            (fraction(self.rpn_nms), "--rpn-nms must be in (0, 1]"),
            (fraction(self.roi_positive_fraction), "roi_positive_fraction must be in (0, 1]"),
            (0 <= self.score_threshold < 1, "score_threshold must be in [0, 1)"),
            (fraction(self.test_nms), f"--test-nms must be in (0, 1], got {self.test_nms}"),
            (self.eval_every is None or self.eval_every >= 1, "--eval-every must be >= 1"),
            (1 <= self.eval_batch_size <= MAX_BATCH,
             f"--eval-batch-size must be in 1..{MAX_BATCH}, got {self.eval_batch_size}"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (0 <= self.workers <= MAX_WORKERS,
             f"--workers must be in 0..{MAX_WORKERS}, got {self.workers}"),
            (self.precision in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)}"),
            (valid_seed(self.seed), f"--seed must be an integer in 0..{MAX_SEED}, got "
             f"{str(self.seed)[:40]}"),
        ]
        per_image = {"--rpn-batch-size": self.rpn_batch_size,
                     "--rpn-train-proposals": self.rpn_train_proposals,
                     "--rpn-test-proposals": self.rpn_test_proposals,
                     "--roi-batch-size": self.roi_batch_size,
                     "detections_per_image": self.detections_per_image}
        checks += [(isinstance(n, int) and 1 <= n <= MAX_PER_IMAGE,
                    f"{flag} must be in 1..{MAX_PER_IMAGE}, got {n}")
                   for flag, n in per_image.items()]
        for ok, msg in checks:
            if not ok:
                raise ReslabError(msg)
        if self.head == "fpn" and anchors and len(anchors) != 5:
            raise ReslabError(f"--head fpn takes 5 anchor sizes (one per level), got "
                              f"{list(anchors)}")


def recorded_data_spelling(identity: dict | None, cfg: DetectConfig, path: Path) -> str | None:
    """How the data identity of a resumed run (`identity`, a checkpoint's) spells the roots
    `cfg.data` names, when it spells them otherwise: None if alike, or naming other data
    (the resume's data check then says so).

    A VOC or COCO split's identity is named "voc:ROOT1,ROOT2 SPLIT" / "coco:ROOT SPLIT"
    and its fingerprint hashes that name and each image's path, the roots as --data gave
    them when the run started; runs made before --data was recorded absolute spell them
    relative. The trainer opens the resumed splits with this spelling (it names the same
    roots from here: `DetectionSource(spelled=...)`), so that a resume continues the run
    however it spells them (`--data` given or not, absolute or relative, from the sweep,
    after `dataclasses.replace`), and its identity stays the run's.
    ReslabError (`check_recorded_data`) if the recorded roots are relative and name
    nothing from the working directory."""
    name = (identity or {}).get("name")
    suffix = f" {cfg.train_split}"
    if not isinstance(name, str) or not name.endswith(suffix):
        return None
    layout, colon, spelled = name[: -len(suffix)].partition(":")
    if not colon or layout not in ("voc", "coco") or spelled == cfg.data:
        return None
    check_recorded_data(spelled, path, union=True)
    return spelled if same_data(spelled, cfg.data, union=True) else None
