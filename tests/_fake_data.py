"""Tiny, deterministic fake dataset trees for tests (Aff-Wild2, AffectNet, ExpW, image folders).

Every writer takes a ``seed`` and returns a record of what it wrote -- the labels it *meant*
(``None`` where it wrote an invalid marker), which files exist -- so tests can compare a dataset
against the intent without re-parsing the files.

Use from any test module in ``tests/``: ``from _fake_data import write_affwild2_tree``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VA_HEADER = "valence,arousal"
EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"
AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"

TASK_DIRS = {"va": "VA_Set", "expression": "EXPR_Set", "au": "AU_Set"}
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}

#: Default Aff-Wild2 videos, in the naming styles of the real set.
AFFWILD2_VIDEOS = ("4-30-1920x1080", "video5_left", "118-30-640x480", "video10_1")

#: Default task -> video -> split of :func:`write_affwild2_tree`.
AFFWILD2_SPLITS: dict[str, dict[str, str]] = {
    "va": {
        "4-30-1920x1080": "train",
        "video5_left": "train",
        "118-30-640x480": "train",
        "video10_1": "validation",
    },
    "expression": {
        "4-30-1920x1080": "train",
        "118-30-640x480": "train",
        "video10_1": "validation",
    },
    "au": {"video5_left": "train", "118-30-640x480": "train", "video10_1": "validation"},
}


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from an int or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    return int(image_size[0]), int(image_size[1])


def write_image(
    path: Path,
    *,
    image_size: int | tuple[int, int] = 16,
    seed: int = 0,
    grey: bool = False,
    fill: tuple[int, int, int] | None = None,
    boxes: Sequence[tuple[tuple[int, int, int, int], tuple[int, int, int]]] = (),
) -> np.ndarray:
    """Write a small image (random noise, or a flat ``fill``) and return its pixels.

    Args:
        path: the file; the format follows the suffix (``.jpg``, ``.png``).
        image_size: ``H`` or ``(H, W)``.
        seed: seed of the noise.
        grey: write a one-channel (mode ``L``) image.
        fill: a flat RGB colour instead of noise.
        boxes: ``((left, top, right, bottom), rgb)`` rectangles painted on top.
    """
    h, w = _size(image_size)
    rng = np.random.default_rng(seed)
    if fill is not None:
        pixels = np.empty((h, w, 3), np.uint8)
        pixels[:] = fill
    else:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for (left, top, right, bottom), colour in boxes:
        pixels[top:bottom, left:right] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    # high-quality JPEG without chroma subsampling keeps flat colours close to their value
    options: dict[str, Any] = (
        {"quality": 95, "subsampling": 0} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    )
    if grey:
        grey_pixels = pixels.mean(axis=2).astype(np.uint8)
        Image.fromarray(grey_pixels, "L").save(path, **options)
        return grey_pixels
    Image.fromarray(pixels, "RGB").save(path, **options)
    return pixels


# --------------------------------------------------------------------------------------------
# Aff-Wild2
# --------------------------------------------------------------------------------------------


@dataclass
class FakeAffWild2:
    """What :func:`write_affwild2_tree` wrote.

    Attributes:
        root: the dataset root.
        splits: task -> video -> ``"train"`` / ``"validation"`` (which annotation files exist).
        rows: task -> number of annotation rows per file (the same for every video).
        images: video -> frame numbers that have an image file.
        labels: task -> key -> the intended label, or ``None`` where an invalid marker was
            written (VA: ``(v, a)``; expression: class index; AU: tuple of 12 with ``None`` for a
            -1 entry). Keys are ``"<video>/<frame:05d>"`` for every annotated row.
        invalid_rows: task -> frame numbers written with an invalid marker (in every video).
    """

    root: Path
    splits: dict[str, dict[str, str]]
    rows: dict[str, int]
    images: dict[str, set[int]]
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid_rows: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def videos(self, task: str, split: str) -> list[str]:
        """The videos with an annotation file for ``task`` in ``split``."""
        return sorted(v for v, s in self.splits[task].items() if s == split)

    def keys(self, task: str, split: str) -> set[str]:
        """Keys of annotated rows of ``task``/``split`` that have an image."""
        return {
            f"{v}/{f:05d}"
            for v in self.videos(task, split)
            for f in range(1, self.rows[task] + 1)
            if f in self.images[v]
        }


def write_affwild2_tree(
    root: Path,
    *,
    videos: Sequence[str] = AFFWILD2_VIDEOS,
    frames: int = 8,
    image_size: int | tuple[int, int] = 16,
    seed: int = 0,
    splits: Mapping[str, Mapping[str, str]] | None = None,
    rows: Mapping[str, int] | None = None,
    missing_frames: Sequence[int] = (3,),
    images: str = "cropped_aligned",
) -> FakeAffWild2:
    """Write a tiny Aff-Wild2 tree in the ABAW2 layout under ``root``.

    Layout written:

    * ``<root>/<images>/<video>/<frame:05d>.jpg`` for frames ``1 .. frames + 1`` except
      ``missing_frames`` (so the last frame has an image but no annotation row), plus the
      distractors ``00001_3d.jpg`` and ``notes.txt`` in each video folder;
    * ``<root>/annotations/<Task>_Set/<Split>_Set/<video>.txt`` for each (task, video) in
      ``splits`` (default :data:`AFFWILD2_SPLITS`, restricted to ``videos``), with the official
      header and ``rows[task]`` rows (default: ``frames`` for VA and EXPR, ``frames - 2`` for AU).

    Invalid markers, in every file: VA frame 2 ``-5,-5``, frame 5 ``1.5,0.2`` (out of range) and
    frame 6 ``-5,0.3``; EXPR frame 2 ``-1``; AU frame 2 all ``-1`` and frame 4 only AU1 ``-1``.
    Other rows hold seeded random valid labels.

    Args:
        root: where to write.
        videos: video names.
        frames: annotation rows of VA/EXPR files; images go up to ``frames + 1``.
        image_size: ``H`` or ``(H, W)`` of the frames.
        seed: seed of labels and pixels.
        splits: task -> video -> split; tasks absent here get no annotation folder.
        rows: task -> number of rows per file.
        missing_frames: frames with no image file.
        images: the image folder name.

    Returns:
        A :class:`FakeAffWild2` describing what was written.
    """
    rng = np.random.default_rng(seed)
    split_map = {
        t: {v: s for v, s in m.items() if v in videos}
        for t, m in (splits if splits is not None else AFFWILD2_SPLITS).items()
    }
    n_rows = {"va": frames, "expression": frames, "au": max(frames - 2, 1)}
    n_rows.update(rows or {})
    n_rows = {t: n for t, n in n_rows.items() if t in split_map}
    fake = FakeAffWild2(root=root, splits=split_map, rows=n_rows, images={})
    fake.invalid_rows = {"va": (2, 5, 6), "expression": (2,), "au": (2,)}

    for vi, video in enumerate(videos):
        folder = root / images / video
        have = {f for f in range(1, frames + 2) if f not in set(missing_frames)}
        for f in sorted(have):
            write_image(folder / f"{f:05d}.jpg", image_size=image_size, seed=seed + 1000 * vi + f)
        write_image(folder / "00001_3d.jpg", image_size=image_size, seed=seed + 7)
        (folder / "notes.txt").write_text("not a frame\n")
        fake.images[video] = have

    for task, videos_of_task in split_map.items():
        labels: dict[str, Any] = {}
        for video, split in sorted(videos_of_task.items()):
            lines = []
            header = {"va": VA_HEADER, "expression": EXPR_HEADER, "au": AU_HEADER}[task]
            for f in range(1, n_rows[task] + 1):
                key = f"{video}/{f:05d}"
                if task == "va":
                    raw = {2: (-5.0, -5.0), 5: (1.5, 0.2), 6: (-5.0, 0.3)}.get(f)
                    if raw is None:
                        v, a = (round(float(x), 3) for x in rng.uniform(-1, 1, 2))
                        labels[key] = (v, a)
                        lines.append(f"{v},{a}")
                    else:
                        labels[key] = None
                        lines.append(f"{raw[0]},{raw[1]}")
                elif task == "expression":
                    if f == 2:
                        labels[key] = None
                        lines.append("-1")
                    else:
                        c = int(rng.integers(0, 7))
                        labels[key] = c
                        lines.append(str(c))
                else:
                    aus: list[int | None] = [int(x) for x in rng.integers(0, 2, 12)]
                    if f == 2:
                        aus = [None] * 12
                    elif f == 4:
                        aus[0] = None
                    labels[key] = None if f == 2 else tuple(aus)
                    lines.append(",".join("-1" if x is None else str(x) for x in aus))
            path = root / "annotations" / TASK_DIRS[task] / SPLIT_DIRS[split] / f"{video}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(header + "\n" + "\n".join(lines) + "\n")
        fake.labels[task] = labels
    return fake


# --------------------------------------------------------------------------------------------
# AffectNet
# --------------------------------------------------------------------------------------------


@dataclass
class FakeAffectNetRow:
    """One row written by :func:`write_affectnet_tree`."""

    path: str
    box: tuple[int, int, int, int]  # face_x, face_y, face_width, face_height
    expression: int  # AffectNet's own code 0..10
    valence: float
    arousal: float
    colour: tuple[int, int, int]  # the face box is painted this colour


@dataclass
class FakeAffectNet:
    """What :func:`write_affectnet_tree` wrote."""

    root: Path
    csv_path: Path
    rows: list[FakeAffectNetRow]


def write_affectnet_tree(
    root: Path, *, image_size: int = 32, seed: int = 0, missing: Sequence[int] = ()
) -> FakeAffectNet:
    """Write AffectNet images under ``root/images`` and ``root/training.csv``.

    One row per AffectNet class 0..10 (in that order, line k + 2 for class k): VA is valid
    (seeded, in [-1, 1]) for classes 0..7 and -2 for 8..10, as in the real data. Each image is
    noise with the face box painted a distinct flat colour. Rows whose index is in ``missing``
    get no image file.
    """
    rng = np.random.default_rng(seed)
    rows = []
    lines = [
        "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
        "expression,valence,arousal"
    ]
    for k in range(11):
        path = f"{100 + k % 3}/img_{k:02d}.jpg"
        x, y = int(rng.integers(0, image_size // 4)), int(rng.integers(0, image_size // 4))
        w, h = image_size // 2, image_size // 2
        colour = (40 + 20 * k, 200 - 15 * k, (90 * k) % 256)
        if k <= 7:
            valence, arousal = (round(float(v), 3) for v in rng.uniform(-1, 1, 2))
        else:
            valence, arousal = -2.0, -2.0
        row = FakeAffectNetRow(path, (x, y, w, h), k, valence, arousal, colour)
        rows.append(row)
        if k not in set(missing):
            write_image(
                root / "images" / path,
                image_size=image_size,
                seed=seed + k,
                boxes=[((x, y, x + w, y + h), colour)],
            )
        landmarks = ";".join(str(v) for v in rng.integers(0, image_size, 10))
        lines.append(f"{path},{x},{y},{w},{h},{landmarks},{k},{valence},{arousal}")
    csv_path = root / "training.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(lines) + "\n")
    return FakeAffectNet(root=root / "images", csv_path=csv_path, rows=rows)


# --------------------------------------------------------------------------------------------
# ExpW
# --------------------------------------------------------------------------------------------


@dataclass
class FakeExpWFace:
    """One face line written by :func:`write_expw_tree`."""

    image: str
    face_id: int
    box: tuple[int, int, int, int]  # top, left, right, bottom
    confidence: float
    label: int  # ExpW's own code 0..6
    colour: tuple[int, int, int]


@dataclass
class FakeExpW:
    """What :func:`write_expw_tree` wrote."""

    root: Path
    label_file: Path
    faces: list[FakeExpWFace]


def write_expw_tree(
    root: Path,
    *,
    faces_per_image: Sequence[int] = (1, 2, 3),
    image_size: int = 32,
    seed: int = 0,
) -> FakeExpW:
    """Write ExpW images under ``root/image/origin`` and ``root/label/label.lst``.

    Image ``i`` holds ``faces_per_image[i]`` faces side by side (non-overlapping boxes, each a
    distinct flat colour). Labels cycle through ExpW's classes 0..6; confidences are seeded in
    [0, 1) except that face 0 of the last image gets 0.05.
    """
    rng = np.random.default_rng(seed)
    faces: list[FakeExpWFace] = []
    for i, n in enumerate(faces_per_image):
        name = f"face_img_{i:03d}.jpg"
        width = image_size // max(n, 1)
        painted = []
        for j in range(n):
            left, right = j * width, j * width + max(width - 2, 2)
            top, bottom = 2, image_size - 2
            colour = (30 + 60 * j, (50 * i + 80) % 256, 220 - 70 * j)
            conf = (
                0.05 if (i == len(faces_per_image) - 1 and j == 0) else float(rng.uniform(0.3, 1))
            )
            face = FakeExpWFace(
                name, j, (top, left, right, bottom), round(conf, 3), len(faces) % 7, colour
            )
            faces.append(face)
            painted.append(((left, top, right, bottom), colour))
        write_image(
            root / "image" / "origin" / name, image_size=image_size, seed=seed + i, boxes=painted
        )
    label_file = root / "label" / "label.lst"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text(
        "".join(
            f"{f.image} {f.face_id} {f.box[0]} {f.box[1]} {f.box[2]} {f.box[3]} "
            f"{f.confidence} {f.label}\n"
            for f in faces
        )
    )
    return FakeExpW(root=root, label_file=label_file, faces=faces)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def write_image_folder(
    root: Path,
    classes: Mapping[str, int],
    *,
    image_size: int | tuple[int, int] = 16,
    grey: bool = True,
    seed: int = 0,
    suffix: str = ".jpg",
) -> dict[str, list[str]]:
    """Write ``classes[name]`` images into ``root/<name>/``; return name -> relative paths."""
    out: dict[str, list[str]] = {}
    for c, (name, n) in enumerate(sorted(classes.items())):
        out[name] = []
        for k in range(n):
            rel = f"{name}/img_{k:03d}{suffix}"
            write_image(root / rel, image_size=image_size, seed=seed + 100 * c + k, grey=grey)
            out[name].append(rel)
    return out
