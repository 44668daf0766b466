"""Still-image datasets: AffectNet, ExpW, expression ImageFolders (FER2013) and user CSVs."""

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from affectfpn.data.common import (
    IMAGE_EXTENSIONS,
    NUM_AUS,
    NUM_EXPRESSIONS,
    AffectDataset,
    LabelArrays,
    OnMissing,
    Transform,
    au_column_index,
    check_columns,
    check_entry_inside,
    check_on_missing,
    csv_with_header,
    decode_images,
    expression_from_name,
    finish_missing,
    iter_csv,
    normalize_relpath,
    open_rgb,
    parse_float,
    parse_int,
    real_dir,
    resolve_inside,
    unknown_au_columns,
    where,
)
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.preprocess import DEFAULT_BOX_MARGIN, crop_face_box

logger = logging.getLogger("affectfpn.recipes.datasets")

#: AffectNet's expression classes 0..6 in its own order (7..10: Contempt, None, Uncertain, No-Face).
AFFECTNET_EXPRESSIONS: tuple[str, ...] = (
    "Neutral",
    "Happiness",
    "Sadness",
    "Surprise",
    "Fear",
    "Disgust",
    "Anger",
)
#: ExpW's expression classes 0..6, in its own order.
EXPW_EXPRESSIONS: tuple[str, ...] = (
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Neutral",
)

_AFFECTNET_TO_OURS = np.array([EXPRESSIONS.index(n) for n in AFFECTNET_EXPRESSIONS], np.int64)
_EXPW_TO_OURS = np.array([EXPRESSIONS.index(n) for n in EXPW_EXPRESSIONS], np.int64)

_AFFECTNET_COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)


def _check_margin(margin: float) -> float:
    if not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"margin must be a non-negative fraction of the face box, got {margin}")
    return float(margin)


def _unique_key(key: str, seen: dict[str, int], line: int, file: str | os.PathLike[str]) -> str:
    """Return ``key``, or ``key@L<line>`` if it was already used (with a warning)."""
    if key not in seen:
        seen[key] = line
        return key
    logger.warning(
        "%s: %r already appeared on line %d; this row's key is %r",
        where(file, line),
        key,
        seen[key],
        f"{key}@L{line}",
    )
    key = f"{key}@L{line}"
    seen[key] = line
    return key


