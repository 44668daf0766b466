"""The inputs of a corpus job: what a folder, glob, list file or CSV names, in a stable order.

A corpus is enumerated whole before any work starts (a few dozen bytes per input), sorted by
path, without duplicates, so that every process of a sharded job sees the same list and
:func:`shard` gives each one a disjoint share. Files named in a list that do not exist are kept:
they become error rows when their turn comes, and the rest of the corpus goes on.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from affectfpn.errors import Hint, InputError
from affectfpn.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, has_glob_chars, is_video_path

__all__ = ["LIST_SUFFIXES", "CorpusInput", "list_inputs", "shard"]

#: Suffixes of list files: one path per line (``#`` starts a comment line).
LIST_SUFFIXES: frozenset[str] = frozenset({".txt", ".lst", ".list"})
#: Column names a CSV list may give its paths in (the first one found is used).
_CSV_COLUMNS = ("path", "input", "source", "file", "filename")
_MEDIA = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


@dataclass(frozen=True, slots=True, order=True)
class CorpusInput:
    """One input of a corpus: a photo or a video file.

    Attributes:
        path: The file's path as listed (joined to the folder of the list file that named it);
            it is the ``input`` column of the results and the key of the ledger.
        kind: ``"image"`` or ``"video"`` (by the file's suffix).
    """

    path: str
    kind: str


def _kind(path: str) -> str:
    return "video" if is_video_path(path) else "image"


def _is_media(name: str) -> bool:
    return Path(name).suffix.lower() in _MEDIA


def _walk(folder: Path, recursive: bool) -> Iterable[str]:
    """Image and video files of ``folder`` (hidden files and folders left out)."""
    if not recursive:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and _is_media(entry.name) and entry.is_file():
                    yield os.path.join(str(folder), entry.name)
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and _is_media(name):
                yield os.path.join(root, name)


def _joined(base: Path, entry: str) -> str:
    entry = os.path.expanduser(entry.strip())
    return entry if os.path.isabs(entry) else os.path.normpath(os.path.join(str(base), entry))


def _read_list(path: Path) -> Iterable[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: the list file cannot be read ({err})") from None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield _joined(path.parent, line)


def _read_csv(path: Path) -> Iterable[str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            column = next((c for c in _CSV_COLUMNS if c in fields), None)
            if column is None:
                raise InputError(
                    f"{path}: the CSV has no column of paths; name one of its columns "
                    f"{' or '.join(_CSV_COLUMNS)} (it has {', '.join(fields) or 'no header'})"
                )
            key = (reader.fieldnames or [])[fields.index(column)]
            entries = [row[key] for row in reader if (row.get(key) or "").strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: the CSV list cannot be read ({err})") from None
    return [_joined(path.parent, entry) for entry in entries]


def _expand(spec: str, recursive: bool) -> Iterable[str]:
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        found = list(_walk(path, recursive))
        if not found:
            raise InputError(
                f"{spec}: the folder holds no image or video file",
                hint=None if recursive else Hint("recursive", True, "to search sub-folders"),
            )
        return found
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in LIST_SUFFIXES:
            return list(_read_list(path))
        if suffix == ".csv":
            return _read_csv(path)
        return [spec]
    if has_glob_chars(spec):
        matches = [
            m
            for m in glob.iglob(os.path.expanduser(spec), recursive=recursive)
            if _is_media(m) and os.path.isfile(m)
        ]
        if not matches:
            raise InputError(f"{spec}: the glob pattern matches no image or video file")
        return matches
    raise InputError(
        f"{spec}: no such file or folder; pass a folder, a glob pattern, a list file "
        f"({', '.join(sorted(LIST_SUFFIXES))}: one path per line), a CSV with a 'path' column, "
        "or a photo or video"
    )


def list_inputs(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, recursive: bool = False
) -> list[CorpusInput]:
    """Every input of a corpus, sorted by path, each once.

    Args:
        inputs: A folder (its photos and videos), a glob pattern, a list file (``.txt``,
            ``.lst``, ``.list``: one path per line, relative to the list's folder), a CSV with a
            ``path`` column (or ``input``, ``source``, ``file``, ``filename``), a photo or video
            file, or a list of these.
        recursive: Search sub-folders of folders (and allow ``**`` in patterns).

    Returns:
        The inputs, sorted by path. Files a list names but that do not exist are kept; the job
        reports them as errors.

    Raises:
        InputError: A folder without photos or videos, a pattern that matches nothing, a path
            that does not exist, or a list file that cannot be read.
    """
    specs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not specs:
        raise InputError("no inputs given; pass a folder, a glob pattern, a list file or a CSV")
    found: set[str] = set()
    for spec in specs:
        found.update(_expand(os.fsdecode(os.fspath(spec)), recursive))
    return [CorpusInput(path, _kind(path)) for path in sorted(found)]


def shard(inputs: Sequence[CorpusInput], rank: int, world_size: int) -> list[CorpusInput]:
    """The share of process ``rank`` of ``world_size``: every ``world_size``-th input from
    ``rank`` on. The shares are disjoint, and together they are ``inputs``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not within a world of {world_size} process(es)")
    return list(inputs[rank::world_size])
