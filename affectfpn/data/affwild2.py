"""Aff-Wild2 (ABAW2 layout) datasets: one task, or the three tasks joined by frame key."""

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from affectfpn.data.common import (
    NUM_AUS,
    AffectDataset,
    LabelArrays,
    Transform,
    check_entry_inside,
    is_inside,
    open_rgb,
    real_dir,
    where,
)
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS, VA_NAMES

logger = logging.getLogger("affectfpn.recipes.datasets")

Split = Literal["train", "validation"]

#: Annotation folder of each task.
TASK_DIRS: dict[str, str] = {"va": "VA_Set", "expression": "EXPR_Set", "au": "AU_Set"}
#: Annotation sub-folder of each split.
SPLIT_DIRS: dict[str, str] = {"train": "Train_Set", "validation": "Validation_Set"}
#: The header line expected in each task's annotation files.
HEADERS: dict[str, tuple[str, ...]] = {
    "va": tuple(VA_NAMES),
    "expression": EXPRESSIONS,
    "au": ACTION_UNITS,
}

_FRAME_FILE = re.compile(r"^(\d{5,})\.jpg$")


@dataclass
class _TaskRows:
    """Parsed rows of one annotation file; row r is frame r + 1."""

    values: np.ndarray  # va: f32 [n, 2]; expression: i64 [n]; au: f32 [n, 12]
    mask: np.ndarray  # va, expression: bool [n]; au: bool [n, 12]

    def __len__(self) -> int:
        return int(self.mask.shape[0])


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read annotation file {os.fspath(path)!r}: {exc}") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _check_header(path: Path, header: str, task: str) -> None:
    found = tuple(c.strip().lower() for c in header.split(","))
    expected = HEADERS[task]
    if found != tuple(e.lower() for e in expected):
        raise DatasetError(
            f"{where(path, 1)}: header {header.strip()!r} is not the {TASK_DIRS[task]} header "
            f"{','.join(expected)!r}; is this file in the wrong annotation folder?"
        )


def _bad_row(path: Path, line: int, task: str, text: str, why: str) -> DatasetError:
    return DatasetError(f"{where(path, line)}: malformed {TASK_DIRS[task]} row {text!r}: {why}")


def read_annotation(path: Path, task: str) -> _TaskRows:
    """Parse one Aff-Wild2 annotation file; invalid markers become mask False.

    Raises:
        DatasetError: for a wrong header or a malformed row (naming the file and line).
    """
    lines = _read_lines(path)
    if not lines:
        raise DatasetError(f"{where(path, 1)}: empty annotation file (no header line)")
    _check_header(path, lines[0], task)
    rows = lines[1:]
    n = len(rows)
    if task == "va":
        va = np.zeros((n, 2), np.float32)
        for r, text in enumerate(rows):
            cells = text.split(",")
            if len(cells) != 2:
                raise _bad_row(path, r + 2, task, text, f"expected 2 values, found {len(cells)}")
            try:
                va[r] = (float(cells[0]), float(cells[1]))
            except ValueError:
                raise _bad_row(path, r + 2, task, text, "not a number") from None
        # -5 marks an invalid frame; anything outside [-1, 1] (or NaN) is no label either.
        mask = np.isfinite(va).all(axis=1) & (np.abs(va) <= 1.0).all(axis=1)
        return _TaskRows(va, np.asarray(mask))
    if task == "expression":
        ex = np.zeros(n, np.int64)
        for r, text in enumerate(rows):
            cell = text.strip()
            try:
                value = int(cell)
            except ValueError:
                raise _bad_row(path, r + 2, task, text, "expected one integer") from None
            if not -1 <= value < len(EXPRESSIONS):
                raise _bad_row(
                    path,
                    r + 2,
                    task,
                    text,
                    "class must be -1 (invalid) or 0..6",
                )
            ex[r] = value
        return _TaskRows(ex, np.asarray(ex >= 0))
    au = np.zeros((n, NUM_AUS), np.float32)
    for r, text in enumerate(rows):
        cells = text.split(",")
        if len(cells) != NUM_AUS:
            raise _bad_row(
                path, r + 2, task, text, f"expected {NUM_AUS} values, found {len(cells)}"
            )
        try:
            au[r] = [float(c) for c in cells]
        except ValueError:
            raise _bad_row(path, r + 2, task, text, "not a number") from None
    bad = ~np.isin(au, (-1.0, 0.0, 1.0))
    if bad.any():
        r = int(np.flatnonzero(bad.any(axis=1))[0])
        raise _bad_row(path, r + 2, task, rows[r], "AU values must be 0, 1 or -1 (invalid)")
    return _TaskRows(au, np.asarray(au >= 0))


def _annotation_files(ann_root: Path, task: str, split: str) -> dict[str, Path]:
    folder = ann_root / TASK_DIRS[task] / SPLIT_DIRS[split]
    if not folder.is_dir():
        raise DatasetError(
            f"annotation folder {os.fspath(folder)!r} does not exist; expected the ABAW2 layout "
            f"<root>/annotations/{{VA_Set,EXPR_Set,AU_Set}}/{{Train_Set,Validation_Set}}/<video>.txt"
        )
    out = {}
    for entry in os.scandir(folder):
        if entry.name.endswith(".txt") and not entry.name.startswith(".") and entry.is_file():
            out[entry.name[: -len(".txt")]] = Path(entry.path)
    return out


