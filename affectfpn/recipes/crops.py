"""Face crops from your own photos, cut as ``predict`` cuts them: fine-tuning data for a camera.

Fine-tuning reads face crops (``affectfpn finetune`` takes folders of them, or a label CSV), but
photos from a camera hold whole scenes. :func:`crop_faces` (``affectfpn crops``) finds the face
in each photo with the same detector and alignment as ``predict``, at the model's input size,
and writes it as a PNG, so the faces a model is fine-tuned on are framed exactly as the faces it
will be asked about: a crop predicted with ``faces="crop"`` gives what ``predict`` gives that
face in the photo.

* A folder of photos (searched recursively) gives a folder of crops with the same relative
  paths, so expression class folders carry over: ``photos/train/happy/img1.jpg`` becomes
  ``crops/train/happy/img1.png``.
* A label CSV (a ``path`` column, any label columns) gives the crops and a copy of the CSV whose
  paths point at them; every other column is copied as it is.

Photos without a face are listed in ``no-face.txt`` (and left out of the CSV); with
``faces="largest"`` (the default) a photo with several faces gives its largest, with
``faces="all"`` every face (``img1-1.png``, ``img1-2.png``, ... largest first; folders only,
since a label belongs to one face).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from affectfpn.errors import ConfigError, InputError
from affectfpn.io import atomic_write, list_images

logger = logging.getLogger("affectfpn.recipes.crops")

#: How :func:`crop_faces` treats a photo with several faces.
CROP_FACES: tuple[str, ...] = ("largest", "all")
#: The list of photos in which no face was found, written in the output folder.
NO_FACE_FILE = "no-face.txt"


@dataclass
class CropReport:
    """What :func:`crop_faces` did.

    Attributes:
        output_dir: The folder the crops were written to.
        photos: Photos read.
        written: Crops written.
        no_face: Photos (relative paths) in which no face was found.
        failed: ``(photo, error)`` of photos that could not be read.
        table: The CSV written beside the crops (a CSV input only).
    """

    output_dir: Path
    photos: int = 0
    written: int = 0
    no_face: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    table: Path | None = None

    def summary(self) -> str:
        """One line: what was read and written, and where."""
        parts = [f"{self.photos} photos, {self.written} face crops written to {self.output_dir}"]
        if self.no_face:
            parts.append(f"{len(self.no_face)} without a face (listed in {NO_FACE_FILE})")
        if self.failed:
            parts.append(f"{len(self.failed)} unreadable")
        if self.table is not None:
            parts.append(f"labels: {self.table}")
        return "; ".join(parts)


def _largest_first(boxes: tuple[tuple[float, float, float, float], ...]) -> list[int]:
    area = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
    return sorted(range(len(boxes)), key=lambda i: -area[i])


def _save_png(path: Path, crop: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(crop).save(tmp, format="PNG"))


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def _csv_rows(table: Path, root: Path) -> tuple[list[str], list[list[str]], list[Path]]:
    """The header, rows and resolved photo paths of a label CSV (paths inside ``root``)."""
    from affectfpn.data.common import check_columns, csv_with_header, resolve_inside

    rows, header_line, names = csv_with_header(table, empty="empty CSV (expected a 'path' header)")
    lower = [n.lower() for n in names]
    if "path" not in lower:
        raise InputError(f"{table}:{header_line}: no 'path' column in header {names}")
    column = lower.index("path")
    real_root = os.path.realpath(root)
    kept: list[list[str]] = []
    photos: list[Path] = []
    for line, cells in rows:
        check_columns(cells, len(names), file=table, line=line)
        _, full = resolve_inside(real_root, cells[column], file=table, line=line)
        kept.append(cells)
        photos.append(Path(full))
    return names, kept, photos


def crop_faces(
    source: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    model: Any = None,
    faces: str = "largest",
    detector: Any = "auto",
    root: str | os.PathLike[str] | None = None,
    on_error: str = "skip",
) -> CropReport:
    """Write the face of each photo of ``source`` as ``predict`` would see it.

    Args:
        source: A folder of photos (searched recursively) or a label CSV with a ``path`` column.
        output_dir: Where the crops go: not inside a source folder, not a CSV's own folder.
        model: The model whose input size and alignment the crops follow: an
            :class:`~affectfpn.AffectFPN`, a name, folder or Hub repo id (default: the embedded
            default model). Crops are meant for fine-tuning that model.
        faces: ``"largest"`` (one crop per photo) or ``"all"`` (folders only).
        detector: As for :class:`~affectfpn.inference.Predictor` (``"auto"``: YuNet).
        root: For a CSV, the folder its paths are relative to (default: the CSV's folder).
        on_error: ``"skip"`` (default: an unreadable photo is reported and left out) or
            ``"raise"``.

    Returns:
        A :class:`CropReport`.

    Raises:
        ConfigError: a bad option, or ``output_dir`` inside a source folder.
        InputError: ``source`` does not exist, holds no image, holds two photos of one name
            but for the extension, or is a CSV without a ``path`` column or with a path outside
            its root.
    """
    from affectfpn.inference.predictor import Predictor
    from affectfpn.models.affectfpn import AffectFPN

    if faces not in CROP_FACES:
        raise ConfigError(f"faces must be one of {list(CROP_FACES)}, got {faces!r}")
    src = Path(source).expanduser()
    out = Path(output_dir).expanduser()
    if not src.exists():
        raise InputError(f"{src} does not exist: give a folder of photos or a label CSV")
    is_csv = src.is_file() and src.suffix.lower() == ".csv"
    if not is_csv and not src.is_dir():
        raise InputError(f"{src} is neither a folder of photos nor a label .csv")
    if is_csv and faces != "largest":
        raise ConfigError(
            "a label CSV gives one label per photo: crop its largest face (faces='largest')"
        )
    base = Path(root).expanduser() if root is not None else (src.parent if is_csv else src)
    # a folder is listed recursively (a crop inside it would be a photo of the next run); a
    # CSV's crops and table must not replace its photos or itself
    if _inside(out, base) if not is_csv else out.resolve() == base.resolve():
        where = f"the CSV's own folder, {base}" if is_csv else f"inside {base}"
        raise ConfigError(
            f"the output folder {out} is {where}: put the crops elsewhere, so that the photos "
            "and their crops stay apart"
        )
    if not isinstance(model, AffectFPN):
        model = (
            AffectFPN.from_pretrained(model) if model is not None else AffectFPN.from_pretrained()
        )
    predictor = Predictor(model, detector=detector, on_error=on_error, progress=False)
    report = CropReport(out)
    if is_csv:
        names, rows, photos = _csv_rows(src, base)
    else:
        photos = list_images(src, recursive=True)
        names, rows = [], []
        if not photos:
            raise InputError(f"{src} holds no image (searched recursively)")
    relative = {str(p): Path(os.path.relpath(p, base)) for p in photos}
    seen: dict[Path, str] = {}
    for photo, rel in relative.items():  # a.jpg and a.png would write the same a.png
        other = seen.setdefault(rel.with_suffix(""), photo)
        if other != photo:
            raise InputError(
                f"{other} and {photo} would both be cropped to {rel.with_suffix('.png')}: "
                "rename one of them"
            )
    written: dict[str, Path] = {}
    items = predictor.face_crops([str(p) for p in photos]) if photos else iter(())
    for item in items:
        report.photos += 1
        rel = relative[item.source]
        if len(item.crops) == 0:
            report.no_face.append(rel.as_posix())
            continue
        order = _largest_first(item.boxes)
        if faces == "largest":
            target = out / rel.with_suffix(".png")
            _save_png(target, item.crops[order[0]])
            written[item.source] = target
            report.written += 1
        else:
            for n, i in enumerate(order, start=1):
                _save_png(out / rel.with_name(f"{rel.stem}-{n}.png"), item.crops[i])
                report.written += 1
    report.failed = list(predictor.failures)
    report.photos += len(report.failed)
    out.mkdir(parents=True, exist_ok=True)
    no_face = out / NO_FACE_FILE
    if report.no_face:
        no_face.write_text("\n".join(report.no_face) + "\n", encoding="utf-8")
    elif no_face.exists():
        no_face.unlink()  # from an earlier run
    if is_csv:
        report.table = out / src.name
        column = [n.lower() for n in names].index("path")

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(names)
                for cells, photo in zip(rows, photos, strict=True):
                    target = written.get(str(photo))
                    if target is not None:
                        row = list(cells)
                        row[column] = target.relative_to(out).as_posix()
                        writer.writerow(row)

        atomic_write(report.table, write)
    logger.info("%s", report.summary())
    return report
