"""Error curves as in Figures 1 and 6: error (%) against iterations (1e4), dashed
training error, bold test error."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

from reslab.atomic_write import atomic_write_bytes


def plot_error_curves(
    runs: Mapping[str, Sequence[Mapping]],
    path: str | os.PathLike,
    title: str = "",
    ylim: tuple[float, float] | None = None,
    ax=None,
) -> None:
    """Plot `{label: metrics records}` (records with iteration, train_error, test_error as
    fractions) into a PNG at `path` (written atomically); or onto `ax` if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, records) in enumerate(runs.items()):
        records = [r for r in records if r.get("test_error") is not None]
        if not records:
            continue
        c = colors[i % len(colors)]
        its = [r["iteration"] / 1e4 for r in records]
        ax.plot(its, [100 * r["train_error"] for r in records], "--", color=c, linewidth=1)
        ax.plot(its, [100 * r["test_error"] for r in records], "-", color=c, linewidth=2,
                label=label)
    ax.set_xlabel("iter. (1e4)")
    ax.set_ylabel("error (%)")
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="dashed: train, bold: test", fontsize=8, title_fontsize=8)
    if own:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())


def plot_detection_curves(records: Sequence[Mapping], path: str | os.PathLike,
                          title: str = "") -> None:
    """A detection run's curves into a PNG at `path` (written atomically): training loss
    (dashed, left axis; the sum of the RPN and detector losses) and mAP@.5 and
    mAP@[.5:.95] (bold, right axis, %) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    its = [r["iteration"] for r in records]
    ax.plot(its, [r.get("train_loss") for r in records], "--", color="C0", linewidth=1,
            label="training loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    right = ax.twinx()
    for key, label, color in (("map50", "mAP@.5", "C1"), ("map", "mAP@[.5:.95]", "C2")):
        pts = [(r["iteration"], 100 * r[key]) for r in records if r.get(key) is not None]
        if pts:
            right.plot(*zip(*pts, strict=True), "-", color=color, linewidth=2, label=label)
    right.set_ylabel("mAP (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
