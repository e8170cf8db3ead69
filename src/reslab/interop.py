"""Weights in from the ecosystem, models out to it.

In: reslab checkpoints, plain state_dicts (torchvision and timm ResNets use our parameter
names), dicts wrapping one under `state_dict` / `model` / `model_state_dict`, `module.`
prefixes (DataParallel), `.safetensors` files, and checkpoints of akamaster's
pytorch_resnet_cifar10 (the widely used CIFAR ResNets of Sec. 4.2, option A shortcuts).
Nothing is ever unpickled beyond tensors and plain values (`weights_only=True`).

Out: ONNX, TorchScript and safetensors (`export_model`), each written atomically.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.atomic_write import atomic_write, atomic_write_bytes, atomic_write_via_path
from reslab.errors import ReslabError
from reslab.models.blocks import ZeroPadShortcut
from reslab.models.registry import build, spec_from_dict
from reslab.models.weights import WEIGHTS_FORMAT, as_checkpoint, get_weights, is_weights_name
from reslab.train.checkpoint import load_failure

CHECKPOINT_FORMAT = "reslab-checkpoint-v1"
SAFETENSORS_FORMAT = "reslab-safetensors-v1"
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}

#: The largest input side (pixels) reslab feeds a net, in an export or a test: 6.4x the
#: paper's largest test scale (640, Table 4); a mistyped 100000 would ask for 143 GB.
MAX_INPUT_SIDE = 4096

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.", "model.")

Source = str | os.PathLike | Mapping[str, Any]


# ----------------------------------------------------------------------------- reading


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint or weights file safely: safetensors, or `torch.load(weights_only=True)`.

    A safetensors file comes back as a state_dict with, when reslab wrote it, its
    metadata under the key `"__metadata__"` (a dict of strings); a reslab weights file
    (`reslab.models.weights`) as a checkpoint. A registry name `NAME:MODEL` (e.g.
    cifar10-jpeg75:resnet20) that is not a file reads that entry's file, sha256-checked.
    """
    if is_weights_name(os.fspath(path)) and not os.path.exists(path):
        return get_weights(os.fspath(path)).read()
    path = Path(path)
    if not path.is_file():
        raise ReslabError(f"weights file not found: {path}")
    if _is_safetensors(path):
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            state = dict(load_file(str(path), device="cpu"))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ReslabError(f"cannot read {path} as safetensors: {e}") from None
        if meta.get("format") == WEIGHTS_FORMAT:
            return as_checkpoint(state, meta, path)
        if meta:
            state["__metadata__"] = dict(meta)
        return state
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (code in the pickle), corrupt zip, EOF, ...
        raise ReslabError(
            f"cannot read {path}: not a weights-only PyTorch checkpoint or safetensors file "
            f"({load_failure(e)}); re-save the state_dict with "
            "torch.save(model.state_dict(), path)."
        ) from None
    if not isinstance(obj, Mapping):
        raise ReslabError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)


