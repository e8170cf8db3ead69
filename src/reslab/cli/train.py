"""`reslab train`: train a network of the zoo with the paper's recipe."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal

from reslab.cli.flag_types import worker_count
from reslab.cli.image_limit import add_max_image_pixels
from reslab.engine import PRECISIONS
from reslab.errors import ReslabError
from reslab.kernels import KERNELS
from reslab.train.distributed import shutdown_process_group
from reslab.train.recipes import COMPILE_MODES, TrainConfig
from reslab.train.trainer import train

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a network with the paper's recipe",
        description="Train a network with the paper's CIFAR recipe (Sec. 4.2): SGD momentum "
        "0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, "
        "64k iterations, per-pixel mean, 4-pixel pad + random crop + flip; nets of 110+ "
        "layers warm up at lr 0.01 until training error < 80%. --iterations/--epochs "
        "shorten the run and scale the milestones in proportion. Writes run.json, "
        "metrics.jsonl, TensorBoard events, curves.png, last.pt and best.pt into --out. "
        "Ctrl-C or SIGTERM saves a checkpoint; --resume continues it (with the run's own "
        "settings: `reslab train --resume --out DIR` needs no other flag). --recipe "
        "imagenet (Sec. 3.4): batch 256, lr 0.1 divided by 10 when the validation error "
        "plateaus, up to 600k iterations, shorter side in [256, 480], 224 crop + flip, PCA "
        "lighting, per-pixel mean. Unset flags take the recipe's values.",
    )
    _add_run_options(p)
    _add_engine_options(p.add_argument_group("engine"))
    _add_imagenet_options(p.add_argument_group("imagenet recipe (Sec. 3.4)"))
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   help="no progress bar")
    add_max_image_pixels(p)
    p.set_defaults(func=run)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Net, data, outputs and the optimisation (Sec. 4.2)."""
    p.add_argument("--model", default=None,
                   help="network name (see `reslab models`; default resnet20)")
    p.add_argument("--shortcut", choices=["A", "B", "C"], default=None,
                   help="shortcut option (default: A for CIFAR nets, B for ImageNet nets)")
    p.add_argument("--data", default=None,
                   help="cifar10, cifar100, synthetic, or a PATH: an official-format CIFAR "
                   "folder or .tar.gz, or an image-folder root (train/<class>/*, test/<class>/*)"
                   " or its .tar.gz (default cifar10)")
    p.add_argument("--data-root", default=None,
                   help="where cifar10/cifar100 are looked for and downloaded "
                   "(default $RESLAB_HOME/data, else ~/.cache/reslab/data)")
    p.add_argument("--recipe", choices=["cifar", "imagenet"], default=None,
                   help="training recipe: cifar (Sec. 4.2, the default) or imagenet (Sec. 3.4)")
    p.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    p.add_argument("--iterations", type=int, default=None, help="iterations (paper: 64000)")
    p.add_argument("--epochs", type=float, default=None, help="train for this many epochs instead")
    p.add_argument("--batch-size", type=int, default=None, help="global mini-batch (paper: 128)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (paper: 0.1)")
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="iterations where lr is divided by 10 (default: 50%% and 75%% of the run)")
    p.add_argument("--lr-policy", choices=["step", "plateau"], default=None,
                   help="step: /10 at the milestones (CIFAR default); plateau: /10 when the "
                   "evaluation error stops falling (ImageNet default, Sec. 3.4)")
    p.add_argument("--mean", choices=["per-pixel", "per-channel"], default=None,
                   help="mean subtraction (default per-pixel, as the paper)")
    p.add_argument("--warmup", dest="warmup", action="store_const", const=True, default=None,
                   help="warm up at lr 0.01 until training error < 80%% (default: 110+ layers)")
    p.add_argument("--no-warmup", dest="warmup", action="store_const", const=False)
    p.add_argument("--val-split", type=int, default=None,
                   help="hold out N training images for validation (paper: 5000); evaluate on them")
    p.add_argument("--skip-corrupt", action="store_const", const=True, default=None,
                   help="skip unreadable images with a warning instead of stopping")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate, log and checkpoint every K iterations (default: ~20 per run)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="images per evaluation batch (default 1000 CIFAR, 100 ImageNet)")


