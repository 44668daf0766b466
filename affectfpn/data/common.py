"""Shared pieces of the datasets: label arrays, the sample dict, safe paths, images.

:mod:`affectfpn.data` (and :mod:`affectfpn.recipes.datasets`) re-export what users need.
"""

import csv
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from affectfpn.errors import ConfigError, DatasetError
from affectfpn.io import DECODE_ERRORS, open_formats
from affectfpn.io import IMAGE_EXTENSIONS as _IO_IMAGE_EXTENSIONS
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS

logger = logging.getLogger("affectfpn.recipes.datasets")

#: What a dataset's ``__getitem__`` returns (see the "Training samples" contract).
Sample = dict[str, Any]
#: A callable applied to the RGB PIL image of a sample.
Transform = Callable[[Image.Image], Any]
#: What to do with an annotated image whose file does not exist.
OnMissing = Literal["skip", "error"]

NUM_EXPRESSIONS = len(EXPRESSIONS)
NUM_AUS = len(ACTION_UNITS)
#: What Pillow raises on a damaged or oversized image file (the warning under ``-W error``).
_IMAGE_ERRORS = (*DECODE_ERRORS, Image.DecompressionBombError, Image.DecompressionBombWarning)

#: Lower-case expression names and synonyms (folder names, CSV cells) -> EXPRESSIONS index.
EXPRESSION_SYNONYMS: dict[str, int] = {
    "neutral": EXPRESSIONS.index("Neutral"),
    "anger": EXPRESSIONS.index("Anger"),
    "angry": EXPRESSIONS.index("Anger"),
    "disgust": EXPRESSIONS.index("Disgust"),
    "disgusted": EXPRESSIONS.index("Disgust"),
    "fear": EXPRESSIONS.index("Fear"),
    "fearful": EXPRESSIONS.index("Fear"),
    "happiness": EXPRESSIONS.index("Happiness"),
    "happy": EXPRESSIONS.index("Happiness"),
    "sadness": EXPRESSIONS.index("Sadness"),
    "sad": EXPRESSIONS.index("Sadness"),
    "surprise": EXPRESSIONS.index("Surprise"),
    "surprised": EXPRESSIONS.index("Surprise"),
}

#: File name endings read as images by the folder datasets (compared in lower case): the one
#: list of :data:`affectfpn.io.IMAGE_EXTENSIONS`, in a fixed order.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(sorted(_IO_IMAGE_EXTENSIONS))


def expression_from_name(name: str) -> int | None:
    """Return the EXPRESSIONS index of an expression name or synonym (any case), else ``None``."""
    return EXPRESSION_SYNONYMS.get(name.strip().lower())


def where(path: str | os.PathLike[str], line: int | None = None) -> str:
    """Format a file (and line) for an error message: ``'path:line'``."""
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)


# --------------------------------------------------------------------------------------------
# Label arrays
# --------------------------------------------------------------------------------------------


