"""Run a list of training runs for one experiment, skipping finished ones and resuming
unfinished ones, with one shared data load (the experiments of Sec. 4.2 are many runs
of the same recipe)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from reslab.engine import pick_device, precision_name
from reslab.errors import ReslabError
from reslab.train import trainer
from reslab.train.recipes import CIFAR_RECIPE, IMAGENET_RECIPE, TrainConfig
from reslab.train.runlog import read_metrics
from reslab.train.schedule import PAPER_ITERATIONS

#: TrainConfig fields that do not change what a run computes; a finished run is reused
#: whatever their values. A subset of what a resume may change
#: (`recipes.RESUMABLE_CHANGES`): a sweep also holds the length, the evaluation points and
#: the precision (compared as resolved) fixed, since its report compares runs by them.
ENGINE_FIELDS = ("resume", "progress", "device", "tensorboard", "workers", "data_root",
                 "eval_batch_size", "log_every", "skip_corrupt")


@dataclass
class Settings:
    """What `reslab reproduce` was asked for (shared by every experiment)."""

    data: str
    out: Path
    budget: float = 1.0  # fraction of the paper's schedule (64k CIFAR, 60e4 ImageNet iterations)
    seeds: int = 1
    device: str = "auto"
    batch_size: int | None = None  # None: the recipe's (128 CIFAR, 256 ImageNet)
    eval_points: int = 40
    models: list[str] | None = None  # restricts figure6 / table6 / figure7
    with_1202: bool = False
    with_plain110: bool = False
    depth: int = 20  # shortcuts
    data_root: str | None = None
    progress: bool = True
    precision: str = "auto"  # auto, fp32 or bf16 (TrainConfig.precision)
    jobs: int = 1  # runs trained at once (processes), spread over GPUs or CPU threads
    recipe: str = "cifar"  # set by `reproduce` from the experiment
    # ImageNet experiments (None: the recipe's values)
    classes: int | None = None  # the first K classes (ImageNet-100 style)
    images_per_class: int | None = None
    scale: tuple[int, int] | None = None
    crop: int | None = None
    test_resize: int | None = None
    workers: int | None = None
    skip_corrupt: bool = False  # skip unreadable training images (TrainConfig.skip_corrupt)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    @property
    def iterations(self) -> int:
        """The paper's schedule scaled by the budget: 64k iterations (CIFAR, Sec. 4.2) or
        60e4 (ImageNet, Sec. 3.4)."""
        full = IMAGENET_RECIPE["iterations"] if self.recipe == "imagenet" else PAPER_ITERATIONS
        return max(1, round(full * self.budget))

    @property
    def batch(self) -> int:
        recipe = IMAGENET_RECIPE if self.recipe == "imagenet" else CIFAR_RECIPE
        return self.batch_size or recipe["batch_size"]

    def validate(self) -> None:
        checks = [
            (self.budget > 0, f"--budget must be > 0, got {self.budget}"),
            (self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (self.eval_points >= 1, f"--eval-points must be >= 1, got {self.eval_points}"),
            (self.batch_size is None or self.batch_size >= 1,
             f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.jobs >= 1, f"--jobs must be >= 1, got {self.jobs}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ReslabError(msg)


@dataclass
class RunSpec:
    """One training run of an experiment: a label (its folder under DIR/runs) and config."""

    label: str
    cfg: TrainConfig


@dataclass
class RunOutcome:
    """A run after the sweep: its config, run.json, metrics records and whether it was
    reused from an earlier invocation."""

    label: str
    cfg: TrainConfig
    out: Path
    info: dict
    records: list[dict]
    skipped: bool


class SweepInterrupted(Exception):
    """A run stopped on Ctrl-C/SIGTERM after saving its checkpoint."""

    def __init__(self, label: str, iteration: int, iterations: int) -> None:
        super().__init__(f"{label} stopped at iteration {iteration}/{iterations}")
        self.label, self.iteration, self.iterations = label, iteration, iterations


def make_config(s: Settings, label: str, model: str, seed: int = 0,
                shortcut: str | None = None) -> RunSpec:
    """The paper's recipe of the experiment (`s.recipe`) scaled to `s.budget`, writing into
    DIR/runs/LABEL."""
    iterations = s.iterations
    common = dict(model=model, shortcut=shortcut, data=s.data, out=str(s.out / "runs" / label),
                  iterations=iterations, batch_size=s.batch, seed=seed, device=s.device,
                  eval_every=max(1, iterations // s.eval_points), progress=s.progress,
                  precision=s.precision, skip_corrupt=s.skip_corrupt)
    if s.recipe == "imagenet":  # Sec. 3.4, at the sizes and subset asked for
        cfg = TrainConfig.imagenet(scale=s.scale, crop=s.crop, test_resize=s.test_resize,
                                   workers=s.workers, classes=s.classes,
                                   images_per_class=s.images_per_class, **common)
    else:
        cfg = TrainConfig.cifar(data_root=s.data_root, **common)
    return RunSpec(label, cfg)


def _comparable(config: dict) -> dict:
    d = json.loads(json.dumps(config))
    return {k: v for k, v in d.items() if k not in ENGINE_FIELDS}


def _read_run_json(out: Path) -> dict | None:
    path = out / "run.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReslabError(f"cannot read {path} ({e}): use another --out") from None


def check_same_config(label: str, info: dict, cfg: TrainConfig) -> None:
    """ReslabError if the run in cfg.out was made with other settings than `cfg`."""
    saved, wanted = _comparable(info.get("config", {})), _comparable(cfg.to_dict())
    # Compare what "auto" resolved to: the precision a run actually used is in run.json.
    saved["precision"] = info.get("precision", saved.get("precision"))
    wanted["precision"] = precision_name(cfg.precision, pick_device(cfg.device))
    if saved != wanted:
        diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in diff)
        raise ReslabError(f"{cfg.out} holds a {label} run made with other settings ({details}); "
                          "use another --out for these settings")


def is_finished(info: dict | None, cfg: TrainConfig) -> bool:
    return (info is not None and info.get("status") == "finished"
            and info.get("finished_iteration") == cfg.iterations)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a process started without torchrun."""
    return os.environ.get("RANK", "0") == "0"


