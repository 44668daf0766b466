"""The ledger of a corpus job: which inputs are finished, and in which parts their rows are.

The output folder of a job holds::

    job.json                           the model and the options (a resume must match them)
    rows/part-r00000-000001.parquet    rows of whole inputs, one file per commit (or .csv)
    errors/part-r00000-000001.parquet  inputs that failed in that commit, with the reason
    _ledger/rank-00000.jsonl           one line per commit of process 0: its parts and inputs

A commit writes its part files whole (:func:`affectfpn.io.atomic_write`: a temporary file
renamed into place, flushed to disk), then appends one line to the ledger of its process with
a single ``write`` and flushes it. The line is the commit: a part that no ledger line names (the
process was killed between the rename and the line) is left over, and is deleted before a
resume; a last line without its newline (killed while writing it) is not a commit and is cut
off. Each process writes its own ledger, so processes never write the same file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectfpn.errors import AffectFPNError, Hint

__all__ = [
    "ERRORS_DIR",
    "JOB_FILE",
    "LEDGER_DIR",
    "ROWS_DIR",
    "Commit",
    "JobError",
    "Ledger",
    "describe_differences",
]

JOB_FILE = "job.json"
ROWS_DIR = "rows"
ERRORS_DIR = "errors"
LEDGER_DIR = "_ledger"
_PART = re.compile(r"^part-r(\d{5})-(\d{6})\.(parquet|csv)$")
_ANY_PART = re.compile(r"^\.?part-r(\d{5})-\d{6}\.")
_LEDGER_FILE = re.compile(r"^rank-(\d{5})\.jsonl$")


class JobError(AffectFPNError):
    """A corpus job that cannot start or go on: an output folder that cannot be written (full
    disk, no permission), or a resume whose model or options differ from the job's. The
    message names the folder and the fix; the parts committed before stay readable."""


@dataclass(frozen=True)
class Commit:
    """One line of a ledger: the parts of one commit and the inputs they finish.

    Attributes:
        rows: The rows part, relative to the output folder (``None``: no rows).
        errors: The errors part, relative to the output folder (``None``: no error).
        inputs: Every input the commit finishes (with rows or with an error).
        row_count: Rows in the rows part.
    """

    rows: str | None
    errors: str | None
    inputs: tuple[str, ...]
    row_count: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "rows": self.rows,
                "errors": self.errors,
                "inputs": list(self.inputs),
                "row_count": self.row_count,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, line: str) -> Commit:
        data = json.loads(line)
        return cls(
            rows=data["rows"],
            errors=data["errors"],
            inputs=tuple(data["inputs"]),
            row_count=int(data["row_count"]),
        )


def describe_differences(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """What differs between a job's recorded settings and this run's, in key order.

    Returns message parts ``"{name} (the job has ...)"`` and their ``params`` (``name``: this
    run's value), for an :class:`~affectfpn.errors.AffectFPNError`: the library words a field
    as ``name=value``, the command line as its flag (``--au-threshold 0.7``).
    """
    keys = sorted(set(old) | set(new))
    differing = [key for key in keys if old.get(key) != new.get(key)]

    def braces(text: str) -> str:  # literal text inside a str.format message
        return text.replace("{", "{{").replace("}", "}}")

    parts = [f"{{{key}}} (the job has {braces(repr(old.get(key)))})" for key in differing]
    return parts, {key: new.get(key) for key in differing}


def _write_error(where: Path, err: OSError) -> JobError:
    reason = err.strerror or str(err)
    return JobError(
        f"{where}: cannot write ({reason}); the parts committed before are complete and "
        "readable. Free space or fix the permissions, then run again",
        hint=Hint("resume", True, "to do only what is left"),
    )


class Ledger:
    """The ledgers of a job's output folder, read whole; appends go to this process's own.

    Args:
        out: The job's output folder.
        rank: This process's rank (its ledger is ``_ledger/rank-<rank>.jsonl``).

    Attributes:
        done: Every input some commit finished, in any process's ledger.
        commits: Every commit, in ledger order (ledger files by rank).
    """

    def __init__(self, out: str | os.PathLike[str], rank: int = 0) -> None:
        self.out = Path(out)
        self.rank = rank
        self.path = self.out / LEDGER_DIR / f"rank-{rank:05d}.jsonl"
        self.done: set[str] = set()
        self.commits: list[Commit] = []
        self._torn: dict[Path, int] = {}  # ledger file -> length of its whole lines
        self._next = 1
        self.load()

    # -------------------------------------------------------------------------------- reading
    def load(self) -> None:
        """Read every process's ledger (a torn last line is no commit)."""
        self.done.clear()
        self.commits.clear()
        self._torn.clear()
        folder = self.out / LEDGER_DIR
        files = sorted(p for p in folder.glob("rank-*.jsonl") if _LEDGER_FILE.match(p.name))
        for path in files:
            data = path.read_bytes()
            whole = data.rfind(b"\n") + 1
            if whole != len(data):
                self._torn[path] = whole
            for line in data[:whole].decode("utf-8").splitlines():
                if line.strip():
                    commit = Commit.from_json(line)
                    self.commits.append(commit)
                    self.done.update(commit.inputs)
        used = [0]
        for name in self._part_names():
            match = _PART.match(Path(name).name)
            if match and int(match.group(1)) == self.rank:
                used.append(int(match.group(2)))
        self._next = max(used) + 1

    def _part_names(self) -> Iterable[str]:
        """Part files named by the ledgers, and those on disk (committed or not)."""
        for commit in self.commits:
            yield from (p for p in (commit.rows, commit.errors) if p is not None)
        for sub in (ROWS_DIR, ERRORS_DIR):
            folder = self.out / sub
            if folder.is_dir():
                yield from (f"{sub}/{name}" for name in os.listdir(folder))

    def committed_parts(self, kind: str = ROWS_DIR) -> list[Path]:
        """The committed part files of ``kind`` (``"rows"`` or ``"errors"``), in ledger order."""
        parts = [c.rows if kind == ROWS_DIR else c.errors for c in self.commits]
        return [self.out / p for p in parts if p is not None]

    # -------------------------------------------------------------------------------- repair
    def clean(self, world_size: int = 1) -> list[Path]:
        """Delete what no commit owns, and cut a torn last line off this process's ledger.

        Run before a process writes: it removes the part files (and temporary files) of this
        rank that no ledger line names; rank 0 also those of ranks ``>= world_size``, which no
        process of this run owns. Returns the files deleted.
        """
        owned = set(self._part_names_committed())
        removed: list[Path] = []
        for sub in (ROWS_DIR, ERRORS_DIR):
            folder = self.out / sub
            if not folder.is_dir():
                continue
            for name in os.listdir(folder):
                match = _ANY_PART.match(name)  # a part, or atomic_write's temporary file of one
                if match is None or f"{sub}/{name}" in owned:
                    continue
                if self._owns(int(match.group(1)), world_size):
                    (folder / name).unlink(missing_ok=True)
                    removed.append(folder / name)
        for path in [p for p in self._torn if self._owns(_rank_of(p), world_size)]:
            with path.open("rb+") as handle:
                handle.truncate(self._torn.pop(path))
                os.fsync(handle.fileno())
        return removed

    def _owns(self, rank: int, world_size: int) -> bool:
        """Whether this process repairs the files of ``rank``: its own, and rank 0 those of
        ranks that no process of this run has."""
        return rank == self.rank or (self.rank == 0 and rank >= world_size)

    def _part_names_committed(self) -> Iterable[str]:
        for commit in self.commits:
            yield from (p for p in (commit.rows, commit.errors) if p is not None)

    # -------------------------------------------------------------------------------- writing
    def next_names(self, suffix: str) -> tuple[str, str]:
        """The relative names of the next rows and errors parts of this process."""
        name = f"part-r{self.rank:05d}-{self._next:06d}{suffix}"
        self._next += 1
        return f"{ROWS_DIR}/{name}", f"{ERRORS_DIR}/{name}"

    def record(self, commit: Commit) -> None:
        """Append ``commit`` to this process's ledger and flush it to disk: the commit point."""
        line = (commit.to_json() + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                written = os.write(fd, line)
                if written != len(line):  # a full disk can cut a write short
                    os.ftruncate(fd, os.fstat(fd).st_size - written)
                    raise OSError(28, "No space left on device (the ledger line was cut short)")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise _write_error(self.path, err) from None
        self.commits.append(commit)
        self.done.update(commit.inputs)


def _rank_of(path: Path) -> int:
    match = _LEDGER_FILE.match(path.name)
    return int(match.group(1)) if match else -1


def write_error(where: Path, err: OSError) -> JobError:
    """The :class:`JobError` for an ``OSError`` met while writing ``where``."""
    return _write_error(where, err)
