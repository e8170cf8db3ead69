"""Names -> networks: the front door to every network of the paper.

Names are the paper's: `resnet18..152` and `plain18..152` are the ImageNet nets of
Table 1; `resnetD` / `plainD` with D = 6n+2 (20, 32, 44, 56, 110, 1202, or any other
such as 8 or 74) are the CIFAR nets of Sec. 4.2. Two CIFAR depths collide with ImageNet
names (50 = 6*8+2 and 152 = 6*25+2); `cifar_resnet50` / `cifar_plain152` name those,
and the `cifar_` prefix is accepted for any CIFAR depth.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from reslab.errors import ReslabError
from reslab.models.blocks import SHORTCUT_OPTIONS
from reslab.models.cifar import CIFAR_DEPTHS, cifar_resnet, is_cifar_depth
from reslab.models.imagenet import IMAGENET_CONFIGS, imagenet_resnet

_NAME = re.compile(r"^(cifar_)?(resnet|plain)(\d+)$")

#: The most classes a network may have: far beyond the paper's data sets (and
#: ImageNet-21k's 21,841), and a guard against a mistyped or forged value asking for a
#: terabyte-sized last layer.
MAX_NUM_CLASSES = 100_000

#: The deepest network reslab builds: headroom over the paper's deepest, the 1202-layer
#: CIFAR ResNet (Sec. 4.2, 19.4M parameters), and a guard against a forged or mistyped
#: depth (resnet600002) building until memory runs out.
MAX_DEPTH = 2000


@dataclass(frozen=True)
class ModelSpec:
    """What a model name and its options resolve to; stored in checkpoints."""

    name: str
    family: str  # "imagenet" or "cifar"
    depth: int
    residual: bool
    num_classes: int
    shortcut: str | None  # "A"/"B"/"C", None for plain nets
    stride_in_1x1: bool

    def to_dict(self) -> dict:
        return asdict(self)


def list_models() -> list[str]:
    """The canonical names: Table 1's ImageNet nets and Table 6's CIFAR nets, with plain twins."""
    names = [f"resnet{d}" for d in IMAGENET_CONFIGS] + [f"plain{d}" for d in IMAGENET_CONFIGS]
    names += [f"resnet{d}" for d in CIFAR_DEPTHS]
    names += [f"plain{d}" for d in CIFAR_DEPTHS if d != 1202]
    return names


def _unknown(name: str, why: str = "") -> ReslabError:
    close = difflib.get_close_matches(name.lower(), list_models(), n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ReslabError(
        f"unknown model {name!r}{why}.{hint} `reslab models` lists them; CIFAR nets take any "
        "depth 6n+2 (resnet8, resnet74, ...)."
    )


def resolve(
    name: str,
    num_classes: int | None = None,
    shortcut: str | None = None,
    stride_in_1x1: bool | None = None,
) -> ModelSpec:
    """Parse a model name and fill in the paper's defaults; raise ReslabError if invalid."""
    if not isinstance(name, str):
        raise ReslabError(f"model name must be a string, got {type(name).__name__}")
    m = _NAME.match(name.strip().lower())
    if not m:
        raise _unknown(name)
    cifar_prefix, kind, depth_s = m.groups()
    depth = int(depth_s) if len(depth_s) <= 6 else MAX_DEPTH + 1  # int() of 5000 digits fails
    if depth > MAX_DEPTH:
        raise ReslabError(f"{name.strip()[:40]!r} is too deep: reslab builds nets of at most "
                          f"{MAX_DEPTH:,} layers (the paper's deepest has 1202)")
    residual = kind == "resnet"
    if not cifar_prefix and depth in IMAGENET_CONFIGS:
        family = "imagenet"
    elif is_cifar_depth(depth):
        family = "cifar"
    else:
        raise _unknown(
            name,
            f" (depth {depth} is neither an ImageNet depth {tuple(IMAGENET_CONFIGS)} "
            "nor a CIFAR depth of the form 6n+2)",
        )
    if num_classes is None:
        num_classes = 1000 if family == "imagenet" else 10
    if (not isinstance(num_classes, int) or isinstance(num_classes, bool)
            or not 1 <= num_classes <= MAX_NUM_CLASSES):
        raise ReslabError(
            f"num_classes must be an integer from 1 to {MAX_NUM_CLASSES:,}, got {num_classes!r}"
        )
    if residual:
        if shortcut is None:
            shortcut = "B" if family == "imagenet" else "A"
        shortcut = str(shortcut).upper()
        if shortcut not in SHORTCUT_OPTIONS:
            raise ReslabError(f"shortcut must be one of A, B, C, got {shortcut!r}")
    elif shortcut is not None:
        raise ReslabError(f"{name} is a plain net: it has no shortcuts (drop shortcut=...)")
    canonical = f"{'cifar_' if cifar_prefix and depth in IMAGENET_CONFIGS else ''}{kind}{depth}"
    return ModelSpec(
        name=canonical,
        family=family,
        depth=depth,
        residual=residual,
        num_classes=num_classes,
        shortcut=shortcut,
        stride_in_1x1=True if stride_in_1x1 is None else bool(stride_in_1x1),
    )