@dataclass
class LabelArrays:
    """The labels of N samples as numpy arrays (one row per sample).

    A missing label has value 0 and mask False. ``expression_soft``, when not ``None``, holds a
    probability vector per sample (one-hot for a hard label, zeros where the expression is
    missing), and ``expression`` is its argmax.

    Attributes:
        va: float32 [N, 2] valence and arousal in [-1, 1].
        va_mask: bool [N].
        expression: int64 [N] class index in EXPRESSIONS order.
        expression_mask: bool [N].
        au: float32 [N, 12] in [0, 1] (0/1, or probabilities).
        au_mask: bool [N, 12].
        expression_soft: float32 [N, 7] or ``None``.
    """

    va: np.ndarray
    va_mask: np.ndarray
    expression: np.ndarray
    expression_mask: np.ndarray
    au: np.ndarray
    au_mask: np.ndarray
    expression_soft: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, *, soft: bool = False) -> "LabelArrays":
        """Return ``n`` rows with every label missing."""
        return cls(
            va=np.zeros((n, 2), np.float32),
            va_mask=np.zeros(n, bool),
            expression=np.zeros(n, np.int64),
            expression_mask=np.zeros(n, bool),
            au=np.zeros((n, NUM_AUS), np.float32),
            au_mask=np.zeros((n, NUM_AUS), bool),
            expression_soft=np.zeros((n, NUM_EXPRESSIONS), np.float32) if soft else None,
        )

    def __len__(self) -> int:
        return int(self.va_mask.shape[0])

    def take(self, index: np.ndarray | Sequence[int]) -> "LabelArrays":
        """Return the rows at ``index`` (an integer or boolean array), as a copy."""
        idx = np.asarray(index)
        return LabelArrays(
            va=self.va[idx],
            va_mask=self.va_mask[idx],
            expression=self.expression[idx],
            expression_mask=self.expression_mask[idx],
            au=self.au[idx],
            au_mask=self.au_mask[idx],
            expression_soft=None if self.expression_soft is None else self.expression_soft[idx],
        )

    def soft_or_onehot(self) -> np.ndarray:
        """Return float32 [N, 7]: the soft expression rows, or one-hot of the hard labels."""
        if self.expression_soft is not None:
            return self.expression_soft
        out = np.zeros((len(self), NUM_EXPRESSIONS), np.float32)
        rows = np.flatnonzero(self.expression_mask)
        out[rows, self.expression[rows]] = 1.0
        return out

    @classmethod
    def concat(cls, parts: Sequence["LabelArrays"]) -> "LabelArrays":
        """Concatenate rows; soft expressions are kept if any part has them."""
        if not parts:
            return cls.empty(0)
        soft = any(p.expression_soft is not None for p in parts)
        return cls(
            va=np.concatenate([p.va for p in parts]),
            va_mask=np.concatenate([p.va_mask for p in parts]),
            expression=np.concatenate([p.expression for p in parts]),
            expression_mask=np.concatenate([p.expression_mask for p in parts]),
            au=np.concatenate([p.au for p in parts]),
            au_mask=np.concatenate([p.au_mask for p in parts]),
            expression_soft=np.concatenate([p.soft_or_onehot() for p in parts]) if soft else None,
        )

    def clean(self) -> "LabelArrays":
        """Zero every masked-out value, in place, and return ``self``."""
        self.va[~self.va_mask] = 0.0
        self.expression[~self.expression_mask] = 0
        self.au[~self.au_mask] = 0.0
        if self.expression_soft is not None:
            self.expression_soft[~self.expression_mask] = 0.0
        return self

    def validate(self) -> None:
        """Raise :class:`DatasetError` unless shapes, dtypes and value ranges keep the contract."""
        n = len(self)
        shapes = {
            "va": (self.va, (n, 2), np.float32),
            "va_mask": (self.va_mask, (n,), np.bool_),
            "expression": (self.expression, (n,), np.int64),
            "expression_mask": (self.expression_mask, (n,), np.bool_),
            "au": (self.au, (n, NUM_AUS), np.float32),
            "au_mask": (self.au_mask, (n, NUM_AUS), np.bool_),
        }
        if self.expression_soft is not None:
            shapes["expression_soft"] = (self.expression_soft, (n, NUM_EXPRESSIONS), np.float32)
        for name, (arr, shape, dtype) in shapes.items():
            if arr.shape != shape or arr.dtype != dtype:
                raise DatasetError(
                    f"label array {name!r} has shape {arr.shape} {arr.dtype}, "
                    f"expected {shape} {np.dtype(dtype)}"
                )
        va = self.va[self.va_mask]
        if va.size and not (np.isfinite(va).all() and np.abs(va).max() <= 1.0):
            raise DatasetError("a valid VA label lies outside [-1, 1]")
        ex = self.expression[self.expression_mask]
        if ex.size and (ex.min() < 0 or ex.max() >= NUM_EXPRESSIONS):
            raise DatasetError(f"a valid expression label lies outside 0..{NUM_EXPRESSIONS - 1}")
        au = self.au[self.au_mask]
        if au.size and not (np.isfinite(au).all() and au.min() >= 0.0 and au.max() <= 1.0):
            raise DatasetError("a valid AU label lies outside [0, 1]")

    def row(self, i: int) -> Sample:
        """Return the label fields of row ``i`` as the tensors of the sample contract."""
        out: Sample = {
            "va": torch.from_numpy(self.va[i].copy()),
            "va_mask": torch.from_numpy(np.array(self.va_mask[i], dtype=np.bool_)),
            "expression": torch.from_numpy(np.array(self.expression[i], dtype=np.int64)),
            "expression_mask": torch.from_numpy(np.array(self.expression_mask[i], dtype=np.bool_)),
            "au": torch.from_numpy(self.au[i].copy()),
            "au_mask": torch.from_numpy(self.au_mask[i].copy()),
        }
        if self.expression_soft is not None:
            out["expression_soft"] = torch.from_numpy(self.expression_soft[i].copy())
        return out