def _add_engine_options(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--device", default=None,
                   help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX-512 "
                   "BF16 or AMX; within seed noise of fp32 and 1.5x faster: docs/results.md), "
                   "fp32 on other CPUs, where bf16 is emulated and slow")
    p.add_argument("--channels-last", dest="channels_last", action="store_const", const=True,
                   default=None, help="channels_last memory format (default: on for CUDA and CPU)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False)
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the model")
    p.add_argument("--kernels", choices=KERNELS, default=None,
                   help="auto (default): reslab's fused batch-norm + ReLU (+ residual add) "
                   "CPU kernels where they are faster (CPUs with native bf16, channels_last, "
                   "no --compile), else the eager ops; fused; eager. A run made before this "
                   "option resumes with eager (docs/cpu-profile.md)")
    p.add_argument("--compile-mode", choices=list(COMPILE_MODES), default=None,
                   help="torch.compile mode (with --compile); reduce-overhead captures the "
                   "step with CUDA graphs on a GPU")


def _add_imagenet_options(p: argparse._ArgumentGroup) -> None:
    p.add_argument("--workers", type=worker_count, default=None,
                   help="DataLoader workers decoding images (default min(8, CPUs))")
    p.add_argument("--scale", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="imagenet recipe: shorter side drawn from [MIN, MAX] (paper: 256 480)")
    p.add_argument("--crop", type=int, default=None,
                   help="imagenet recipe: training/test crop size (paper: 224)")
    p.add_argument("--test-resize", type=int, default=None,
                   help="imagenet recipe: shorter side before the centre crop in evaluation "
                   "and for the per-pixel mean (paper: 256)")
    p.add_argument("--lighting", type=float, default=None,
                   help="imagenet recipe: PCA lighting noise std (paper/AlexNet: 0.1; 0 off)")
    p.add_argument("--classes", type=int, default=None, metavar="K",
                   help="imagenet recipe: train and validate on the first K classes "
                   "(sorted names; ImageNet-100 style)")
    p.add_argument("--images-per-class", type=int, default=None, metavar="N",
                   help="imagenet recipe: at most N training images per class")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags describe: the flags that were given, over the recipe's
    values (or, with --resume, over the resumed run's)."""
    if args.epochs is not None and args.iterations is not None:
        raise ReslabError("--epochs and --iterations both set the run's length: give one")
    given = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    if args.resume:
        given.pop("resume", None)
        if args.iterations is not None:  # the new length, over an --epochs run's
            given["epochs"] = None
        out = given.pop("out", None) or f"runs/{args.model or TrainConfig.model}"
        cfg = TrainConfig.for_resume(out, **given)
    else:
        cfg = TrainConfig(**given)
    if args.compile_mode is not None and not cfg.compile:
        raise ReslabError(f"--compile-mode {args.compile_mode} takes effect with --compile: "
                          "add --compile, or drop --compile-mode")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        result = train(cfg)
    finally:
        shutdown_process_group()
    main = os.environ.get("RANK", "0") == "0"
    if result.status == "interrupted":
        if main:
            print(f"stopped at iteration {result.iteration}/{result.iterations}; checkpoint "
                  f"saved to {result.out / 'last.pt'}. Continue with the same command and "
                  "--resume.")
        return 128 + (result.signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    last = result.last or {}
    if last and main:  # one summary line under torchrun
        print(f"done: {result.iteration} iterations in {result.wall_seconds:.0f} s; "
              f"{last.get('eval_split', 'test')} error {100 * last['test_error']:.2f}% "
              f"(best {100 * result.best_error:.2f}%), train error "
              f"{100 * last['train_error']:.2f}%; outputs in {result.out}")
    return 0
