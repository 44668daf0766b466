"""MediaPipe Face Landmarker blendshape scores for a folder or a list of face images.

This file is also a standalone script, meant to run in a separate environment that has
``mediapipe`` (which pulls ``opencv-contrib-python``, so it is kept out of affectfpn's own
environment)::

    python3 -m venv .mpvenv
    .mpvenv/bin/pip install mediapipe==1.2.3 pillow numpy
    .mpvenv/bin/python affectfpn/recipes/blendshapes.py \\
        --model ../shared/models/mediapipe/face_landmarker.task \\
        --root ../shared/data/fer2013/val --out val-blendshapes.csv

Run by path, it imports only the standard library, numpy, Pillow and (in the workers)
mediapipe: never torch, OpenCV or affectfpn's package. Imported as
``affectfpn.recipes.blendshapes`` it gives :data:`BLENDSHAPE_NAMES`, :data:`CSV_COLUMNS` and
:func:`prepare_face` and needs no mediapipe either;
:func:`affectfpn.recipes.teachers.mediapipe_runner.run_blendshape_teacher` (``affectfpn teachers
blendshapes``) starts it as a subprocess.

Output CSV, one row per input image, in input order:

* ``key``: the sample key. With ``--root``, the image path relative to the root in POSIX form
  (``angry/PublicTest_123.jpg``), which is the key
  :class:`~affectfpn.recipes.datasets.ImageFolderExpressions` gives the same file; with
  ``--list``, the list's ``key`` column.
* ``face_found``: 1 when the landmarker found a face, else 0 (then every score is empty).
* ``error``: empty, or why the image could not be read (``face_found`` is then 0).
* the 52 blendshape scores in MediaPipe's order (:data:`BLENDSHAPE_NAMES`), each in [0, 1].

A sidecar ``<out>.json`` records the model's SHA-256, the preprocessing, the mediapipe version,
the counts and the time taken.

Preprocessing (:func:`prepare_face`): the image is converted to grey (FER2013 faces are grey;
colour images lose their colour, which the landmarker does not need), resized to ``--size`` px
(longest side, bicubic) and padded on every side with mid grey (128) by ``--pad`` times the
size. Small tight crops such as FER2013's 48x48 faces are otherwise too small and too tight for
the landmarker's face detector: with 256 px and 0.3 it finds a face in 94-99 % of them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: The 52 blendshape categories of MediaPipe's Face Landmarker, in its output order.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
)

#: The columns of the output CSV.
CSV_COLUMNS: tuple[str, ...] = ("key", "face_found", "error", *BLENDSHAPE_NAMES)

#: File name endings read as images with ``--root``: those of affectfpn's image datasets, written
#: out again because this script runs without affectfpn (a test holds the two lists equal).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

DEFAULT_SIZE = 256
DEFAULT_PAD = 0.3


def prepare_face(
    image: Image.Image, size: int = DEFAULT_SIZE, pad: float = DEFAULT_PAD
) -> np.ndarray:
    """A face crop as the landmarker gets it: grey, ``size`` px, grey border, RGB uint8 HxWx3."""
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    if not 0 <= pad <= 2:
        raise ValueError(f"pad must be in [0, 2], got {pad}")
    grey = image.convert("L")
    w, h = grey.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = grey.resize(new, Image.Resampling.BICUBIC)
    border = round(pad * size)
    canvas = Image.new("L", (new[0] + 2 * border, new[1] + 2 * border), 128)
    canvas.paste(grey, (border, border))
    return np.ascontiguousarray(np.asarray(canvas.convert("RGB"), dtype=np.uint8))


def walk_images(root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(key, path)`` of the images under ``root``, sorted by name level by level, as
    :class:`~affectfpn.recipes.datasets.ImageFolderExpressions` walks them (hidden names
    skipped); the key is the path relative to ``root`` in POSIX form."""
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise FileNotFoundError(f"image root {os.fspath(root)!r} is not a folder")
    out: list[tuple[str, str]] = []

    def walk(folder: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                walk(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                key = Path(os.path.relpath(entry.path, real_root)).as_posix()
                out.append((key, entry.path))

    walk(real_root)
    return out


def read_list(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None
) -> list[tuple[str, str]]:
    """``(key, path)`` rows of a list CSV with a ``path`` column and an optional ``key`` column
    (default: the path as written); relative paths are taken from ``root`` (default: the list's
    folder)."""
    base = Path(root) if root is not None else Path(path).parent
    rows: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in fields:
            raise ValueError(f"{os.fspath(path)}: no 'path' column in {reader.fieldnames}")
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            file = row["path"]
            key = row.get("key") or Path(file).as_posix()
            rows.append((key, file if os.path.isabs(file) else os.fspath(base / file)))
    keys = [k for k, _ in rows]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"{os.fspath(path)}: key {dup!r} occurs more than once")
    return rows


# -- workers ------------------------------------------------------------------------------------
_LANDMARKER: Any = None
_SETTINGS: dict[str, Any] = {}


def _init_worker(model: str, size: int, pad: float) -> None:
    global _LANDMARKER
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=model),
        running_mode=vision.RunningMode.IMAGE,
        output_face_blendshapes=True,
        num_faces=1,
    )
    _LANDMARKER = vision.FaceLandmarker.create_from_options(options)
    _SETTINGS.update(size=size, pad=pad)