def _validation_videos(ann_root: Path) -> set[str]:
    videos: set[str] = set()
    for task_dir in TASK_DIRS.values():
        folder = ann_root / task_dir / SPLIT_DIRS["validation"]
        if folder.is_dir():
            videos.update(
                e.name[: -len(".txt")]
                for e in os.scandir(folder)
                if e.name.endswith(".txt") and not e.name.startswith(".")
            )
    return videos


def _scan_frames(images_real: str, video: str) -> np.ndarray:
    """Return the sorted frame numbers that have an image ``<video>/<frame:05d>.jpg``."""
    video_dir = os.path.join(images_real, video)
    if not os.path.isdir(video_dir):
        return np.zeros(0, np.int64)
    if not is_inside(os.path.realpath(video_dir), images_real):
        raise DatasetError(
            f"image folder {video_dir!r} is a symbolic link outside the images root "
            f"{images_real!r}; copy the frames into the root"
        )
    frames = []
    for entry in os.scandir(video_dir):
        m = _FRAME_FILE.match(entry.name)
        if m is None:  # *_3d.jpg, thumbnails, notes: not frames
            continue
        frame = int(m.group(1))
        if entry.name != f"{frame:05d}.jpg" or frame < 1:
            continue
        check_entry_inside(entry, images_real, "frame")
        frames.append(frame)
    return np.array(sorted(frames), np.int64)