class _CroppedImages(AffectDataset):
    """Samples that are (optionally) a box cropped from an image file."""

    def _setup_crops(
        self, paths: list[str], keys: list[str], boxes: np.ndarray, crop: bool, margin: float
    ) -> None:
        self._paths = paths
        self._keys_cache = keys
        self._boxes = boxes
        self.crop = crop
        self.margin = margin

    def image_path(self, index: int) -> str:
        """The image file of sample ``index``."""
        return self._paths[index]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index``, cropped to its face box when ``crop``."""
        image = open_rgb(self._paths[index])
        if not self.crop:
            return image
        box = tuple(float(v) for v in self._boxes[index])
        try:  # the crop inference cuts around a box too (affectfpn.preprocess)
            return crop_face_box(image, box, self.margin)
        except ValueError as exc:
            raise DatasetError(f"{self._paths[index]}: {exc}; fix or drop that row") from None


class AffectNet(_CroppedImages):
    """AffectNet faces with expression and valence/arousal labels.

    The CSV has the columns ``subDirectory_filePath, face_x, face_y, face_width, face_height,
    facial_landmarks, expression, valence, arousal``. Expressions 0..6 are remapped from
    AffectNet's order (Neutral, Happiness, Sadness, Surprise, Fear, Disgust, Anger) to
    EXPRESSIONS order; 7..10 (Contempt, None, Uncertain, No-Face) give no expression label. VA is
    valid when both values lie in [-1, 1] (it is -2 for classes 8..10). A row with no valid label
    at all is dropped. The key is ``subDirectory_filePath`` (``@L<line>`` is appended if a path
    repeats).

    Args:
        root: the folder the ``subDirectory_filePath`` values are relative to.
        csv_path: the annotation CSV (``training.csv`` or ``validation.csv``).
        crop: crop the face box (``face_x, face_y, face_width, face_height``).
        margin: the face crop is the square around the box with side ``max(box width, box
            height) * (1 + margin)``, edges repeated beyond the image: the crop inference cuts
            around a detected box (:func:`affectfpn.preprocess.face_box_region`).
        on_missing: ``"skip"`` (log) or ``"error"`` for rows whose image file does not exist.
        transform: applied to the RGB PIL image; default: uint8 tensor 3 x H x W.
        image_size: ``(H, W)`` the image is resized to before ``transform``.

    Raises:
        DatasetError: a missing column, a malformed row, or a path leaving ``root`` (file and line
            named).
    """

    name = "affectnet"

    def __init__(
        self,
        root: str | os.PathLike[str],
        csv_path: str | os.PathLike[str],
        *,
        crop: bool = True,
        margin: float = DEFAULT_BOX_MARGIN,
        on_missing: OnMissing = "skip",
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(transform, image_size)
        margin = _check_margin(margin)
        on_missing = check_on_missing(on_missing)
        self.root = Path(root)
        self.csv_path = Path(csv_path)
        root_real = real_dir(self.root, "AffectNet image root")
        if not self.csv_path.is_file():
            raise DatasetError(f"AffectNet CSV {os.fspath(self.csv_path)!r} does not exist")

        rows = iter_csv(self.csv_path)
        header = next(rows, None)
        if header is None:
            raise DatasetError(f"{where(self.csv_path, 1)}: empty AffectNet CSV")
        names = [c.strip().lower() for c in header[1]]
        missing_cols = [c for c in _AFFECTNET_COLUMNS if c.lower() not in names]
        if missing_cols:
            raise DatasetError(
                f"{where(self.csv_path, header[0])}: AffectNet header lacks {missing_cols}; "
                f"expected {','.join(_AFFECTNET_COLUMNS)}"
            )
        col = {c: names.index(c.lower()) for c in _AFFECTNET_COLUMNS}

        paths: list[str] = []
        keys: list[str] = []
        boxes: list[tuple[float, float, float, float]] = []
        va_list: list[tuple[float, float]] = []
        va_ok_list: list[bool] = []
        expr_list: list[int] = []
        missing: list[str] = []
        seen: dict[str, int] = {}
        n_unlabelled = 0
        for line, cells in rows:
            check_columns(cells, len(names), file=self.csv_path, line=line)

            def num(column: str, cells: list[str] = cells, line: int = line) -> float:
                return parse_float(cells[col[column]], column=column, file=self.csv_path, line=line)

            x, y, w, h = num("face_x"), num("face_y"), num("face_width"), num("face_height")
            expression = parse_int(
                cells[col["expression"]], column="expression", file=self.csv_path, line=line
            )
            if not 0 <= expression <= 10:
                raise DatasetError(
                    f"{where(self.csv_path, line)}: expression {expression} is not an AffectNet "
                    "class (0..10)"
                )
            va = (num("valence"), num("arousal"))
            va_ok = all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in va)
            if expression > 6 and not va_ok:
                n_unlabelled += 1
                continue
            if crop and not (w > 0 and h > 0 and math.isfinite(x) and math.isfinite(y)):
                raise DatasetError(
                    f"{where(self.csv_path, line)}: face box ({x}, {y}, {w}, {h}) is empty"
                )
            rel, full = resolve_inside(
                root_real, cells[col["subDirectory_filePath"]], file=self.csv_path, line=line
            )
            if not os.path.isfile(full):
                missing.append(rel)
                continue
            paths.append(full)
            keys.append(_unique_key(rel, seen, line, self.csv_path))
            boxes.append((x, y, x + w, y + h))
            va_list.append(va if va_ok else (0.0, 0.0))
            va_ok_list.append(va_ok)
            expr_list.append(expression)
        finish_missing(missing, on_missing, what="AffectNet", file=self.csv_path)

        n = len(paths)
        labels = LabelArrays.empty(n)
        if n:
            raw = np.array(expr_list, np.int64)
            labels.expression_mask[:] = raw <= 6
            labels.expression[:] = np.where(raw <= 6, _AFFECTNET_TO_OURS[np.minimum(raw, 6)], 0)
            labels.va[:] = np.array(va_list, np.float32)
            labels.va_mask[:] = np.array(va_ok_list, bool)
            labels.clean()
        self._labels = labels
        self._setup_crops(paths, keys, np.array(boxes, np.float32).reshape(-1, 4), crop, margin)
        self._labels.validate()
        logger.info(
            "AffectNet %s: %d samples (%d rows without a valid label dropped, %d missing images)",
            os.fspath(self.csv_path),
            n,
            n_unlabelled,
            len(missing),
        )


class ExpW(_CroppedImages):
    """ExpW (Expression in-the-Wild): one sample per annotated face.

    Each line of the label file is ``image_name face_id top left right bottom confidence label``
    with labels 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral (remapped to
    EXPRESSIONS order). The faces of one image are separate samples with keys
    ``"image_name#face_id"``. ExpW has no VA or AU labels.

    Args:
        root: the ExpW folder.
        label_file: the label list, relative to ``root`` (or absolute).
        images: the image folder, relative to ``root`` (or absolute).
        crop: crop the face box.
        margin: the face crop is the square around the box with side ``max(box width, box
            height) * (1 + margin)``, edges repeated beyond the image: the crop inference cuts
            around a detected box (:func:`affectfpn.preprocess.face_box_region`).
        min_confidence: drop faces whose box confidence is below this value.
        on_missing: ``"skip"`` (log) or ``"error"`` for lines whose image file does not exist.
        transform: applied to the RGB PIL image; default: uint8 tensor 3 x H x W.
        image_size: ``(H, W)`` the image is resized to before ``transform``.

    Raises:
        DatasetError: a malformed line, or an image name leaving the image folder (file and line
            named).
    """

    name = "expw"

    def __init__(
        self,
        root: str | os.PathLike[str],
        label_file: str | os.PathLike[str] = "label/label.lst",
        images: str | os.PathLike[str] = "image/origin",
        *,
        crop: bool = True,
        margin: float = DEFAULT_BOX_MARGIN,
        min_confidence: float | None = None,
        on_missing: OnMissing = "skip",
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(transform, image_size)
        margin = _check_margin(margin)
        on_missing = check_on_missing(on_missing)
        self.root = Path(root)
        self.label_file = self.root / label_file
        images_real = real_dir(self.root / images, "ExpW image folder")
        if not self.label_file.is_file():
            raise DatasetError(f"ExpW label file {os.fspath(self.label_file)!r} does not exist")

        paths: list[str] = []
        keys: list[str] = []
        boxes: list[tuple[float, float, float, float]] = []
        expr: list[int] = []
        missing: list[str] = []
        seen: dict[str, int] = {}
        n_low = 0
        file = self.label_file
        with open(file, encoding="utf-8-sig") as f:
            for line, text in enumerate(f, start=1):
                cells = text.split()
                if not cells:
                    continue
                check_columns(cells, 8, file=file, line=line)
                face_id = parse_int(cells[1], column="face_id", file=file, line=line)
                top, left, right, bottom = (
                    parse_float(c, column=n, file=file, line=line)
                    for c, n in zip(cells[2:6], ("top", "left", "right", "bottom"), strict=True)
                )
                confidence = parse_float(cells[6], column="confidence", file=file, line=line)
                label = parse_int(cells[7], column="expression_label", file=file, line=line)
                if not 0 <= label < NUM_EXPRESSIONS:
                    raise DatasetError(
                        f"{where(file, line)}: expression label {label} is not an ExpW class (0..6)"
                    )
                if crop and not (right > left and bottom > top):
                    raise DatasetError(
                        f"{where(file, line)}: face box top={top} left={left} right={right} "
                        f"bottom={bottom} is empty"
                    )
                if min_confidence is not None and confidence < min_confidence:
                    n_low += 1
                    continue
                rel, full = resolve_inside(images_real, cells[0], file=file, line=line)
                if not os.path.isfile(full):
                    missing.append(rel)
                    continue
                paths.append(full)
                keys.append(_unique_key(f"{rel}#{face_id}", seen, line, file))
                boxes.append((left, top, right, bottom))
                expr.append(label)
        finish_missing(missing, on_missing, what="ExpW", file=file)

        labels = LabelArrays.empty(len(paths))
        if paths:
            labels.expression[:] = _EXPW_TO_OURS[np.array(expr, np.int64)]
            labels.expression_mask[:] = True
        self._labels = labels
        self._setup_crops(paths, keys, np.array(boxes, np.float32).reshape(-1, 4), crop, margin)
        self._labels.validate()
        logger.info(
            "ExpW: %d faces (%d below min_confidence, %d missing images)",
            len(paths),
            n_low,
            len(missing),
        )


def _walk_images(folder: str, real_root: str, extensions: tuple[str, ...], out: list[str]) -> None:
    """Append the image files under ``folder`` (sorted, recursive) to ``out``."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        check_entry_inside(entry, real_root, "file")
        if entry.is_dir():
            _walk_images(entry.path, real_root, extensions, out)
        elif entry.name.lower().endswith(extensions) and entry.is_file():
            out.append(entry.path)


