"""Every network of the paper (Table 1, Sec. 4.2) by name."""

from reslab.models.blocks import BasicBlock, Bottleneck, ZeroPadShortcut, make_shortcut
from reslab.models.network import ResNet
from reslab.models.registry import ModelSpec, create_model, list_models, resolve

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ModelSpec",
    "ResNet",
    "ZeroPadShortcut",
    "create_model",
    "list_models",
    "make_shortcut",
    "resolve",
]
