"""Training throughput of the CIFAR ResNets per precision and with/without CUDA-graph
capture, and the projected time of the paper's full 64k-iteration schedule (Sec. 4.2).

Each cell trains through `reslab.train.trainer.train` (the real loop: data on the device,
batched augmentation, one host sync per log step) for `--iterations` iterations with two
evaluations; the second interval's images/s (after compilation and warm-up) is the
figure. Then, if ResNet-20's fastest projection is under `--full-under` seconds, it runs
the full schedule with that setting and prints its final test error, beside the
projected time of the conventional DataLoader + PIL loop (benchmarks/train_throughput.py)
on the same device. Prints one line per result; writes results.json into --out.

Usage: python benchmarks/gpu_throughput.py --out DIR [--device cuda] [--data D]
       python benchmarks/gpu_throughput.py --dry-run --out DIR    (tiny, on CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from reslab.atomic_write import atomic_write_json
from reslab.data import load_image_data
from reslab.engine import machine_info, pick_device
from reslab.errors import ReslabError
from reslab.train.recipes import TrainConfig
from reslab.train.schedule import PAPER_ITERATIONS
from reslab.train.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import conventional  # noqa: E402  (the baseline loop, one definition)


def measure(cfg: TrainConfig, data) -> dict:
    """Images/s of the second half of a short run (compilation and warm-up excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(dataclasses.replace(cfg, out=tmp), data)
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in
                   (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    ips = records[-1]["images_per_sec"]
    return {"images_per_sec": ips, "wall_s": wall, "iterations": result.iteration,
            "projected_64k_s": PAPER_ITERATIONS * cfg.batch_size / ips}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for results.json (and the full run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", default="synthetic:50000:10000",
                   help="data for the throughput cells (default synthetic, CIFAR-sized)")
    p.add_argument("--full-data", default=None,
                   help="data of the full-schedule run (the CIFAR-10 JPEG copy)")
    p.add_argument("--models", default="resnet20,resnet56,resnet110")
    p.add_argument("--iterations", type=int, default=400, help="per throughput cell")
    p.add_argument("--budget-s", type=float, default=330,
                   help="stop starting throughput cells after this many seconds")
    p.add_argument("--full-under", type=float, default=300,
                   help="run the full schedule if ResNet-20's projection is under this (s)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes on CPU: checks the script, measures nothing useful")
    args = p.parse_args()
    if args.dry_run:
        args.device, args.data, args.models = "cpu", "synthetic:256:64", "resnet8,resnet14"
        args.iterations, args.full_data = 8, "synthetic:256:64"
        args.full_under = float("inf")  # always exercise the full-run step (16 iterations)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(device)
    print(f"machine: {info.get('gpu') or info['cpu']}; torch {torch.__version__}; "
          f"device {device}", flush=True)
    data = load_image_data(args.data, progress=False)
    batch = 32 if args.dry_run else 128
    precisions = ("fp32", "bf16")
    graph_modes = (False, True) if device.type == "cuda" else (False,)  # graphs need CUDA
    cells, started = [], time.perf_counter()
    for graphs in graph_modes:
        for model in args.models.split(","):
            for precision in precisions:
                label = f"{model} {precision} graphs={'on' if graphs else 'off'}"
                if time.perf_counter() - started > args.budget_s:
                    print(f"{label}: skipped (time budget)", flush=True)
                    continue
                cfg = TrainConfig.cifar(
                    model=model, data=args.data, iterations=args.iterations, batch_size=batch,
                    eval_every=args.iterations // 2, device=str(device), precision=precision,
                    compile=graphs, compile_mode="reduce-overhead" if device.type == "cuda"
                    else "default", progress=False, tensorboard=False)
                try:
                    cell = {"model": model, "precision": precision, "graphs": graphs,
                            **measure(cfg, data)}
                except (ReslabError, RuntimeError) as e:
                    print(f"{label}: failed: {str(e).splitlines()[0]}", flush=True)
                    continue
                cells.append(cell)
                print(f"{label}: {cell['images_per_sec']:9.0f} images/s; full 64k schedule "
                      f"~{cell['projected_64k_s'] / 60:.1f} min", flush=True)
    results = {"machine": info, "cells": cells}
    first = args.models.split(",")[0]
    fastest = min((c for c in cells if c["model"] == first),
                  key=lambda c: c["projected_64k_s"], default=None)
    if fastest is not None and fastest["projected_64k_s"] < args.full_under and args.full_data:
        full_data = load_image_data(args.full_data, progress=False)
        base_ips, _ = conventional(full_data, 8 if args.dry_run else 200, 4, device, 0)
        base_projection = PAPER_ITERATIONS * 128 / base_ips
        iterations = 16 if args.dry_run else PAPER_ITERATIONS
        cfg = TrainConfig.cifar(
            model=first, data=args.full_data, iterations=iterations, batch_size=batch,
            device=str(device), precision=fastest["precision"], compile=fastest["graphs"],
            compile_mode="reduce-overhead" if device.type == "cuda" else "default",
            progress=False, tensorboard=False, out=str(out / "full-run"))
        t0 = time.perf_counter()
        run = train(cfg, full_data)
        results["full_run"] = {
            "model": first, "precision": fastest["precision"], "graphs": fastest["graphs"],
            "iterations": run.iteration, "wall_s": time.perf_counter() - t0,
            "test_error": run.last["test_error"], "best_error": run.best_error,
            "conventional_images_per_sec": base_ips,
            "conventional_projected_64k_s": base_projection}
        r = results["full_run"]
        print(f"full schedule {first} ({r['precision']}, graphs={r['graphs']}): "
              f"{r['iterations']} iterations in {r['wall_s'] / 60:.1f} min, final test error "
              f"{100 * r['test_error']:.2f}% (best {100 * r['best_error']:.2f}%); the "
              f"conventional loop would take ~{base_projection / 60:.1f} min "
              f"({base_ips:.0f} images/s)", flush=True)
    elif fastest is not None:
        print(f"full schedule not run: {first}'s fastest projection is "
              f"{fastest['projected_64k_s'] / 60:.1f} min", flush=True)
    atomic_write_json(out / "results.json", results)
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
