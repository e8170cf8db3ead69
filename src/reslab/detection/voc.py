"""PASCAL VOC layout: `ROOT/Annotations/<id>.xml`, `ROOT/JPEGImages/<id>.jpg`,
`ROOT/ImageSets/Main/<split>.txt` (Appendix A: VOC 2007/2012, and the 07+12 union).

VOC's pixel coordinates are 1-based and inclusive; they become 0-based continuous xyxy
boxes `(xmin - 1, ymin - 1, xmax, ymax)`, so a box's width is the devkit's
`xmax - xmin + 1`. The 20 classes are VOC's, in the standard order, unless the root has
a `classes.txt` (one name a line: a VOC-layout set of one's own; `write_voc` writes it).
XML is parsed with the standard library's expat, refusing any DOCTYPE or ENTITY
declaration (no entity expansion, no external references); files over 16 MiB are not
annotations and are refused before they are read.
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from xml.parsers import expat

import torch
from torchvision.io import encode_jpeg, encode_png

from reslab.atomic_write import atomic_write_bytes, atomic_write_text
from reslab.data.decode import image_size
from reslab.data.scan import not_a_file, read_regular_file
from reslab.detection.data import (
    MAX_SIDE,
    SKIP_BAD_HINT,
    BoxTally,
    DetectionDataset,
    ImageRecord,
    inside,
    plain_name,
)
from reslab.errors import ReslabError

__all__ = ["VOC_CLASSES", "is_voc_root", "parse_xml", "read_voc", "write_voc"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
CLASSES_FILE = "classes.txt"
MAX_XML_BYTES = 16 << 20
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class _Bad(Exception):
    """One image (or object) that cannot be used: an error, or skipped under skip_bad."""


class _Outside(Exception):
    """A file whose symbolic link leads outside the data set: skipped and counted."""


def is_voc_root(root: Path) -> bool:
    """Whether `root` has VOC's Annotations/ and ImageSets/Main/ folders."""
    return (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir()


def parse_xml(data: bytes, where: str) -> ET.Element:
    """Parse XML bytes into an ElementTree element, refusing DOCTYPE and ENTITY
    declarations (entity bombs, external entities); ReslabError naming `where`."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()

    def refuse(*_: object) -> None:
        raise ReslabError(f"{where} declares a DOCTYPE or ENTITY; annotation files have none "
                          "and reslab does not expand entities: remove the declaration")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(bytes(data), True)
        return builder.close()
    except expat.ExpatError as e:
        raise ReslabError(f"cannot parse {where}: {expat.ErrorString(e.code)} at line "
                          f"{e.lineno}, column {e.offset} (malformed or truncated XML)") from None


def voc_classes(root: Path) -> list[str]:
    """`root/classes.txt`'s names if it has one, else VOC's 20."""
    path = root / CLASSES_FILE
    if not path.exists():
        return list(VOC_CLASSES)
    try:
        names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ReslabError(f"cannot read {path}: {e}") from None
    names = [n for n in names if n]
    dup = sorted({n for n in names if names.count(n) > 1})
    if not names or dup:
        raise ReslabError(f"{path} must list distinct class names, one a line"
                          + (f" ({dup[0]!r} appears twice)" if dup else " (it is empty)"))
    return names


def _split_ids(root: Path, split: str) -> tuple[Path, list[str]]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise ReslabError(f"no split {split!r} in {root}: {path} does not exist (splits "
                          f"there: {', '.join(have) or 'none'})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReslabError(f"cannot read split file {path}: {e}") from None
    ids = [line.split()[0] for line in lines if line.strip()]
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        warnings.warn(f"{path} names {len(ids) - len(unique)} ids more than once; each image "
                      "is used once", stacklevel=3)
    if not unique:
        raise ReslabError(f"split file {path} names no image")
    return path, unique


def _text(elem: ET.Element, tag: str, where: str, default: str | None = None) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise _Bad(f"{where}: <{elem.tag}> has no <{tag}>")
    return child.text.strip()


def _number(elem: ET.Element, tag: str, where: str) -> float:
    text = _text(elem, tag, where)
    try:
        return float(text)
    except ValueError:
        raise _Bad(f"{where}: <{tag}> is {text[:40]!r}, not a number") from None


def _side(size: ET.Element, tag: str, where: str) -> int:
    """<width> or <height> in pixels (0: not given); _Bad unless a finite number <= MAX_SIDE."""
    v = _number(size, tag, where)
    if not (math.isfinite(v) and v <= MAX_SIDE):
        raise _Bad(f"{where}: <{tag}> is {_text(size, tag, where)[:40]!r}, not an image side "
                   f"in pixels (at most {MAX_SIDE:,})")
    return max(int(v), 0)


def _entry(path: Path, kind: str, allowed: Sequence[Path]) -> bool:
    """Whether `path` is a readable regular file inside `allowed` (False: no such entry);
    _Bad for a FIFO, device, broken link, ..., _Outside for a link leading elsewhere."""
    if not os.path.lexists(path):
        return False
    if not path.is_file():
        raise _Bad(f"{path} is {not_a_file(str(path))}, not {kind}")
    if not inside(path, allowed):
        raise _Outside(f"{path} -> {os.path.realpath(path)}")
    return True


def _image_path(root: Path, vid: str, file_name: str | None, allowed: Sequence[Path]) -> Path:
    """JPEGImages/<id>.jpg (.jpeg, .png), as the VOC devkit reads it; `<filename>` only when
    it names that image in another format (same stem)."""
    folder = root / "JPEGImages"
    own = file_name if file_name and plain_name(file_name) and Path(file_name).stem == vid else None
    for n in ([own] if own else []) + [vid + s for s in _IMAGE_SUFFIXES]:
        if _entry(folder / n, "an image file", allowed):
            return folder / n
    raise _Bad(f"image of {vid} is missing: no {folder / (own or vid + '.jpg')} (VOC reads "
               "JPEGImages/<id>.jpg, .jpeg or .png)")


def _read_annotation(root: Path, vid: str, image_id: int, class_index: dict[str, int],
                     tally: BoxTally, skip_bad: bool, allowed: dict[str, list[Path]],
                     renamed: list[str]) -> tuple[Path, ImageRecord]:
    xml = root / "Annotations" / f"{vid}.xml"
    if not _entry(xml, "an annotation file", allowed["Annotations"]):
        raise _Bad(f"split file names {vid} but {xml} does not exist")
    if xml.stat().st_size > MAX_XML_BYTES:
        raise _Bad(f"{xml} is over {MAX_XML_BYTES >> 20} MiB: not an annotation file")
    try:
        tree = parse_xml(read_regular_file(xml, kind="an annotation file", hint=None), str(xml))
    except ReslabError as e:
        raise _Bad(str(e)) from None
    except OSError as e:
        raise _Bad(f"cannot read {xml}: {e.strerror or e}") from None
    where = str(xml)
    file_name = (tree.findtext("filename") or "").strip() or None
    path = _image_path(root, vid, file_name, allowed["JPEGImages"])
    if file_name and Path(file_name).stem != vid:
        renamed.append(f"{xml} names {file_name[:80]!r}")
    size = tree.find("size")
    width = _side(size, "width", where) if size is not None else 0
    height = _side(size, "height", where) if size is not None else 0
    if width <= 0 or height <= 0:  # no size written: take it from the image's header
        try:
            width, height, _ = image_size(read_regular_file(path, hint=None), str(path))
        except (ReslabError, OSError) as e:
            raise _Bad(f"{where} gives no size and {e}") from None
    boxes, labels, difficult = [], [], []
    for obj in tree.iter("object"):
        name = _text(obj, "name", where)
        if name not in class_index:
            shown = f"{where}: unknown class {name[:80]!r}"
            if not skip_bad:
                raise ReslabError(
                    f"{shown} (not one of the {len(class_index)} classes "
                    f"{', '.join(list(class_index)[:4])}, ...); list your classes one a line in "
                    f"{root / CLASSES_FILE}, or pass skip_bad=True (--skip-bad) to skip it")
            tally.skip(shown)
            continue
        box = obj.find("bndbox")
        if box is None:
            raise _Bad(f"{where}: an <object> ({name}) has no <bndbox>")
        x1, y1, x2, y2 = (_number(box, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        labels.append(class_index[name])
        difficult.append(_text(obj, "difficult", where, "0") in ("1", "true", "True"))
    clipped, keep = tally.clean(boxes, width, height, where)
    keep_list = keep.tolist()
    return xml, ImageRecord.build(
        image_id, str(path), width, height, clipped[keep],
        [v for v, k in zip(labels, keep_list, strict=True) if k],
        [v for v, k in zip(difficult, keep_list, strict=True) if k], path=path)


def read_voc(roots: Sequence[Path], split: str, *, skip_bad: bool = False) -> DetectionDataset:
    """The images of `split` in every VOC root, in order (image ids 1, 2, ...). Image `ID`
    is `JPEGImages/ID.jpg` with `Annotations/ID.xml`, as the VOC devkit reads them; an
    XML whose `<filename>` names another image is counted in one warning. Ids with a
    folder part or `..`, and links out of the root (or of the real folder of Annotations/
    or JPEGImages/), are skipped and counted in one warning."""
    roots = [Path(r) for r in roots]
    if not roots:
        raise ReslabError("no VOC root given: pass ROOT or ROOT1,ROOT2")
    classes: list[str] | None = None
    records: list[ImageRecord] = []
    sources: list[Path] = []
    renamed: list[str] = []
    tally = BoxTally()
    for root in roots:
        if not (root / "JPEGImages").is_dir():
            raise ReslabError(f"VOC root {root} has no JPEGImages/ folder")
        names = voc_classes(root)
        if classes is None:
            classes = names
        elif names != classes:
            raise ReslabError(f"VOC roots {roots[0]} and {root} have other classes; a union "
                              "needs the same classes in the same order")
        if (root / CLASSES_FILE).exists():
            sources.append(root / CLASSES_FILE)
        class_index = {n: k + 1 for k, n in enumerate(classes)}
        real = Path(os.path.realpath(root))
        allowed = {sub: [real, Path(os.path.realpath(root / sub))]
                   for sub in ("Annotations", "JPEGImages")}
        split_file, ids = _split_ids(root, split)
        sources.append(split_file)
        for vid in ids:
            if not plain_name(vid):
                tally.leave_out(f"id {vid[:80]!r} in {split_file}")
                continue
            try:
                xml, record = _read_annotation(root, vid, len(records) + 1, class_index,
                                               tally, skip_bad, allowed, renamed)
            except _Outside as e:
                tally.leave_out(str(e))
                continue
            except _Bad as e:
                if not skip_bad:
                    raise ReslabError(f"{e}; {SKIP_BAD_HINT}") from None
                tally.skip(str(e))
                continue
            records.append(record)
            sources.append(xml)
    source = ",".join(str(r) for r in roots)
    if not records:
        raise ReslabError(f"{source} {split}: no usable image (all were skipped"
                          f"{tally.first_reason()})")
    tally.warn(f"{source} {split}")
    if renamed:
        n = len(renamed)
        which = "annotation names" if n == 1 else "annotations name"
        warnings.warn(f"{source} {split}: {n} {which} another image in <filename> than "
                      f"its id's (e.g. {renamed[0]}): "
                      "JPEGImages/<id>.jpg is used, as the VOC devkit does; correct <filename> "
                      "if the boxes are another image's", stacklevel=2)
    assert classes is not None
    return DetectionDataset(classes, records, name=f"voc:{source} {split}", split=split,
                            layout="voc", skip_bad=skip_bad, sources=sources)


def _coordinate(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _annotation_xml(dataset: DetectionDataset, i: int, file_name: str) -> bytes:
    info, target = dataset.image_info(i), dataset.target(i)
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = file_name
    size = ET.SubElement(ann, "size")
    for tag, v in (("width", info["width"]), ("height", info["height"]), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    for box, label, diff in zip(target["boxes"].tolist(), target["labels"].tolist(),
                                target["difficult"].tolist(), strict=True):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = dataset.classes[label - 1]
        ET.SubElement(obj, "difficult").text = "1" if diff else "0"
        bnd = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = box
        for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bnd, tag).text = _coordinate(v)
    ET.indent(ann)
    return ET.tostring(ann, encoding="utf-8", xml_declaration=False) + b"\n"


def encode_image(image: torch.Tensor, image_format: str) -> bytes:
    """uint8 (3, H, W) as JPEG (quality 95) or PNG file bytes."""
    data = encode_png(image) if image_format == "png" else encode_jpeg(image, quality=95)
    return data.numpy().tobytes()


def write_voc(dataset: DetectionDataset, root: str | os.PathLike, split: str | None = None,
              *, image_format: str = "jpg") -> Path:
    """Write `dataset` as a VOC-layout folder (images, XML, `ImageSets/Main/<split>.txt`,
    and `classes.txt` unless the classes are VOC's 20); ids are the image files' stems.
    Several splits can go to one root (their ids must differ). Returns the root."""
    if image_format not in ("jpg", "png"):
        raise ReslabError(f"image_format must be jpg or png, got {image_format!r}")
    root = Path(root)
    split = split or dataset.split or "trainval"
    if tuple(dataset.classes) != VOC_CLASSES:
        existing = voc_classes(root) if (root / CLASSES_FILE).exists() else None
        if existing is not None and existing != dataset.classes:
            raise ReslabError(f"{root / CLASSES_FILE} lists other classes than the data set's")
        atomic_write_text(root / CLASSES_FILE, "\n".join(dataset.classes) + "\n")
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    ids = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        for i in range(len(dataset)):
            vid = Path(dataset.image_info(i)["file_name"]).stem
            file_name = f"{vid}.{image_format}"
            atomic_write_bytes(root / "JPEGImages" / file_name,
                               encode_image(dataset.image(i), image_format))
            atomic_write_bytes(root / "Annotations" / f"{vid}.xml",
                               _annotation_xml(dataset, i, file_name))
            ids.append(vid)
    atomic_write_text(root / "ImageSets" / "Main" / f"{split}.txt", "\n".join(ids) + "\n")
    return root