def _score(item: tuple[str, str]) -> list[str]:
    import mediapipe as mp

    key, path = item
    try:
        with Image.open(path) as image:
            pixels = prepare_face(image, _SETTINGS["size"], _SETTINGS["pad"])
    except (OSError, ValueError) as exc:
        return [key, "0", f"{type(exc).__name__}: {exc}".replace("\n", " ")] + [""] * 52
    result = _LANDMARKER.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
    if not result.face_blendshapes:
        return [key, "0", ""] + [""] * 52
    scores = {c.category_name: float(c.score) for c in result.face_blendshapes[0]}
    return [key, "1", ""] + [f"{scores[name]:.6g}" for name in BLENDSHAPE_NAMES]


def score_images(
    items: Sequence[tuple[str, str]],
    model: str,
    *,
    size: int = DEFAULT_SIZE,
    pad: float = DEFAULT_PAD,
    workers: int = 1,
) -> Iterator[list[str]]:
    """Yield one CSV row (:data:`CSV_COLUMNS`) per ``(key, path)``, in order; needs mediapipe."""
    if workers <= 1:
        _init_worker(model, size, pad)
        for item in items:
            yield _score(item)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(model, size, pad)) as pool:
        yield from pool.imap(_score, items, chunksize=32)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write MediaPipe Face Landmarker blendshape scores of face images to a CSV."
    )
    parser.add_argument("--model", required=True, help="face_landmarker.task")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--list", help="CSV with a 'path' and an optional 'key' column")
    source.add_argument("--files", nargs="+", help="image files (key: the path as given)")
    parser.add_argument(
        "--root",
        help="image folder walked recursively (key: path relative to it); with "
        "--list, the folder relative paths are taken from",
    )
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="face size in px (256)")
    parser.add_argument("--pad", type=float, default=DEFAULT_PAD, help="grey border (0.3)")
    parser.add_argument("--workers", type=int, default=1, help="processes (1)")
    args = parser.parse_args(argv)
    if args.list:
        items = read_list(args.list, args.root)
    elif args.files:
        items = [(Path(f).as_posix(), f) for f in args.files]
    elif args.root:
        items = walk_images(args.root)
    else:
        parser.error("give --root, --list or --files")
    if not items:
        parser.error("no images found")
    if not os.path.isfile(args.model):
        parser.error(f"model {args.model!r} does not exist")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    start = time.monotonic()
    found = errors = 0
    with open(partial, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for n, row in enumerate(
            score_images(items, args.model, size=args.size, pad=args.pad, workers=args.workers), 1
        ):
            writer.writerow(row)
            found += row[1] == "1"
            errors += bool(row[2])
            if n % 2000 == 0:
                print(
                    f"{n}/{len(items)} images, {found} faces, {time.monotonic() - start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    os.replace(partial, out)
    seconds = time.monotonic() - start
    try:
        from importlib.metadata import version

        mp_version = version("mediapipe")
    except Exception:
        mp_version = "unknown"
    info = {
        "images": len(items),
        "faces_found": found,
        "unreadable": errors,
        "seconds": round(seconds, 1),
        "workers": args.workers,
        "size": args.size,
        "pad": args.pad,
        "model": os.path.basename(args.model),
        "model_sha256": _sha256(args.model),
        "mediapipe": mp_version,
    }
    Path(f"{out}.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    # Run by path, this folder is sys.path[0]; its modules must not shadow installed packages.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.exit(main())