def run_sweep(runs: list[RunSpec], data, log: Callable[[str], None] | None = None,
              jobs: int = 1) -> list[RunOutcome]:
    """Train every run through `reslab.train.trainer.train`: in this process with the
    pre-loaded `data` (jobs=1), or `jobs` runs at once in worker processes (each loads its
    data; GPUs are dealt out round-robin, CPU threads divided). A finished run with the same
    config is skipped; an unfinished one resumes from its last.pt. Raises SweepInterrupted
    when a run was stopped (Ctrl-C), ReslabError when a folder holds a run with other
    settings or when runs failed (the others still ran; rerunning retries only those)."""
    if jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ReslabError("--jobs runs several single-process runs; under torchrun each run "
                          "already uses every process: drop --jobs")
    main = is_main_process()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True) if main else None)
    for spec in runs:  # check every folder before spending time on any run
        info = _read_run_json(Path(spec.cfg.out))
        if info is not None:
            check_same_config(spec.label, info, spec.cfg)
    todo = []
    for i, spec in enumerate(runs, 1):
        out = Path(spec.cfg.out)
        if is_finished(_read_run_json(out), spec.cfg):
            log(f"[run {i}/{len(runs)}] {spec.label}: finished earlier, reusing {out}")
            continue
        cfg = dataclasses.replace(spec.cfg, resume=(out / "last.pt").exists())
        todo.append((f"[run {i}/{len(runs)}] {spec.label} ({cfg.model}, {cfg.iterations} "
                     f"iterations, seed {cfg.seed})" + (" resuming" if cfg.resume else ""),
                     RunSpec(spec.label, cfg)))
    if jobs > 1 and len(todo) > 1:
        for head, _ in todo:
            log(f"{head}: queued")
        _train_in_parallel([spec for _, spec in todo], jobs, log)
    else:
        for head, spec in todo:
            log(f"{head} ...")
            result = trainer.train(spec.cfg, data=data)
            if result.status != "finished":
                raise SweepInterrupted(spec.label, result.iteration, result.iterations)
    trained = {spec.label for _, spec in todo}
    outcomes = []
    for spec in runs:
        out = Path(spec.cfg.out)
        outcomes.append(RunOutcome(spec.label, spec.cfg, out, _read_run_json(out) or {},
                                   read_metrics(out / "metrics.jsonl"),
                                   spec.label not in trained))
    return outcomes


def _train_in_parallel(todo: list[RunSpec], jobs: int, log: Callable[[str], None]) -> None:
    """Run `todo` in `jobs` spawned processes; report every failure after all have ended."""
    device = pick_device(todo[0].cfg.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed, interrupted = [], []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {}
        for k, spec in enumerate(todo):
            cfg = spec.cfg
            if gpus and device.index is None:
                cfg = dataclasses.replace(cfg, device=f"cuda:{k % gpus}")
            futures[pool.submit(_train_worker, cfg.to_dict(), threads)] = spec.label
        for future in as_completed(futures):
            label = futures[future]
            try:
                status, iteration, iterations = future.result()
            except Exception as e:  # a failed run does not stop the others
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                failed.append(f"{label}: {message}")
                log(f"{label} failed: {message}")
                continue
            if status != "finished":
                interrupted.append(SweepInterrupted(label, iteration, iterations))
            else:
                log(f"{label} finished ({iteration} iterations)")
    if failed:
        raise ReslabError(f"{len(failed)} of {len(todo)} runs failed ({'; '.join(failed)}); "
                          "the others are saved: rerun the same command to retry them")
    if interrupted:
        raise interrupted[0]


def _train_worker(config: dict, threads: int) -> tuple[str, int, int]:
    """One run in a worker process of `--jobs` (spawned: top-level and picklable)."""
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(TrainConfig.from_dict(config), progress=False)
    result = trainer.train(cfg)
    return result.status, result.iteration, result.iterations
