"""A run's record: run.json, metrics.jsonl, checkpoints, TensorBoard, curves.png and the
progress bar, behind one object the loop calls (docs/architecture.md).

Only rank 0 writes (`RunLog(..., main=False)` keeps every method a no-op but the
checkpoint's in-memory bookkeeping). Every file is written atomically; metrics.jsonl holds
strict JSON (a non-finite value is refused, never written as NaN/Infinity).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.analysis.curves import plot_error_curves
from reslab.atomic_write import atomic_write_json, atomic_write_text
from reslab.errors import ReslabError
from reslab.train.checkpoint import Checkpoint

SCALARS = ("train_loss", "train_error", "test_loss", "test_error", "test_top5_error", "lr",
           "images_per_sec")


def read_metrics(path: str | Path, upto: int | None = None) -> list[dict]:
    """metrics.jsonl records (those with iteration <= upto, if given). A line that is not
    a JSON record (a hand edit, a foreign tool) is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and isinstance(record.get("iteration"), int)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            warnings.warn(f"{path}:{n} is not a metrics record; skipped", stacklevel=2)
            continue
        if upto is None or record["iteration"] <= upto:
            records.append(record)
    return records


def is_finite_model(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (a diverged run's are not)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers())
               if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


def precision_history(run_json: Path, precision: str, start: int) -> list[dict]:
    """run.json's `precision_history`: [{"iteration", "precision"}, ...], one entry per
    change. A resume (`start` > 0) extends the previous run.json's list (or its single
    `precision`) with {start, precision} when the precision changes, so a run trained
    partly in fp32 and partly in bf16 says so."""
    history: list[dict] = []
    if start > 0:
        try:
            before = json.loads(run_json.read_text())
        except (OSError, ValueError):
            before = None
        if isinstance(before, dict):
            old = before.get("precision_history")
            if isinstance(old, list) and all(isinstance(h, dict) for h in old):
                history = [h for h in old if isinstance(h.get("iteration"), int)
                           and h["iteration"] < start]
            elif isinstance(before.get("precision"), str):
                history = [{"iteration": 0, "precision": before["precision"]}]
    if not history or history[-1].get("precision") != precision:
        history.append({"iteration": start, "precision": precision})
    return history


class RunLog:
    """Writes what a run produces into `out`; `on_eval` is the loop's one call per
    evaluation, `on_log` its one call per log step. What a record holds is the task's: a
    subclass (detection's) sets `scalars` and `divergence_hint` and overrides `summary` and
    `plot_curves`."""

    scalars: tuple[str, ...] = SCALARS  # a record's values written to TensorBoard
    #: What to try after a divergence: flags of the command that ran (`reslab train`'s).
    divergence_hint = "Try a lower --lr (or --warmup)."

    def __init__(self, out: Path, info: dict[str, Any], records: list[dict], title: str,
                 total: int, start: int, main: bool = True, progress: bool = True,
                 tensorboard: bool = True) -> None:
        self.out, self.info, self.records, self.title, self.main = out, info, records, title, main
        self.last_saved: int | None = None  # iteration of the newest finite last.pt
        self.writer = self.bar = None
        if not main:
            return
        info["precision_history"] = precision_history(out / "run.json", info["precision"],
                                                      start)
        atomic_write_json(out / "run.json", info)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # heavy: only when used

                self.writer = SummaryWriter(log_dir=str(out))
            except ImportError:
                self.writer = None
        if progress:
            from tqdm import tqdm  # late: only with a progress bar

            self.bar = tqdm(total=total, initial=start, desc=info["model_spec"]["name"],
                            unit="it", dynamic_ncols=True, file=sys.stderr)

    def write(self, message: str) -> None:
        """A line for the user, above the progress bar (or on stderr)."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def on_log(self, iteration: int, loss: float, error: float, lr: float, ips: float) -> None:
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}", err=f"{100 * error:.1f}%", lr=f"{lr:g}",
                                 ips=f"{ips:.0f}")

    def on_eval(self, record: dict, checkpoint: Checkpoint, improved: bool) -> None:
        """Append the record to metrics.jsonl, write best.pt (if improved) and last.pt,
        TensorBoard scalars and curves.png. A write that fails (a full disk) is one line
        that also says which of these files this evaluation did write."""
        self.records.append(record)
        if not self.main:
            return
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records)
        written: list[str] = []
        try:
            atomic_write_text(self.out / "metrics.jsonl", text)
            written.append("metrics.jsonl (with this record)")
            if improved:
                checkpoint.save(self.out / "best.pt")
                written.append("best.pt")
            self.save_last(checkpoint)
        except ReslabError as e:  # e.g. a full disk: say what this evaluation did write
            if not written:
                raise
            raise ReslabError(f"{e}; this evaluation (iteration {record['iteration']}) did "
                              f"write {' and '.join(written)} in {self.out}") from e.__cause__
        if self.writer is not None:
            for key in self.scalars:
                if record.get(key) is not None:
                    self.writer.add_scalar(key, record[key], record["iteration"])
            self.writer.flush()
        self.plot_curves()
        self.write(self.summary(record))

    def plot_curves(self) -> None:
        """curves.png: training (dashed) and test (bold) error against iterations."""
        plot_error_curves({self.info["model_spec"]["name"]: self.records},
                          self.out / "curves.png", title=self.title)

    def summary(self, record: dict) -> str:
        """The line written for the user at each evaluation."""
        return (f"iter {record['iteration']}: train err {100 * record['train_error']:.2f}% "
                f"loss {record['train_loss']:.3f} | {record['eval_split']} err "
                f"{100 * record['test_error']:.2f}% loss {record['test_loss']:.3f} | "
                f"{record['images_per_sec']:.0f} img/s")

    def save_last(self, checkpoint: Checkpoint) -> None:
        if self.main:
            checkpoint.save(self.out / "last.pt")
        self.last_saved = checkpoint.iteration

    def diverged(self, what: str, iteration: int) -> ReslabError:
        """The error for a non-finite loss or weights: names the last finite checkpoint."""
        last = self.out / "last.pt"
        good = (f"{last} (iteration {self.last_saved}) holds the last finite weights"
                if self.last_saved is not None else
                "no checkpoint of this run was written" if not last.exists() else
                f"{last} (from before this session) is intact")
        return ReslabError(f"{what} at iteration {iteration}; stopped without saving the "
                           f"diverged weights. {good}. {self.divergence_hint}")

    def close(self, status: str, iteration: int, wall: float, best_error: float | None) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.main:
            final = self.records[-1] if self.records else None
            self.info.update({"status": status, "finished_iteration": iteration,
                              "wall_seconds": wall, "final": final, "best_error": best_error,
                              "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            atomic_write_json(self.out / "run.json", self.info)