class _AffWild2Base(AffectDataset):
    """Frames of Aff-Wild2 with the labels of one or more tasks, joined by ``<video>/<frame>``."""

    name = "affwild2"

    def __init__(
        self,
        root: str | os.PathLike[str],
        tasks: Sequence[str],
        split: str,
        *,
        every_k: int,
        images: str,
        strict_split: bool,
        drop_unlabelled: bool,
        transform: Transform | None,
        image_size: Sequence[int] | None,
    ) -> None:
        super().__init__(transform, image_size)
        if split not in SPLIT_DIRS:
            raise ConfigError(f"split must be 'train' or 'validation', got {split!r}")
        tasks = tuple(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            raise ConfigError(f"tasks must be distinct names from {TASKS}, got {tasks}")
        if int(every_k) < 1:
            raise ConfigError(f"every_k must be a positive integer, got {every_k}")
        self.root = Path(root)
        self.tasks = tasks
        self.split = split
        self.every_k = int(every_k)
        real_dir(self.root, "Aff-Wild2 root")
        ann_root = self.root / "annotations"
        self._images_real = real_dir(self.root / images, "Aff-Wild2 image folder")

        files = {t: _annotation_files(ann_root, t, split) for t in tasks}
        videos = sorted(set().union(*(f.keys() for f in files.values())))
        if split == "train" and strict_split:
            leaked = sorted(set(videos) & _validation_videos(ann_root))
            if leaked:
                logger.warning(
                    "Aff-Wild2: %d training video(s) also appear in a Validation_Set and are left "
                    "out of the training split (no train/validation overlap): %s",
                    len(leaked),
                    ", ".join(leaked[:5]) + (" ..." if len(leaked) > 5 else ""),
                )
                videos = [v for v in videos if v not in set(leaked)]
        bad = [v for v in videos if v in (".", "..") or "/" in v or "\\" in v]
        if bad:
            raise DatasetError(f"annotation file name {bad[0]!r}.txt is not a video name")

        video_ids, frame_ids, parts = [], [], []
        n_annotated = n_no_image = 0
        no_folder: list[str] = []
        for vi, video in enumerate(videos):
            rows = {t: read_annotation(files[t][video], t) for t in tasks if video in files[t]}
            longest = max(len(r) for r in rows.values())
            n_annotated += longest
            have = _scan_frames(self._images_real, video)
            if not len(have):
                no_folder.append(video)
            have = have[have <= longest]
            n_no_image += longest - len(have)
            if self.every_k > 1:
                have = have[(have - 1) % self.every_k == 0]
            labels = LabelArrays.empty(len(have))
            for t, task_rows in rows.items():
                inside = have <= len(task_rows)
                sel, row = np.flatnonzero(inside), have[inside] - 1
                if t == "va":
                    labels.va[sel], labels.va_mask[sel] = task_rows.values[row], task_rows.mask[row]
                elif t == "expression":
                    labels.expression[sel] = task_rows.values[row]
                    labels.expression_mask[sel] = task_rows.mask[row]
                else:
                    labels.au[sel], labels.au_mask[sel] = task_rows.values[row], task_rows.mask[row]
            video_ids.append(np.full(len(have), vi, np.int32))
            frame_ids.append(have.astype(np.int32))
            parts.append(labels.clean())

        if no_folder:
            logger.warning(
                "Aff-Wild2: %d annotated video(s) have no frames under %s: %s",
                len(no_folder),
                self._images_real,
                ", ".join(no_folder[:5]) + (" ..." if len(no_folder) > 5 else ""),
            )
        self._videos = list(videos)
        self._video_idx = np.concatenate(video_ids) if video_ids else np.zeros(0, np.int32)
        self._frame = np.concatenate(frame_ids) if frame_ids else np.zeros(0, np.int32)
        self._labels = LabelArrays.concat(parts)
        if drop_unlabelled:
            keep = (
                self._labels.va_mask
                | self._labels.expression_mask
                | self._labels.au_mask.any(axis=1)
            )
            self._video_idx, self._frame = self._video_idx[keep], self._frame[keep]
            self._labels = self._labels.take(np.flatnonzero(keep))
        self._labels.validate()
        logger.info(
            "Aff-Wild2 %s %s: %d videos, %d annotated frames, %d without an image, %d samples",
            "+".join(tasks),
            split,
            len(videos),
            n_annotated,
            n_no_image,
            len(self),
        )

    @property
    def videos(self) -> list[str]:
        """The videos of this split (after leaving out validation videos from train)."""
        return list(self._videos)

    def key(self, index: int) -> str:
        """``"<video>/<frame:05d>"``."""
        return f"{self._videos[self._video_idx[index]]}/{int(self._frame[index]):05d}"

    def image_path(self, index: int) -> str:
        """The image file of sample ``index``."""
        video = self._videos[self._video_idx[index]]
        return os.path.join(self._images_real, video, f"{int(self._frame[index]):05d}.jpg")

    def load_image(self, index: int) -> Image.Image:
        """The RGB frame of sample ``index``."""
        return open_rgb(self.image_path(index))


class AffWild2(_AffWild2Base):
    """One task of Aff-Wild2 in the ABAW2 layout.

    Layout: images ``<root>/<images>/<video>/<frame:05d>.jpg`` (frames 1-based), annotations
    ``<root>/annotations/{VA_Set,EXPR_Set,AU_Set}/{Train_Set,Validation_Set}/<video>.txt`` with one
    header line, then line k + 1 for frame k. A sample is an annotated frame that has an image
    (``*_3d.jpg`` and other files are not frames); its key is ``"<video>/<frame:05d>"``. Invalid
    markers (VA -5 or any VA outside [-1, 1], EXPR -1, AU -1) give mask False, never a value.

    The train split never shares a video with the validation split: with ``strict_split`` (the
    default) a Train_Set video that is also in the Validation_Set of any task is left out (and a
    warning is logged).

    Args:
        root: the Aff-Wild2 folder.
        task: ``"va"``, ``"expression"`` or ``"au"``.
        split: ``"train"`` (Train_Set) or ``"validation"`` (Validation_Set).
        every_k: keep frames 1, 1 + k, 1 + 2k, ... of each video (by frame number).
        images: the image folder under ``root`` (``"cropped_aligned"`` or ``"cropped"``).
        strict_split: leave validation videos (of any task) out of the train split.
        drop_unlabelled: drop frames whose label is invalid (useful to train a teacher).
        transform: applied to the RGB PIL image; default: uint8 tensor 3 x H x W.
        image_size: ``(H, W)`` the image is resized to before ``transform``.

    Raises:
        DatasetError: a missing folder, a wrong header, a malformed row (file and line named) or a
            symbolic link out of the image folder.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        task: Literal["va", "expression", "au"],
        split: Split = "train",
        *,
        every_k: int = 1,
        images: str = "cropped_aligned",
        strict_split: bool = True,
        drop_unlabelled: bool = False,
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        super().__init__(
            root,
            (task,),
            split,
            every_k=every_k,
            images=images,
            strict_split=strict_split,
            drop_unlabelled=drop_unlabelled,
            transform=transform,
            image_size=image_size,
        )
        self.name = f"affwild2-{task}"


class AffWild2MultiTask(_AffWild2Base):
    """Aff-Wild2 frames with the labels of several tasks joined by key (the student's dataset).

    A frame is a sample when it has an image and a row in the annotation file of any of
    ``tasks`` for this split; a task whose file has no row for it is masked. Otherwise as
    :class:`AffWild2` (same layout, keys, invalid markers, ``every_k``, ``strict_split``).

    Args:
        root: the Aff-Wild2 folder.
        split: ``"train"`` or ``"validation"``.
        tasks: the tasks whose annotation files are read.
        every_k: keep frames 1, 1 + k, ... of each video.
        images: the image folder under ``root``.
        strict_split: leave validation videos (of any task) out of the train split.
        drop_unlabelled: drop frames that have no valid label for any task.
        transform: applied to the RGB PIL image; default: uint8 tensor 3 x H x W.
        image_size: ``(H, W)`` the image is resized to before ``transform``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Split = "train",
        tasks: Sequence[str] = TASKS,
        *,
        every_k: int = 1,
        images: str = "cropped_aligned",
        strict_split: bool = True,
        drop_unlabelled: bool = False,
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            root,
            tasks,
            split,
            every_k=every_k,
            images=images,
            strict_split=strict_split,
            drop_unlabelled=drop_unlabelled,
            transform=transform,
            image_size=image_size,
        )
        self.name = "affwild2"
