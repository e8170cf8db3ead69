"""`reslab models`: list the networks of the paper."""

from __future__ import annotations

import argparse

from reslab.models.registry import list_models, resolve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the networks",
        description="List the networks of the paper: Table 1's ImageNet nets and Table 6's "
        "CIFAR nets, with their plain twins. CIFAR nets take any depth 6n+2 "
        "(resnet8, resnet74, ...); cifar_resnet50 / cifar_resnet152 name the two CIFAR depths "
        "that collide with ImageNet names.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in list_models():
        spec = resolve(name)
        kind = "residual, shortcut " + spec.shortcut if spec.residual else "plain"
        print(f"{name:12s} {spec.family:8s} {spec.depth:5d} layers  {kind}")
    return 0