def label_counts(labels: LabelArrays) -> dict[str, int]:
    """Count samples and valid labels: totals, per expression class and AU positives."""
    out = {
        "samples": len(labels),
        "va": int(labels.va_mask.sum()),
        "expression": int(labels.expression_mask.sum()),
        "au": int(labels.au_mask.any(axis=1).sum()) if len(labels) else 0,
    }
    classes = np.bincount(labels.expression[labels.expression_mask], minlength=NUM_EXPRESSIONS)
    for name, count in zip(EXPRESSIONS, classes, strict=True):
        out[f"expression/{name}"] = int(count)
    positive = (labels.au >= 0.5) & labels.au_mask
    for j, name in enumerate(ACTION_UNITS):
        out[f"au/{name}"] = int(positive[:, j].sum())
        out[f"au_labelled/{name}"] = int(labels.au_mask[:, j].sum())
    return out


def labelled_units(counts: Mapping[str, int]) -> list[str]:
    """The action units that hold at least one label in :func:`label_counts` output, in
    ACTION_UNITS order."""
    return [name for name in ACTION_UNITS if counts.get(f"au_labelled/{name}", 0) > 0]


def format_counts(title: str, counts: Mapping[str, int]) -> str:
    """Render :func:`label_counts` output as a few human-readable lines."""
    n = counts["samples"]
    lines = [
        f"{title}: {n} samples; valid labels: VA {counts['va']}, "
        f"expression {counts['expression']}, AU {counts['au']}"
    ]
    if counts["expression"]:
        parts = [f"{name} {counts[f'expression/{name}']}" for name in EXPRESSIONS]
        lines.append("  expression: " + ", ".join(parts))
    if counts["au"]:
        parts = [f"{name} {counts[f'au/{name}']}" for name in ACTION_UNITS]
        lines.append("  AU positives: " + ", ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def real_dir(path: str | os.PathLike[str], what: str) -> str:
    """Return the resolved path of an existing directory, or raise :class:`DatasetError`."""
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"{what} {os.fspath(p)!r} is not a directory: check the path")
    return os.path.realpath(p)


