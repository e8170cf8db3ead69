"""Run a list of training runs for one experiment, skipping finished ones and resuming
unfinished ones, with one shared data load (the experiments of Sec. 4.2 are many runs
of the same recipe)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

import reslab
from reslab.engine import pick_device, precision_name
from reslab.errors import ReslabError
from reslab.models.registry import resolve
from reslab.train import trainer
from reslab.train.recipes import CIFAR_RECIPE, IMAGENET_RECIPE, TrainConfig, same_data
from reslab.train.runlog import read_metrics
from reslab.train.schedule import PAPER_ITERATIONS

#: TrainConfig fields that do not change what a run computes; a finished run is reused
#: whatever their values. A subset of what a resume may change
#: (`recipes.RESUMABLE_CHANGES`): a sweep also holds the length, the evaluation points and
#: the precision (compared as resolved) fixed, since its report compares runs by them.
#: `kernels` changes only the rounding of the same arithmetic (reslab.kernels), as the
#: thread count does, so a run made before the field existed still counts.
ENGINE_FIELDS = ("resume", "progress", "device", "tensorboard", "workers", "data_root",
                 "eval_batch_size", "log_every", "skip_corrupt", "kernels")
#: The longest schedule `--budget` may ask for: 10 x the paper's (640k CIFAR iterations,
#: 6M ImageNet iterations); beyond it a typo, not a plan.
MAX_BUDGET = 10.0


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
    run_iterations: int | None = None  # --iterations: each run's length instead of --budget's
    milestones: tuple[int, ...] | None = None  # lr /10 at these (step policy) instead of plateau
    lr_policy: str | None = None  # None: the recipe's (plateau), step with --milestones
    skip_corrupt: bool = False  # skip unreadable training images (TrainConfig.skip_corrupt)
    # detection experiments (table7, table8): DetectConfig options given by the flags
    # (min_size, max_size, train_split, val_split, ...) and `weights`: {net: file}
    detection: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    @property
    def iterations(self) -> int:
        """The paper's schedule scaled by the budget: 64k iterations (CIFAR, Sec. 4.2) or
        60e4 (ImageNet, Sec. 3.4)."""
        if self.run_iterations is not None:
            return self.run_iterations
        return max(1, round(self.paper_iterations * self.budget))

    @property
    def paper_iterations(self) -> int:
        """The paper's run length: 64k (CIFAR, Sec. 4.2) or 60e4 (ImageNet, Sec. 3.4)."""
        return IMAGENET_RECIPE["iterations"] if self.recipe == "imagenet" else PAPER_ITERATIONS

    @property
    def fraction(self) -> float:
        """The runs' length as a fraction of the paper's: --budget, or --iterations'."""
        if self.run_iterations is None:
            return self.budget
        return self.run_iterations / self.paper_iterations

    @property
    def policy(self) -> str | None:
        """The ImageNet runs' lr policy: --lr-policy, else step when --milestones are given,
        else None (the recipe's plateau, Sec. 3.4)."""
        return self.lr_policy or ("step" if self.milestones else None)

    @property
    def batch(self) -> int:
        recipe = IMAGENET_RECIPE if self.recipe == "imagenet" else CIFAR_RECIPE
        return self.batch_size or recipe["batch_size"]

    def validate(self) -> None:
        """ReslabError for values no sweep can use; a net named twice in --models is
        trained (and reported) once, with a warning."""
        checks = [
            (isinstance(self.budget, (int, float)) and math.isfinite(self.budget)
             and 0 < self.budget <= MAX_BUDGET,
             f"--budget must be a number in (0, {MAX_BUDGET:g}] (a fraction of the paper's "
             f"schedule), got {self.budget}"),
            (self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (self.eval_points >= 1, f"--eval-points must be >= 1, got {self.eval_points}"),
            (self.batch_size is None or self.batch_size >= 1,
             f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.jobs >= 1, f"--jobs must be >= 1, got {self.jobs}"),
            (self.run_iterations is None or self.run_iterations >= 1,
             f"--iterations must be >= 1, got {self.run_iterations}"),
            (not (self.milestones and self.lr_policy == "plateau"),
             "--milestones are the step policy's: drop --lr-policy plateau, or the milestones"),
            (not self.milestones or self.run_iterations is None
             or max(self.milestones) < self.run_iterations,
             f"--milestones {list(self.milestones or ())} must lie inside the run's "
             f"--iterations {self.run_iterations}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ReslabError(msg)
        if self.models:
            keys = [_model_key(m) for m in self.models]  # resnet8 = RESNET8 = cifar_resnet8
            unique = [m for i, m in enumerate(self.models) if keys.index(keys[i]) == i]
            twice = sorted({m for m, k in zip(self.models, keys, strict=True)
                            if keys.count(k) > 1})
            if twice:
                warnings.warn(f"--models names {', '.join(twice)} more than once; each net is "
                              "trained and reported once", stacklevel=2)
            self.models = unique


def _model_key(name: str) -> str:
    """What a --models entry names: the registry's canonical name where it knows it (so
    spellings of one net are one run), else the lowercased name (e.g. vgg16)."""
    try:
        return resolve(name.strip().lower()).name
    except ReslabError:
        return name.strip().lower()


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
    """The sweep stopped on Ctrl-C/SIGTERM: the runs that were training saved their
    checkpoints (`stopped`: label, iteration, iterations), the queued ones never started."""

    def __init__(self, stopped: list[tuple[str, int | None, int | None]],
                 not_started: list[str], signum: int | None = None,
                 failed: list[str] | None = None) -> None:
        said = [f"{label} at iteration {it}/{its} (saved)" if it is not None
                else f"{label} before its first checkpoint" for label, it, its in stopped]
        parts = [f"stopped {', '.join(said)}" if said else
                 "stopped" if not_started else "stopped before the report (every run ended)"]
        if not_started:
            parts.append(f"{len(not_started)} queued run{'s' * (len(not_started) > 1)} "
                         f"not started ({', '.join(not_started)})")
        if failed:
            parts.append(f"{len(failed)} failed ({'; '.join(failed)})")
        how = f" by {signal.Signals(signum).name}" if signum else ""
        super().__init__(f"sweep{how}: " + "; ".join(parts))
        self.stopped, self.not_started, self.signum = stopped, not_started, signum


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM while a sweep runs: counted, never fatal, so that the
    sweep stops dealing runs, passes the stop on to the runs in progress and says how to
    continue. A signal taken by the trainer's own handler (a run trained in this process)
    is seen too, through the wakeup fd (`signal.set_wakeup_fd`)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._old_fd = -1

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._on_signal)
            self._pair = socket.socketpair()
            for end in self._pair:
                end.setblocking(False)
            self._old_fd = signal.set_wakeup_fd(self._pair[1].fileno(),
                                                warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pair is not None:
            signal.set_wakeup_fd(self._old_fd)
            for end in self._pair:
                end.close()
            self._pair = None
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _on_signal(self, signum: int, frame: object) -> None:
        self.first = self.first or signum
        self.count += 1

    def seen(self) -> int | None:
        """The first SIGINT/SIGTERM received since entering, or None."""
        if self._pair is not None:
            try:
                for number in self._pair[0].recv(4096):
                    if number in (signal.SIGINT, signal.SIGTERM):
                        self.first = self.first or number
            except (BlockingIOError, InterruptedError):
                pass
        return self.first


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
                                   images_per_class=s.images_per_class, lr_policy=s.policy,
                                   milestones=s.milestones, **common)
    else:
        cfg = TrainConfig.cifar(data_root=s.data_root, **common)
    return RunSpec(label, cfg)


def _comparable(config: dict) -> dict:
    d = json.loads(json.dumps(config))
    # `out` is where the run.json was found (an OUT may be moved, copied or spelled
    # otherwise); `data` is compared by what it names (check_same_config).
    return {k: v for k, v in d.items() if k not in ENGINE_FIELDS + ("out", "data")}


#: run.json fields a sweep and its reports read, and the types they must have.
_RUN_JSON_FIELDS = {"config": dict, "model_spec": dict, "data": dict, "machine": dict,
                    "versions": dict, "status": str, "precision": str}


def _read_run_json(out: Path) -> dict | None:
    """The run.json of a run folder (None if there is none); ReslabError naming the folder
    when it cannot be used."""
    path = out / "run.json"
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        why = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        info, why = None, str(e)
    if why is None:
        if not (isinstance(info, dict) and isinstance(info.get("config"), dict)
                and isinstance(info["config"].get("model", info["config"].get("backbone")),
                               str)):
            why = "not a record of a reslab run"
        else:
            wrong = [k for k, t in _RUN_JSON_FIELDS.items()
                     if info.get(k) is not None and not isinstance(info[k], t)]
            why = f"its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} of the " \
                  "wrong type" if wrong else None
    if why is None:
        return info
    keep = ("delete it and rerun: the run continues from its last.pt" if
            (out / "last.pt").exists() else f"delete the run folder {out} and rerun to "
            "train that run again")
    raise ReslabError(f"cannot use {path} ({why}): {keep}")


def check_same_config(label: str, info: dict, cfg: TrainConfig) -> None:
    """ReslabError if the run in cfg.out was made with other settings than `cfg` (paths
    are compared by what they name: a moved OUT or `--data inet` vs `./inet` is the same)."""
    # fields recorded since the run was made count at the values it was made with
    saved = _comparable({**cfg.legacy_defaults, **info.get("config", {})})
    wanted = _comparable(cfg.to_dict())
    # Compare what "auto" resolved to: the precision a run actually used is in run.json.
    saved["precision"] = info.get("precision", saved.get("precision"))
    wanted["precision"] = precision_name(cfg.precision, pick_device(cfg.device))
    data = info.get("config", {}).get("data")
    # a detector's --data may join several roots with "," (VOC 07+12): compared root by root
    if not same_data(data, cfg.data, union=cfg.data_union):
        saved["data"], wanted["data"] = data, cfg.data
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
    config is skipped; an unfinished one resumes from its last.pt; a run listed twice is
    trained once. Ctrl-C or SIGTERM stops dealing runs and stops the ones in progress
    (which save their checkpoints): SweepInterrupted. ReslabError when a folder holds a run
    with other settings or when runs failed (the others still ran; rerunning retries only
    those)."""
    if jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ReslabError("--jobs runs several single-process runs; under torchrun each run "
                          "already uses every process: drop --jobs")
    main = is_main_process()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True) if main else None)
    runs = _once_each(runs)
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
    with StopSignals() as stop:
        if jobs > 1 and len(todo) > 1:
            for head, _ in todo:
                log(f"{head}: queued")
            _train_in_parallel([spec for _, spec in todo], jobs, log, stop)
        else:
            for k, (head, spec) in enumerate(todo):
                later = [later.label for _, later in todo[k + 1:]]
                if stop.seen():
                    raise SweepInterrupted([], [spec.label, *later], stop.seen())
                log(f"{head} ...")
                result = train_run(spec.cfg, data)
                if result.status != "finished":
                    raise SweepInterrupted([(spec.label, result.iteration, result.iterations)],
                                           later, stop.seen())
        if stop.seen():  # after the last run ended: no report either
            raise SweepInterrupted([], [], stop.seen())
    trained = {spec.label for _, spec in todo}
    outcomes = []
    for spec in runs:
        out = Path(spec.cfg.out)
        outcomes.append(RunOutcome(spec.label, spec.cfg, out, _read_run_json(out) or {},
                                   read_metrics(out / "metrics.jsonl"),
                                   spec.label not in trained))
    return outcomes


def train_run(cfg, data=None):
    """Train one run of a sweep: a classifier's `TrainConfig` through `trainer.train` (with
    the pre-loaded `data`), a detector's `DetectConfig` (Tables 7-8) through
    `reslab.detection.trainer.train_detector`."""
    if isinstance(cfg, TrainConfig):
        return trainer.train(cfg, data=data)
    from reslab.detection.trainer import train_detector

    return train_detector(cfg)


def config_from_dict(config: dict):
    """A run's config from its `to_dict()`: a detector's when it names a detection head."""
    if "head" in config:
        from reslab.detection.config import DetectConfig

        return DetectConfig.from_dict(config)
    return TrainConfig.from_dict(config)


def _once_each(runs: list[RunSpec]) -> list[RunSpec]:
    """`runs` with each run folder once (a run listed twice would be trained twice into one
    folder and counted twice in the report); two different runs for one folder: refused."""
    seen: dict[str, RunSpec] = {}
    for spec in runs:
        key = os.path.realpath(spec.cfg.out)
        other = seen.get(key)
        if other is None:
            seen[key] = spec
        elif other.cfg != spec.cfg:
            raise ReslabError(f"runs {other.label} and {spec.label} would both train into "
                              f"{spec.cfg.out}: give each run its own folder")
    return list(seen.values())


def _train_in_parallel(todo: list[RunSpec], jobs: int, log: Callable[[str], None],
                       stop: StopSignals) -> None:
    """Run `todo`, `jobs` at a time, each in a worker process of its own; report every
    failure after all have ended. A stop (`stop`: Ctrl-C, SIGTERM) deals no further run and
    is passed on to the workers as SIGTERM (they save and end); a second one as SIGINT (they
    end at once, keeping their last checkpoint), a third kills them."""
    device = pick_device(todo[0].cfg.device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    threads = max(1, (os.cpu_count() or 1) // jobs)
    queued = list(enumerate(todo))
    running: list[_Worker] = []
    failed, stopped, not_started = [], [], []
    told = 0  # stop signals passed on to the workers
    with tempfile.TemporaryDirectory(prefix="reslab-sweep-") as tmp:
        env = worker_env(os.environ, _package_dir(), child_reslab(os.environ),
                         Path(tmp) / "path")
        try:
            while running or (queued and not stop.seen()):
                while queued and len(running) < jobs and not stop.seen():
                    k, spec = queued.pop(0)
                    cfg = spec.cfg
                    if gpus and device.index is None:
                        cfg = dataclasses.replace(cfg, device=f"cuda:{k % gpus}")
                    running.append(_Worker(spec.label, cfg, threads, Path(tmp) / f"{k}.json",
                                           env))
                if stop.seen() and told < min(max(stop.count, 1), 3):
                    told = min(max(stop.count, 1), 3)
                    for worker in running:
                        worker.stop(told)
                time.sleep(0.1)
                for worker in [w for w in running if w.proc.poll() is not None]:
                    running.remove(worker)
                    result = worker.result()
                    status, label = result["status"], worker.label
                    if status == "finished":
                        log(f"{label} finished ({result['iteration']} iterations)")
                    elif status == "interrupted":
                        stopped.append((label, result["iteration"], result["iterations"]))
                    elif status == "not started":
                        not_started.append(label)
                    elif status == "ended" and stop.seen():  # stopped before it saved
                        stopped.append((label, None, None))
                    else:
                        failed.append(f"{label}: {result['message']}")
                        log(f"{label} failed: {result['message']}")
        finally:
            for worker in running:  # only after an error in this process
                worker.stop(3)
                worker.proc.wait()
    if stop.seen() or stopped:  # (a stop after the last run ended still stops the report)
        raise SweepInterrupted(stopped, not_started + [spec.label for _, spec in queued],
                               stop.seen(), failed)
    if failed:
        raise ReslabError(f"{len(failed)} of {len(todo)} runs failed ({'; '.join(failed)}); "
                          "the others are saved: rerun the same command to retry them")


#: The worker's command: stop signals are caught from its first line (before torch loads),
#: then `worker_main` takes over.
_WORKER_CODE = """\
import signal
early = []
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda signum, frame: early.append(signum))
import sys
from reslab.experiments.sweep import worker_main
sys.exit(worker_main(sys.argv[1:], early))
"""


def _package_dir() -> Path:
    """The folder of the reslab package this process runs."""
    return Path(reslab.__file__).resolve().parent


_PROBE = ("import importlib.util as u; s = u.find_spec('reslab'); "
          "print(s.origin if s and s.origin else '')")


def child_reslab(environ: Mapping[str, str]) -> Path | None:
    """The package folder of the reslab that `python -c` started with `environ` (and this
    process's interpreter and working directory, as a worker is) would import; None if it
    would find none. Asked of such a process (it imports nothing, ~50 ms): its path also
    holds what `.pth` files and editable installs add. A failed probe gives
    `Path("<unknown>")`, which `worker_env` treats as another copy."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=dict(environ),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return Path("<unknown>")
    return Path(out).resolve().parent if out else None


def worker_env(environ: Mapping[str, str], ours: Path, child_finds: Path | None,
               link_dir: Path) -> dict[str, str]:
    """The environment of a `--jobs` worker, which must import this process's reslab (the
    package folder `ours`) without reordering the user's PYTHONPATH: `environ` as it is
    when the child would import `ours` anyway (`child_finds`, see `child_reslab`); with
    `ours`'s parent folder appended to PYTHONPATH when it would find no reslab (e.g. a
    source checkout put on `sys.path` by a script); and, when it would import another
    copy, with `link_dir` first, a folder made here holding only a link `reslab` to
    `ours` (prepending `ours`'s parent, possibly site-packages, would shadow the user's
    entries for every package it holds)."""
    env = dict(environ)
    user = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []  # as it is (even "a::b")
    if child_finds is not None and child_finds.resolve() == ours.resolve():
        return env
    if child_finds is None:
        paths = [*user, str(ours.parent)]
    else:
        link = link_dir / "reslab"
        try:
            link_dir.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink(ours, link, target_is_directory=True)
            paths = [str(link_dir), *user]
        except OSError:  # no links here: the parent folder first, as the only way left
            paths = [str(ours.parent), *user]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class _Worker:
    """One run of `--jobs` in a process of its own: `python -c _WORKER_CODE CONFIG THREADS
    PARENT_PID RESULT`, in its own session (a Ctrl-C reaches the parent only, which passes
    the stop on) and writing its outcome to RESULT (JSON)."""

    def __init__(self, label: str, cfg: TrainConfig, threads: int, result: Path,
                 env: dict[str, str]) -> None:
        self.label, self.result_path = label, result
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, json.dumps(cfg.to_dict()), str(threads),
             str(os.getpid()), str(result)],
            stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def stop(self, level: int) -> None:
        """Pass a stop on: 1 saves and ends (SIGTERM), 2 ends at once keeping the last
        checkpoint (SIGINT, as a second Ctrl-C), 3 kills."""
        if self.proc.poll() is not None:
            return
        try:
            if level >= 3:
                self.proc.kill()
            else:
                self.proc.send_signal(signal.SIGTERM if level == 1 else signal.SIGINT)
        except ProcessLookupError:
            pass

    def result(self) -> dict:
        """What the worker wrote; status "ended" when it wrote nothing (killed)."""
        try:
            return json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            code = self.proc.returncode
            how = (f"killed by {signal.Signals(-code).name}" if code < 0
                   else f"exit status {code}")
            return {"status": "ended", "message": f"its worker process ended ({how}) "
                    "without a result"}