def spec_from_dict(d: Any) -> ModelSpec:
    """The ModelSpec that a `ModelSpec.to_dict()` read back from a file describes, checked
    before anything is built: a known name, `num_classes` an integer from 1 to
    MAX_NUM_CLASSES, shortcut A/B/C (None for plain nets), true/false flags that are
    booleans, and family/depth/residual agreeing with the name. ReslabError naming the
    problem otherwise."""
    if not isinstance(d, Mapping):
        raise ReslabError(f"a model spec must be a dict, got {type(d).__name__}")
    name = d.get("name")
    if not isinstance(name, str):
        raise ReslabError(f"the model spec has no model name (name: {name!r:.40})")
    for key in ("residual", "stride_in_1x1"):
        if d.get(key) is not None and not isinstance(d[key], bool):
            raise ReslabError(f"the model spec's {key} must be true or false, got {d[key]!r:.40}")
    num_classes = d.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(
            num_classes, bool) or not 1 <= num_classes <= MAX_NUM_CLASSES):
        raise ReslabError(f"the model spec's num_classes must be an integer from 1 to "
                          f"{MAX_NUM_CLASSES:,}, got {num_classes!r:.40}")
    shortcut = d.get("shortcut")
    if shortcut is not None and shortcut not in SHORTCUT_OPTIONS:
        raise ReslabError(f"the model spec's shortcut must be A, B, C or null, got "
                          f"{shortcut!r:.40}")
    residual = d.get("residual", True)
    spec = resolve(name, num_classes, shortcut if residual else None, d.get("stride_in_1x1"))
    for key in ("family", "depth", "residual"):
        if key in d and (d[key] != getattr(spec, key) or type(d[key]) is not type(
                getattr(spec, key))):
            raise ReslabError(f"the model spec is inconsistent: {spec.name} has {key} "
                              f"{getattr(spec, key)!r}, the spec says {d[key]!r:.40}")
    return spec


def build(spec: ModelSpec) -> nn.Module:
    """Build the network a ModelSpec describes; the spec is kept as `model.reslab_spec`."""
    shortcut = spec.shortcut if spec.residual else None
    if spec.family == "imagenet":
        model = imagenet_resnet(spec.depth, spec.num_classes, shortcut, spec.stride_in_1x1)
    else:
        model = cifar_resnet(spec.depth, spec.num_classes, shortcut)
    model.reslab_spec = spec
    return model


def create_model(
    name: str,
    num_classes: int | None = None,
    shortcut: str | None = None,
    stride_in_1x1: bool | None = None,
    weights: str | None = None,
) -> nn.Module:
    """Build a network of the paper by name.

    Args:
        name: e.g. "resnet20", "plain56", "resnet50", "resnet1202", "resnet74".
        num_classes: default 1000 (ImageNet nets) or 10 (CIFAR nets).
        shortcut: "A", "B" or "C" for residual nets; defaults to A for CIFAR nets and B
            for ImageNet nets, as the paper uses them. Must be None for plain nets.
        stride_in_1x1: bottleneck stride placement; True (default) is the paper's,
            False is torchvision's. No effect on basic-block nets.
        weights: a name of reslab's weights registry for this network, e.g.
            "cifar10-jpeg75" (or "cifar10-jpeg75:resnet20"); `reslab weights` lists them
            and docs/weights.md describes them. Checked by sha256; options must agree.
    """
    if weights is not None:
        from reslab.models.weights import model_with_weights  # reads files: only when asked

        return model_with_weights(name, weights, num_classes, shortcut, stride_in_1x1)
    return build(resolve(name, num_classes, shortcut, stride_in_1x1))
