"""Make an ImageNet-layout folder (ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg) from
CIFAR-10 images upscaled, to try the ImageNet experiments (`reslab reproduce table2 ...`)
end to end on a machine without ImageNet. It shows the commands working; its numbers say
nothing about the paper's ImageNet results.

    python examples/cifar_as_imagenet.py --data ../shared/data/cifar10-jpeg75.tar.gz \\
        --out local_data/cifar-imagenet --size 64 --train-per-class 50 --val-per-class 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.io import write_jpeg
from torchvision.transforms.v2 import functional as TF

from reslab.data import load_image_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a CIFAR-10 source, as for `reslab train`")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64, help="shorter side of the written images")
    p.add_argument("--train-per-class", type=int, default=50)
    p.add_argument("--val-per-class", type=int, default=10)
    args = p.parse_args()
    data = load_image_data(args.data, progress=False)
    out = Path(args.out)
    for split, images, labels, per_class in (
            ("train", data.train.images, data.train.labels, args.train_per_class),
            ("val", data.test.images, data.test.labels, args.val_per_class)):
        for k, name in enumerate(data.classes):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            idx = (labels == k).nonzero().flatten()[:per_class]
            for i in idx.tolist():
                # every other image 4:3, so the scale augmentation sees both orientations
                h, w = (args.size, args.size * 4 // 3) if i % 2 else (args.size, args.size)
                img = TF.resize(images[i], [h, w], antialias=True)
                write_jpeg(img.contiguous(), str(folder / f"{i:05d}.jpg"), quality=90)
    n = sum(1 for _ in out.rglob("*.jpg"))
    print(f"wrote {n} images of {len(data.classes)} classes under {out}")


if __name__ == "__main__":
    main()
