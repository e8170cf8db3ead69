"""torch.hub entry points: every network of the paper, with reslab's trained weights.

    model = torch.hub.load("path/to/reslab", "resnet20", source="local",
                           weights="cifar10-jpeg75")
    torch.hub.help("owner/reslab:main", "resnet20")

One entry point per network of `reslab.list_models()` (Table 1's ImageNet nets and
Sec. 4.2's CIFAR nets, with their plain twins); each takes `create_model`'s options
(num_classes, shortcut, stride_in_1x1) and `weights`, a name of the registry
(`reslab weights`, docs/weights.md), checked by sha256. A model with weights carries its
registry entry as `model.reslab_weights`; `model.reslab_weights.preprocess()` is the input
normalisation (the training set's per-pixel mean, Sec. 4.2). A clone works without
installing reslab (its `src/` is put on the path); an installed reslab is used otherwise.
"""

import os as _os
import sys as _sys

dependencies = ["torch", "torchvision", "safetensors"]

_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _os.path.isdir(_os.path.join(_SRC, "reslab")) and _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from reslab.models.registry import create_model as _create_model  # noqa: E402
from reslab.models.registry import list_models as _list_models  # noqa: E402


def _entry_point(name: str):
    def entry(weights=None, *, num_classes=None, shortcut=None, stride_in_1x1=None):
        return _create_model(name, num_classes=num_classes, shortcut=shortcut,
                             stride_in_1x1=stride_in_1x1, weights=weights)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{name} of the paper (He et al., 2015), built by reslab.create_model({name!r}).\n\n"
        "Args:\n"
        "    weights: a registry name for this network, e.g. 'cifar10-jpeg75' (`reslab "
        "weights` lists them); None for random initialisation (the paper's, Sec. 3.4).\n"
        "    **kwargs: num_classes, shortcut ('A'/'B'/'C'), stride_in_1x1."
    )
    return entry


for _name in _list_models():
    globals()[_name] = _entry_point(_name)
del _entry_point, _name  # torch.hub.load(repo, "_entry_point") would return a function