def _unwrap(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict inside a reslab checkpoint or a {state_dict|model|...: ...} wrapper."""
    for _ in range(3):
        if obj.get("format") == CHECKPOINT_FORMAT and isinstance(obj.get("model"), Mapping):
            obj = obj["model"]
            continue
        inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if inner:
            obj = obj[inner[0]]
            continue
        break
    state = {k: v for k, v in obj.items() if k != "__metadata__"}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or bad:
        raise ReslabError(
            "not a state_dict: expected a dict of tensors"
            + (f", found non-tensor entries {bad[:4]}" if bad else " (it is empty)")
            + "; a checkpoint should hold one under 'state_dict', 'model' or 'model_state_dict'"
        )
    return dict(state)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` (DataParallel/DDP), `_orig_mod.` (torch.compile), `model.` prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(source: Source) -> dict[str, torch.Tensor]:
    """A plain state_dict (names as in the checkpoint, prefixes stripped) from any source."""
    obj = read_file(source) if isinstance(source, str | os.PathLike) else source
    if not isinstance(obj, Mapping):
        raise ReslabError(
            f"weights source must be a path or a dict, got {type(source).__name__}"
        )
    return _strip_prefixes(_unwrap(obj))


# ------------------------------------------------------- pytorch_resnet_cifar10 (akamaster)


def _is_akamaster(state: Mapping[str, torch.Tensor]) -> bool:
    return "linear.weight" in state and "fc.weight" not in state


def _from_akamaster(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a pytorch_resnet_cifar10 checkpoint to our names and channel order.

    Their option A pads the identity with p = out//4 zero channels on *each* side
    (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`); our `ZeroPadShortcut` keeps the
    identity first and appends zeros (fb.resnet.torch). We keep `perm`, the residual
    stream's channel order (our channel k = their channel perm[k]); at each zero-padding
    transition in -> out it becomes perm[k] = p + perm_prev[k] for k < in, then their
    zero channels in increasing order. Every conv reading the stream has its input
    channels permuted, every block's last conv/BN its output channels, and the fc its
    input features. The outputs of our unchanged model then equal theirs exactly.
    """

    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k = re.sub(r"^linear\.", "fc.", k)
        k = re.sub(r"\.shortcut\.(\d+)\.", r".downsample.\1.", k)  # their option B
        out[k] = v
    stages = getattr(model, "stage_names", None)
    if not stages:
        return out
    width = model.conv1.out_channels
    perm = torch.arange(width)
    for stage_name in stages:
        for i, block in enumerate(getattr(model, stage_name)):
            pre = f"{stage_name}.{i}."
            _permute(out, pre + "conv1.weight", perm, dim=1)
            if block.downsample is not None:
                _permute(out, pre + "downsample.0.weight", perm, dim=1)
                new = torch.arange(block.downsample[0].out_channels)
            elif isinstance(block.shortcut, ZeroPadShortcut):
                c_in, c_out = block.shortcut.in_channels, block.shortcut.out_channels
                p = (c_out - c_in) // 2
                kept = perm + p
                rest = torch.tensor(
                    [c for c in range(c_out) if c not in set(kept.tolist())], dtype=torch.long
                )
                new = torch.cat([kept, rest])
            elif block.shortcut is not None:  # identity
                new = perm
            else:  # plain block: a fresh stream
                new = None
            last = "conv3" if hasattr(block, "conv3") else "conv2"
            bn = "bn3" if last == "conv3" else "bn2"
            if new is not None:
                _permute(out, pre + f"{last}.weight", new, dim=0)
                for t in ("weight", "bias", "running_mean", "running_var"):
                    _permute(out, pre + f"{bn}.{t}", new, dim=0)
                perm = new
            else:
                perm = torch.arange(getattr(block, last).out_channels)
    _permute(out, "fc.weight", perm, dim=1)
    return out


def _permute(state: dict[str, torch.Tensor], key: str, perm: torch.Tensor, dim: int) -> None:
    t = state.get(key)
    if t is None or t.dim() <= dim or t.shape[dim] != len(perm):
        return  # missing or misfit: reported by the key/shape check afterwards
    state[key] = t.index_select(dim, perm)


# ----------------------------------------------------------------------------- loading


def _summary(keys: list[str], what: str, n: int = 5) -> str:
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return f"{len(keys)} {what} ({', '.join(keys[:n])}{more})"


def _fit(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check `state` against the model's keys and shapes; ReslabError naming every misfit."""
    own = model.state_dict()
    # Old checkpoints (PyTorch < 0.4, e.g. pytorch_resnet_cifar10's) lack BN's
    # num_batches_tracked: keep ours. It carries no information for inference.
    state = {k: v for k, v in state.items() if k in own or not k.endswith("num_batches_tracked")}
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: weights {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        spec = getattr(model, "reslab_spec", None)
        name = spec.name if spec is not None else type(model).__name__
        parts = []
        if missing:
            parts.append(_summary(missing, "missing keys"))
        if unexpected:
            parts.append(_summary(unexpected, "unexpected keys"))
        if mismatched:
            parts.append(_summary(mismatched, "shape mismatches", 3))
        raise ReslabError(
            f"weights do not fit {name}: " + "; ".join(parts)
            + ". Were they saved from another architecture, shortcut option or number of "
            "classes (--num-classes)?"
        )
    return state


def _check_finite(state: Mapping[str, torch.Tensor], where: str | os.PathLike) -> None:
    """ReslabError naming `where` if a floating-point tensor holds NaN or inf: such weights
    would be scored, predicted and exported as if they were a model (training never saves
    them)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ReslabError(f"{where} holds non-finite weights (NaN or inf) in "
                          f"{_summary(bad, 'tensor(s)', 3)}: refusing to use them (a "
                          "diverged or damaged file; take an earlier checkpoint)")


def load_weights(model: nn.Module, source: Source, *,
                 where: str | os.PathLike | None = None) -> nn.Module:
    """Load weights into `model` (in place) and return it.

    `source` is a path (reslab checkpoint, `torch.save`d state_dict or wrapper,
    `.safetensors`) or an in-memory state_dict/checkpoint dict. torchvision and timm
    ResNet state_dicts load as they are (same names; for bottleneck nets build the model
    with `stride_in_1x1=False`, their stride placement, Sec. 3.3 / Table 1); akamaster's
    pytorch_resnet_cifar10 checkpoints are converted (see `_from_akamaster`).

    Raises ReslabError if the source cannot be read, does not fit the model or holds NaN
    or inf weights (the message names `where`, default: the path, or "the weights").
    """
    if where is None:
        where = source if isinstance(source, str | os.PathLike) else "the weights"
    state = read_state_dict(source)
    if _is_akamaster(state):
        state = _from_akamaster(model, state)
    state = _fit(model, state)
    _check_finite(state, where)
    model.load_state_dict(state, strict=True)
    return model


def _spec_from_dict(d: Any, where: str | os.PathLike) -> nn.Module:
    """Build the model a spec read from a file describes, after checking the spec (an
    absurd num_classes would otherwise allocate terabytes). A detector's checkpoint (issue
    16) is named as such rather than as an unknown model."""
    if isinstance(d, Mapping) and d.get("task") == "detection":
        raise ReslabError(f"{where} is a detector checkpoint, not a classifier: use "
                          "`reslab detect eval` / `reslab detect predict` with it")
    try:
        spec = spec_from_dict(d)
    except ReslabError as e:
        raise ReslabError(f"{where} has an invalid model_spec: {e}") from None
    return build(spec)


def model_from_checkpoint(
    path: str | os.PathLike | Mapping[str, Any], *, where: str | os.PathLike | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a reslab checkpoint (or reslab-exported .safetensors) describes.

    `path` is a file, or what `read_file` already read from one. Returns `(model,
    checkpoint)` with the weights loaded; `checkpoint` is the whole dict (preprocess,
    classes, iteration, ...), for a safetensors file `{"model_spec": ...}`. Errors name
    `where` (default: the path, or "the checkpoint").
    """
    obj = path if isinstance(path, Mapping) else read_file(path)
    if isinstance(path, Mapping):
        path = where or "the checkpoint"
    meta = obj.get("__metadata__")
    if isinstance(meta, Mapping) and "model_spec" in meta:
        try:
            ckpt: dict[str, Any] = {"model_spec": json.loads(meta["model_spec"])}
        except json.JSONDecodeError as e:
            raise ReslabError(f"{path}: invalid model_spec metadata: {e}") from None
    elif obj.get("format") == CHECKPOINT_FORMAT and isinstance(obj.get("model_spec"), Mapping):
        ckpt = obj
    else:
        raise ReslabError(
            f"{path} is not a reslab checkpoint (no model_spec): name the model "
            "(e.g. `reslab export resnet50 --weights ...`) or use load_weights(model, path)"
        )
    model = _spec_from_dict(ckpt["model_spec"], path)
    load_weights(model, obj, where=path)
    return model, ckpt


# ----------------------------------------------------------------------------- export


def _spec_json(model: nn.Module) -> str | None:
    spec = getattr(model, "reslab_spec", None)
    return json.dumps(spec.to_dict()) if spec is not None else None


def check_export_target(path: str | os.PathLike, flag: str = "") -> None:
    """ReslabError unless `path` is new or a regular file (a link to one counts): an export
    replaces what is there, and a device (/dev/null), FIFO or socket must never be replaced
    by a file. `flag` (e.g. "--out ") prefixes the path in the message."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ReslabError(f"{flag}{path} is not a regular file (a device, FIFO or socket): "
                          "export to a new file or a regular one")


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    input_size: int = 224,
) -> Path:
    """Export `model` (eval mode) to ONNX, TorchScript or safetensors at `path`, atomically.

    ONNX and TorchScript take an (N, C, `input_size`, `input_size`) input with a dynamic
    batch dimension N; safetensors holds the state_dict with the model spec as JSON
    metadata (`model_spec`), so `model_from_checkpoint` can rebuild it. Refused: a `path`
    that is a folder or not a regular file (`check_export_target`), an `input_size`
    outside [1, MAX_INPUT_SIDE], and a model with NaN or inf weights.
    """
    if fmt not in EXPORT_FORMATS:
        raise ReslabError(
            f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    if not 1 <= input_size <= MAX_INPUT_SIDE:
        raise ReslabError(f"the input size must be from 1 to {MAX_INPUT_SIDE} pixels, got "
                          f"{input_size}")
    path = Path(path)
    if path.is_dir():  # before the (slow) tracing; the write would refuse it as well
        raise ReslabError(f"{path} is a folder: export to a file, e.g. "
                          f"{path / ('model' + EXPORT_SUFFIXES[fmt])}")
    check_export_target(path)
    own = getattr(model, "reslab_spec", None)
    _check_finite(model.state_dict(), f"the model{f' ({own.name})' if own else ''}")
    was_training = model.training
    model.eval()
    try:
        if fmt == "safetensors":
            from safetensors.torch import save

            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            meta = {"format": SAFETENSORS_FORMAT}
            spec = _spec_json(model)
            if spec is not None:
                meta["model_spec"] = spec
            return atomic_write_bytes(path, save(state, metadata=meta))
        in_ch = getattr(model, "in_channels", 3)
        # Batch 2, not 1: exporters specialise a size-1 dimension to a constant.
        example = torch.randn(2, in_ch, input_size, input_size)
        try:
            with torch.no_grad():
                model(example)
        except RuntimeError as e:
            raise ReslabError(f"the model cannot take a {input_size}x{input_size} input: {e}") \
                from None
        if fmt == "torchscript":
            with warnings.catch_warnings():
                # jit's deprecation warning; TracerWarning on forward's input-shape check
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, example)

            def save_traced(f: Any) -> None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # jit.save deprecation
                    torch.jit.save(traced, f)

            return atomic_write(path, save_traced)
        return atomic_write_via_path(path, lambda tmp: _export_onnx(model, example, tmp))
    finally:
        model.train(was_training)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: str) -> None:
    """ONNX with a dynamic batch dimension.

    We use the torch.export-based ("dynamo") exporter, the default and maintained path in
    torch >= 2.9 (the TorchScript-based one is deprecated): a `Dim("batch")` in
    `dynamic_shapes` gives a symbolic batch axis, and the graph is a plain conv/BN/ReLU
    graph that onnxruntime runs at any batch size. Should it fail (e.g. an older torch or
    missing onnxscript) we fall back to the TorchScript exporter with `dynamic_axes`, which
    gives the same graph for these nets.
    """
    names = {"input_names": ["input"], "output_names": ["logits"]}
    try:
        import onnxscript  # noqa: F401  (required by the dynamo exporter)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), path, dynamo=True, verbose=False, external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},), **names,
            )
        return
    except Exception as first:  # noqa: BLE001 - fall back below, re-raise if that fails too
        error = first
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), path, dynamo=False, opset_version=17,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names,
            )
    except Exception as e:
        raise ReslabError(f"ONNX export failed: {error}; fallback exporter: {e}") from None