def _stack_cache(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One uint8 array when all images share a size (grey kept as N x H x W), else a list."""
    if not arrays:
        return np.zeros((0, 1, 1), np.uint8)
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) != 1:
        return arrays
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)
    return np.stack([np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays])


class ImageFolderExpressions(AffectDataset):
    """Expression-labelled images in class folders: ``<root>/<class>/**/<image>``.

    Folder names map to EXPRESSIONS case-insensitively, with synonyms (angry/anger,
    disgust/disgusted, fear/fearful, happy/happiness, neutral, sad/sadness, surprise/surprised),
    so FER2013's ``{train,val,test}`` folders work as they are. The key is the path relative to
    ``root`` (``"angry/PublicTest_123.jpg"``).

    Args:
        root: the folder of class folders.
        class_map: folder name -> expression name or index (``None`` skips the folder), instead
            of the default names.
        cache: decode every image once into memory: one uint8 array when all images share a size
            (grey images kept as one channel and expanded to RGB on access).
        exclude: relative paths to leave out, relative to ``root`` or to its parent (so the lines
            of FER2013's ``overlap_with_train.txt``, like ``val/angry/x.jpg``, work for
            ``root=.../val``); see :func:`read_path_list`.
        extensions: file name endings read as images.
        cache_threads: threads decoding images for the cache.
        transform: applied to the RGB PIL image; default: uint8 tensor 3 x H x W.
        image_size: ``(H, W)`` the image is resized to before ``transform``.

    Raises:
        DatasetError: an unknown class folder (with the ``class_map`` fix), no images, or a
            symbolic link out of ``root``.
    """

    name = "imagefolder"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        class_map: Mapping[str, str | int | None] | None = None,
        cache: bool = False,
        exclude: Iterable[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        cache_threads: int = 1,
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(transform, image_size)
        self.root = Path(root)
        real_root = real_dir(self.root, "image folder root")
        ext = tuple(e.lower() for e in extensions)
        mapping = None
        if class_map is not None:
            mapping = {k.lower(): v for k, v in class_map.items()}
        excluded = set()
        if exclude is not None:
            excluded = {normalize_relpath(p, file="exclude", line=None) for p in exclude}
        top_names = {Path(real_root).name, self.root.name}

        paths: list[str] = []
        keys: list[str] = []
        classes: list[int] = []
        n_excluded = 0
        self.class_to_index: dict[str, int] = {}
        for entry in sorted(os.scandir(real_root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            check_entry_inside(entry, real_root, "class folder")
            index = self._class_index(entry.name, mapping)
            if index is None:
                logger.info("%s: class folder %r skipped (class_map)", real_root, entry.name)
                continue
            self.class_to_index[entry.name] = index
            files: list[str] = []
            _walk_images(entry.path, real_root, ext, files)
            for full in files:
                key = Path(os.path.relpath(full, real_root)).as_posix()
                if key in excluded or any(f"{t}/{key}" in excluded for t in top_names):
                    n_excluded += 1
                    continue
                paths.append(full)
                keys.append(key)
                classes.append(index)
        if not paths:
            raise DatasetError(
                f"no images with endings {ext} in class folders under {real_root!r}"
                + (" (all excluded)" if n_excluded else "")
            )
        if excluded and not n_excluded:
            logger.warning(
                "%s: none of the %d exclude paths matched an image; give paths relative to the "
                "root or to its parent",
                real_root,
                len(excluded),
            )
        self._paths = paths
        self._keys_cache = keys
        labels = LabelArrays.empty(len(paths))
        labels.expression[:] = np.array(classes, np.int64)
        labels.expression_mask[:] = True
        self._labels = labels
        self._labels.validate()
        self.n_excluded = n_excluded
        self.cache_seconds: float | None = None
        self._cache: np.ndarray | list[np.ndarray] | None = None
        if cache:
            start = time.perf_counter()
            self._cache = _stack_cache(decode_images(paths, threads=cache_threads))
            self.cache_seconds = time.perf_counter() - start
            nbytes = (
                self._cache.nbytes
                if isinstance(self._cache, np.ndarray)
                else sum(a.nbytes for a in self._cache)
            )
            logger.info(
                "%s: cached %d images (%.1f MB) in %.1f s",
                real_root,
                len(paths),
                nbytes / 1e6,
                self.cache_seconds,
            )
        logger.info("%s: %d images (%d excluded)", real_root, len(paths), n_excluded)

    @staticmethod
    def _class_index(folder: str, mapping: Mapping[str, str | int | None] | None) -> int | None:
        if mapping is None:
            index = expression_from_name(folder)
            if index is None:
                raise DatasetError(
                    f"class folder {folder!r} is not an expression name; pass "
                    f"class_map={{{folder!r}: <one of {list(EXPRESSIONS)}>, ...}} "
                    f"(or {{{folder!r}: None}} to skip it)"
                )
            return index
        if folder.lower() not in mapping:
            raise DatasetError(
                f"class folder {folder!r} is not in class_map; add {folder!r}: <expression name "
                "or index>, or None to skip it"
            )
        value = mapping[folder.lower()]
        if value is None:
            return None
        if isinstance(value, str):
            index = expression_from_name(value)
            if index is None:
                raise ConfigError(
                    f"class_map[{folder!r}] = {value!r} is not one of {list(EXPRESSIONS)}"
                )
            return index
        if isinstance(value, bool) or not 0 <= int(value) < NUM_EXPRESSIONS:
            raise ConfigError(f"class_map[{folder!r}] = {value!r} is not an index 0..6")
        return int(value)

    @property
    def cached(self) -> bool:
        """Whether the images are held in memory."""
        return self._cache is not None

    @property
    def cached_images(self) -> np.ndarray | list[np.ndarray] | None:
        """The decoded images when ``cache=True``: uint8 N x H x W (all grey) or N x H x W x 3
        when all share a size, else a list of arrays; ``None`` without cache."""
        return self._cache

    def image_path(self, index: int) -> str:
        """The image file of sample ``index``."""
        return self._paths[index]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` (from memory when cached)."""
        return self._sample_image(index).convert("RGB")

    def _sample_image(self, index: int) -> Image.Image:
        # cached grey images stay grey until after the resize (a third of the work)
        if self._cache is None:
            return open_rgb(self._paths[index])
        return Image.fromarray(self._cache[index])


class LabelCSV(AffectDataset):
    """A user's table of image paths and labels.

    Columns (header names are case-insensitive; other columns are ignored):

    * ``path`` (required): the image, relative to ``root`` (default: the CSV's folder);
    * ``valence`` and ``arousal`` (both or neither): in [-1, 1]; -5 or any value outside gives no
      VA label;
    * ``expression``: a name from EXPRESSIONS or a synonym (``happy``), or an index 0..6; -1 is no
      label;
    * action units: ``AU1`` .. ``AU26`` or OpenFace style ``AU01`` / ``AU01_c``; 0/1 or a
      probability in [0, 1]; -1 is no label. AUs outside ACTION_UNITS (``AU5``) are ignored
      with a warning that names them; intensity columns (``AU01_r``) are ignored.

    An empty cell is a missing label. The key is the path as written (POSIX form); a path may
    appear only once.

    Args:
        csv_path: the CSV file.
        root: the folder the paths are relative to (default: the CSV's folder).
        on_missing: ``"skip"`` (log) or ``"error"`` for rows whose image file does not exist.
        transform: applied to the RGB PIL image; default: uint8 tensor 3 x H x W.
        image_size: ``(H, W)`` the image is resized to before ``transform``.

    Raises:
        DatasetError: a missing ``path`` column, a malformed row or a path leaving ``root`` (file
            and line named).
    """

    name = "csv"

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        *,
        on_missing: OnMissing = "skip",
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(transform, image_size)
        on_missing = check_on_missing(on_missing)
        self.csv_path = file = Path(csv_path)
        if not file.is_file():
            raise DatasetError(f"label CSV {os.fspath(file)!r} does not exist")
        self.root = Path(root) if root is not None else file.parent
        real_root = real_dir(self.root, "LabelCSV root")

        rows, header_line, names = csv_with_header(
            file, empty="empty CSV (expected a header with 'path')"
        )
        lower = [n.lower() for n in names]
        if "path" not in lower:
            raise DatasetError(f"{where(file, header_line)}: no 'path' column in header {names}")
        c_path = lower.index("path")
        c_val = lower.index("valence") if "valence" in lower else None
        c_aro = lower.index("arousal") if "arousal" in lower else None
        if (c_val is None) != (c_aro is None):
            raise DatasetError(
                f"{where(file, header_line)}: a 'valence' column needs an 'arousal' column and "
                "the other way round"
            )
        c_expr = lower.index("expression") if "expression" in lower else None
        au_cols: dict[int, int] = {}
        for c, name in enumerate(names):
            j = au_column_index(name)
            if j is None:
                continue
            if j in au_cols:
                raise DatasetError(
                    f"{where(file, header_line)}: columns {names[au_cols[j]]!r} and {name!r} "
                    f"both give {ACTION_UNITS[j]}; keep one"
                )
            au_cols[j] = c
        unknown = unknown_au_columns(names)
        if unknown:
            logger.warning(
                "%s: column(s) %s name action units that affectfpn does not learn (it learns %s): "
                "ignored",
                os.fspath(file),
                ", ".join(unknown),
                ", ".join(ACTION_UNITS),
            )

        paths: list[str] = []
        keys: list[str] = []
        va_rows: list[tuple[float, float] | None] = []
        ex_rows: list[int | None] = []
        au_rows: list[list[float | None]] = []
        seen: dict[str, int] = {}
        missing: list[str] = []
        invalid_va: list[int] = []
        for line, cells in rows:
            check_columns(cells, len(names), file=file, line=line)
            rel, full = resolve_inside(real_root, cells[c_path], file=file, line=line)
            va: tuple[float, float] | None = None
            if c_val is not None and c_aro is not None:
                v, a = cells[c_val].strip(), cells[c_aro].strip()
                if v and a:
                    pair = (
                        parse_float(v, column=names[c_val], file=file, line=line),
                        parse_float(a, column=names[c_aro], file=file, line=line),
                    )
                    if all(math.isfinite(x) and -1.0 <= x <= 1.0 for x in pair):
                        va = pair
                    else:
                        invalid_va.append(line)
            ex = None if c_expr is None else self._expression(cells[c_expr], file, line)
            aus: list[float | None] = [None] * NUM_AUS
            for j, c in au_cols.items():
                aus[j] = self._au(cells[c], names[c], file, line)
            if rel in seen:
                raise DatasetError(
                    f"{where(file, line)}: path {rel!r} already appeared on line {seen[rel]}; "
                    "each image may appear once"
                )
            seen[rel] = line
            if not os.path.isfile(full):
                missing.append(rel)
                continue
            paths.append(full)
            keys.append(rel)
            va_rows.append(va)
            ex_rows.append(ex)
            au_rows.append(aus)
        finish_missing(missing, on_missing, what="CSV", file=file)
        if invalid_va:
            logger.warning(
                "%s: %d row(s) have valence/arousal outside [-1, 1] (e.g. -5 markers), read as no "
                "VA label; first on line %d",
                os.fspath(file),
                len(invalid_va),
                invalid_va[0],
            )

        labels = LabelArrays.empty(len(paths))
        for i, (va, ex, aus) in enumerate(zip(va_rows, ex_rows, au_rows, strict=True)):
            if va is not None:
                labels.va[i], labels.va_mask[i] = va, True
            if ex is not None:
                labels.expression[i], labels.expression_mask[i] = ex, True
            for j, value in enumerate(aus):
                if value is not None:
                    labels.au[i, j], labels.au_mask[i, j] = value, True
        self._labels = labels
        self._labels.validate()
        self._paths = paths
        self._keys_cache = keys
        logger.info("%s: %d samples", os.fspath(file), len(paths))

    @staticmethod
    def _expression(cell: str, file: Path, line: int) -> int | None:
        text = cell.strip()
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            index = expression_from_name(text)
            if index is None:
                raise DatasetError(
                    f"{where(file, line)}: expression {text!r} is neither a name from "
                    f"{list(EXPRESSIONS)} nor an index 0..6"
                ) from None
            return index
        if value == -1:
            return None
        if not 0 <= value < NUM_EXPRESSIONS:
            raise DatasetError(
                f"{where(file, line)}: expression index {value} is outside 0..6 (-1: no label)"
            )
        return value

    @staticmethod
    def _au(cell: str, column: str, file: Path, line: int) -> float | None:
        text = cell.strip()
        if not text:
            return None
        value = parse_float(text, column=column, file=file, line=line)
        if value == -1.0:
            return None
        if not 0.0 <= value <= 1.0:
            raise DatasetError(
                f"{where(file, line)}: column {column!r} holds {text!r}; AU labels are 0/1 or a "
                "probability in [0, 1] (-1 or empty: no label)"
            )
        return value

    def image_path(self, index: int) -> str:
        """The image file of sample ``index``."""
        return self._paths[index]

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index``."""
        return open_rgb(self._paths[index])