def is_inside(real_path: str, real_root: str) -> bool:
    """Whether the resolved ``real_path`` equals or lies under the resolved ``real_root``."""
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def normalize_relpath(rel: str, *, file: str | os.PathLike[str], line: int | None) -> str:
    """Check a relative path read from an annotation file and return it in POSIX form.

    Raises:
        DatasetError: for an empty or absolute path, one with a ``..`` component or a NUL
            character (naming ``file`` and ``line``).
    """
    text = rel.strip()
    if not text:
        raise DatasetError(f"{where(file, line)}: empty image path")
    if "\x00" in text:
        raise DatasetError(
            f"{where(file, line)}: image path {text!r} contains a NUL character; "
            "fix the annotation file"
        )
    posix, windows = PurePosixPath(text), PureWindowsPath(text)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise DatasetError(
            f"{where(file, line)}: image path {text!r} is absolute; annotation paths must be "
            "relative to the dataset root"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise DatasetError(
            f"{where(file, line)}: image path {text!r} contains '..'; annotation paths must stay "
            "inside the dataset root"
        )
    return posix.as_posix()


def resolve_inside(
    real_root: str, rel: str, *, file: str | os.PathLike[str], line: int | None
) -> tuple[str, str]:
    """Join a relative annotation path to a dataset root, refusing any escape from the root.

    Args:
        real_root: the dataset root, already resolved (``os.path.realpath``).
        rel: the path as written in the annotation file.
        file: the annotation file (for error messages).
        line: its 1-based line number (for error messages).

    Returns:
        ``(normalized_relpath, full_path)``.

    Raises:
        DatasetError: when the path is absolute, has ``..``, or resolves (through a symbolic
            link) to a place outside the root.
    """
    norm = normalize_relpath(rel, file=file, line=line)
    full = os.path.join(real_root, *PurePosixPath(norm).parts)
    real = os.path.realpath(full)
    if not is_inside(real, real_root):
        raise DatasetError(
            f"{where(file, line)}: image path {norm!r} resolves to {real!r}, outside the dataset "
            f"root {real_root!r} (a symbolic link escapes it); copy the file into the root"
        )
    return norm, full


def check_entry_inside(entry: os.DirEntry[str], real_root: str, what: str) -> None:
    """Raise :class:`DatasetError` if a directory entry is a symbolic link leading out of a root."""
    if entry.is_symlink():
        real = os.path.realpath(entry.path)
        if not is_inside(real, real_root):
            raise DatasetError(
                f"{what} {entry.path!r} is a symbolic link to {real!r}, outside the dataset root "
                f"{real_root!r}; copy the file into the root"
            )


def read_path_list(path: str | os.PathLike[str]) -> list[str]:
    """Read a list of relative paths, one per line (blank lines and ``#`` comments skipped).

    This reads files such as FER2013's ``overlap_with_train.txt``, for the ``exclude`` argument of
    :class:`ImageFolderExpressions`.
    """
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                out.append(normalize_relpath(text, file=path, line=line_no))
    return out


# --------------------------------------------------------------------------------------------
# Images and transforms
# --------------------------------------------------------------------------------------------


def check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """Validate an ``(H, W)`` size argument; ``None`` passes through."""
    if image_size is None:
        return None
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(
            f"image_size must be (height, width) with positive ints, got {image_size}"
        )
    return size[0], size[1]


class ToUint8Tensor:
    """The default transform: an RGB PIL image to a uint8 tensor 3 x H x W (optionally resized).

    Args:
        image_size: ``(H, W)`` to resize to (bilinear), or ``None`` to keep the size.
    """

    def __init__(self, image_size: Sequence[int] | None = None) -> None:
        self.image_size = check_image_size(image_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Convert (and resize) one image."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.image_size is not None and image.size != (self.image_size[1], self.image_size[0]):
            image = image.resize(
                (self.image_size[1], self.image_size[0]), Image.Resampling.BILINEAR
            )
        # transpose in numpy: torch's permute().contiguous() on small uint8 tensors can be
        # hundreds of times slower when its intra-op threads compete for busy cores
        array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        return torch.from_numpy(array)

    def __repr__(self) -> str:
        return f"ToUint8Tensor(image_size={self.image_size})"


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as an RGB PIL image, or raise :class:`DatasetError` naming the file."""
    try:
        with Image.open(path, formats=open_formats()) as im:  # never EPS: see open_formats
            im.load()
            return im.convert("RGB")
    except _IMAGE_ERRORS as exc:
        raise DatasetError(f"cannot read image {os.fspath(path)!r}: {exc}") from exc


def _decode_one(path: str) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    try:
        array = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR) if data.size else None
    except cv2.error:  # a header OpenCV rejects (e.g. a damaged size): let PIL say what is wrong
        array = None
    if array is None:  # a format OpenCV does not read: fall back to PIL
        with Image.open(path, formats=open_formats()) as im:
            im.load()
            keep = im.mode if im.mode in ("L", "RGB") else "RGB"
            return np.asarray(im.convert(keep), dtype=np.uint8)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(array, dtype=np.uint8)


def decode_images(paths: Sequence[str], *, threads: int = 1) -> list[np.ndarray]:
    """Decode image files to uint8 arrays: H x W for grey images, H x W x 3 (RGB) otherwise.

    Args:
        paths: the files.
        threads: decoding threads. One is the default: for small images (FER2013's 48 x 48)
            more threads were slower on a busy 2-core machine; try more on a large idle one.
    """
    workers = max(1, int(threads))

    def decode(path: str) -> np.ndarray:
        try:
            return _decode_one(path)
        except _IMAGE_ERRORS as exc:
            raise DatasetError(f"cannot read image {path!r}: {exc}") from exc

    if workers <= 1 or len(paths) < 64:
        return [decode(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(decode, paths, chunksize=256))


# --------------------------------------------------------------------------------------------
# CSV reading
# --------------------------------------------------------------------------------------------


def iter_csv(path: str | os.PathLike[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, cells)`` of a CSV file (1-based physical line of the row's start).

    Blank lines are skipped. A CSV syntax error raises :class:`DatasetError` naming the line.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        start = 1
        try:
            for row in reader:
                line = start
                start = reader.line_num + 1
                if not row or all(not c.strip() for c in row):
                    continue
                yield line, row
        except csv.Error as exc:
            raise DatasetError(f"{where(path, start)}: malformed CSV: {exc}") from exc


def csv_with_header(
    path: str | os.PathLike[str], *, empty: str
) -> tuple[Iterator[tuple[int, list[str]]], int, list[str]]:
    """Open a CSV file whose first row is a header: ``(rows after it, its line, its names)``.

    The names are stripped of surrounding spaces. A file with no row at all raises
    :class:`DatasetError` ``"<file>:1: <empty>"``.
    """
    rows = iter_csv(path)
    first = next(rows, None)
    if first is None:
        raise DatasetError(f"{where(path, 1)}: {empty}")
    header_line, header = first
    return rows, header_line, [c.strip() for c in header]


def parse_float(text: str, *, column: str, file: str | os.PathLike[str], line: int) -> float:
    """Parse a number cell or raise :class:`DatasetError` naming the file, line and column."""
    try:
        return float(text)
    except ValueError:
        raise DatasetError(
            f"{where(file, line)}: column {column!r} holds {text!r}, which is not a number"
        ) from None


def parse_int(text: str, *, column: str, file: str | os.PathLike[str], line: int) -> int:
    """Parse an integer cell (``'3'`` or ``'3.0'``) or raise :class:`DatasetError`."""
    try:
        return int(text)
    except ValueError:
        value = parse_float(text, column=column, file=file, line=line)
        if not value.is_integer():
            raise DatasetError(
                f"{where(file, line)}: column {column!r} holds {text!r}, which is not an integer"
            ) from None
        return int(value)


def check_columns(
    row: Sequence[str], expected: int, *, file: str | os.PathLike[str], line: int
) -> None:
    """Raise :class:`DatasetError` unless ``row`` has ``expected`` cells."""
    if len(row) != expected:
        raise DatasetError(
            f"{where(file, line)}: expected {expected} columns, found {len(row)}: "
            f"{','.join(row)[:120]!r}"
        )


_AU_COLUMN = re.compile(r"^au0*(\d+)(_c)?$", re.IGNORECASE)


def unknown_au_columns(names: Sequence[str]) -> list[str]:
    """The columns among ``names`` that name an action unit outside ACTION_UNITS (``AU5``,
    ``AU09_c``): labels no affectfpn model can learn, which a reader ignores (intensity
    columns, ``AU01_r``, are not listed)."""
    out = []
    for name in names:
        m = _AU_COLUMN.match(name.strip())
        if m is not None and f"AU{int(m.group(1))}" not in ACTION_UNITS:
            out.append(name.strip())
    return out


def au_column_index(name: str) -> int | None:
    """Map an AU column name (``AU1``, ``AU01``, ``AU01_c``) to its ACTION_UNITS index.

    Returns ``None`` for other names, for AUs outside ACTION_UNITS and for intensity columns
    (``AU01_r``).
    """
    m = _AU_COLUMN.match(name.strip())
    if m is None:
        return None
    au = f"AU{int(m.group(1))}"
    return ACTION_UNITS.index(au) if au in ACTION_UNITS else None


# --------------------------------------------------------------------------------------------
# Base dataset
# --------------------------------------------------------------------------------------------


class LabelArraysMixin:
    """The label accessors of a dataset that holds its labels as one :class:`LabelArrays`."""

    _labels: LabelArrays

    @property
    def emits_expression_soft(self) -> bool:
        """Whether samples carry ``"expression_soft"`` (float32 [7])."""
        return self._labels.expression_soft is not None

    def label_arrays(self) -> LabelArrays:
        """The labels of all samples (no image is read)."""
        return self._labels

    def masks(self) -> dict[str, np.ndarray]:
        """Per-sample masks: ``{"va": bool[N], "expression": bool[N], "au": bool[N, 12]}``."""
        return {
            "va": self._labels.va_mask,
            "expression": self._labels.expression_mask,
            "au": self._labels.au_mask,
        }

    def counts(self) -> dict[str, int]:
        """Numbers of samples and valid labels (see :func:`label_counts`), e.g. for logging."""
        return label_counts(self._labels)


class LabelledDataset(LabelArraysMixin, Dataset[Sample]):
    """Label bookkeeping shared by every dataset here: keys, label arrays, masks, counts.

    Subclasses set ``self._labels`` (:class:`LabelArrays`) and either ``self._keys_cache`` or
    :meth:`key`.
    """

    #: Short name used in log lines and summaries.
    name: str = "dataset"
    _keys_cache: list[str] | None = None

    def key(self, index: int) -> str:
        """Return the unique, stable key of sample ``index``."""
        if self._keys_cache is None:
            raise NotImplementedError
        return self._keys_cache[index]

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def keys(self) -> list[str]:
        """The sample keys, in index order."""
        if self._keys_cache is None:
            self._keys_cache = [self.key(i) for i in range(len(self))]
        return self._keys_cache

    def labels_summary(self) -> str:
        """A few lines describing the samples and their labels."""
        return format_counts(self.name, self.counts())

    def _index(self, index: int) -> int:
        i = int(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {self.name} with {n} samples")
        return i

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"


class AffectDataset(LabelledDataset):
    """Base class of the image datasets: labels in arrays, images read on access.

    Subclasses set ``self._labels`` and implement :meth:`key` (or set ``self._keys_cache``) and
    :meth:`load_image`.

    Args:
        transform: applied to the RGB PIL image; default: uint8 tensor 3 x H x W.
        image_size: ``(H, W)``; the image is resized to it before ``transform`` (so the default
            transform yields this size).
    """

    def __init__(
        self, transform: Transform | None = None, image_size: Sequence[int] | None = None
    ) -> None:
        self.image_size = check_image_size(image_size)
        self.transform: Transform = transform if transform is not None else ToUint8Tensor()
        self._labels = LabelArrays.empty(0)
        self._keys_cache = None

    def load_image(self, index: int) -> Image.Image:
        """Return the (cropped) RGB PIL image of sample ``index``, before any resize/transform."""
        raise NotImplementedError

    def _sample_image(self, index: int) -> Image.Image:
        """The image as read for a sample: RGB, or ``L`` (grey) when that is cheaper to resize."""
        return self.load_image(index)

    def __getitem__(self, index: int) -> Sample:
        i = self._index(index)
        image = self._sample_image(i)
        if self.image_size is not None:
            h, w = self.image_size
            if image.size != (w, h):
                image = image.resize((w, h), Image.Resampling.BILINEAR)
        if image.mode != "RGB":
            image = image.convert("RGB")
        sample: Sample = {"image": self.transform(image), "key": self.key(i)}
        sample.update(self._labels.row(i))
        return sample


def finish_missing(
    missing: list[str], on_missing: OnMissing, *, what: str, file: str | os.PathLike[str]
) -> None:
    """Log (``"skip"``) or raise (``"error"``) about annotated images whose files do not exist."""
    if not missing:
        return
    shown = ", ".join(repr(m) for m in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    if on_missing == "error":
        raise DatasetError(
            f"{os.fspath(file)}: {len(missing)} annotated image(s) do not exist under the {what} "
            f"root: {shown}{more}; fix the root, or pass on_missing='skip'"
        )
    logger.warning(
        "%s: skipped %d annotated image(s) with no file: %s%s",
        os.fspath(file),
        len(missing),
        shown,
        more,
    )


def check_on_missing(on_missing: str) -> OnMissing:
    """Validate the ``on_missing`` argument."""
    if on_missing not in ("skip", "error"):
        raise ConfigError(f"on_missing must be 'skip' or 'error', got {on_missing!r}")
    return "skip" if on_missing == "skip" else "error"