def worker_main(argv: list[str], early: list[int]) -> int:
    """A `--jobs` worker: train one run (`trainer.train`, whose own handler turns SIGINT/
    SIGTERM into a saved checkpoint), and stop the same way when the parent process dies
    (checked every half second), so that no worker outlives its sweep or keeps its lock."""
    config, threads, parent, result_path = json.loads(argv[0]), int(argv[1]), int(argv[2]), \
        Path(argv[3])
    guard = _ParentGuard(parent, early)
    try:
        torch.set_num_threads(threads)
        cfg = dataclasses.replace(config_from_dict(config), progress=False)
        if guard.stopping():
            result = {"status": "not started"}
        else:
            r = train_run(cfg)
            result = {"status": r.status, "iteration": r.iteration, "iterations": r.iterations}
    except KeyboardInterrupt:  # a second stop: ended at once, the last checkpoint kept
        result = {"status": "ended", "message": "stopped at once"}
    except Exception as e:  # reported by the parent, which goes on with the other runs
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        result = {"status": "failed", "message": message}
    finally:
        guard.close()
    if os.getppid() == parent:  # else nobody reads it
        from reslab.atomic_write import atomic_write_json

        try:
            atomic_write_json(result_path, result)
        except (OSError, ReslabError):
            pass
    return 0


class _ParentGuard:
    """A worker's stop signals and parent: a SIGINT/SIGTERM (or the parent's death, seen as
    a change of `os.getppid()`) is re-sent as SIGTERM every half second until the run
    ends, so that the trainer's handler takes it even when it came while the run was still
    starting; a second SIGINT raises KeyboardInterrupt (as in the trainer)."""

    def __init__(self, parent: int, early: list[int]) -> None:
        self.parent, self.signals = parent, list(early)
        self._done = threading.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signals and signum == signal.SIGINT and not self._done.is_set():
            raise KeyboardInterrupt
        self.signals.append(signum)

    def stopping(self) -> bool:
        return bool(self.signals) or os.getppid() != self.parent

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            if self.stopping():
                os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        self._done.set()
        self._thread.join()
