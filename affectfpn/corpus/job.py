"""A resumable job over a corpus of photos and videos: :class:`CorpusJob` and :func:`run_corpus`.

The job enumerates the corpus (:func:`~affectfpn.corpus.inputs.list_inputs`), takes this
process's share of it under ``torchrun`` (:func:`~affectfpn.corpus.inputs.shard`), leaves out
what the ledger says is finished, and predicts the rest with one
:class:`~affectfpn.inference.Predictor`: photos in groups through ``predict_iter``, each video
through :func:`~affectfpn.video.analyze_video`. Rows of whole inputs are gathered into a part;
a part is committed (written whole, then recorded in the ledger: see
:mod:`affectfpn.corpus.ledger`) every ``part_size`` inputs, every ``commit_seconds``, and at the
end. A kill loses at most the part being gathered; ``resume=True`` redoes exactly that.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from affectfpn._device import DistInfo, resolve_device
from affectfpn.corpus.inputs import CorpusInput, list_inputs, shard
from affectfpn.corpus.ledger import (
    ERRORS_DIR,
    JOB_FILE,
    ROWS_DIR,
    Commit,
    JobError,
    Ledger,
    describe_differences,
    write_error,
)
from affectfpn.errors import ConfigError, Hint, InputError
from affectfpn.inference.predictor import Predictor
from affectfpn.inference.results import CsvWriter, ImagePrediction, to_pandas
from affectfpn.io import atomic_write
from affectfpn.models.hub import weights_digest
from affectfpn.video import VIDEO_DEFAULTS

__all__ = ["LEADING_COLUMNS", "CorpusJob", "JobSummary", "read_corpus", "run_corpus"]

logger = logging.getLogger(__name__)

#: Columns before those of :func:`~affectfpn.inference.results.table_columns` in every part.
LEADING_COLUMNS: tuple[str, ...] = ("input", "kind", "model", "revision", "frame", "timestamp")
#: Columns of the errors parts.
ERROR_COLUMNS: tuple[str, ...] = ("input", "kind", "model", "revision", "error")
#: Options of the Predictor a job passes through (the job sets ``on_error`` and ``progress``).
_PREDICT_OPTIONS = frozenset(
    {"faces", "detector", "batch_size", "au_threshold", "bgr", "num_workers", "amp"}
)
#: The video's own options, with the defaults of affectfpn.video (the job shows its own progress).
_VIDEO_DEFAULTS: dict[str, Any] = {k: v for k, v in VIDEO_DEFAULTS.items() if k != "progress"}
#: Options that change no row (speed and placement only): a resume may change them.
_FREE_OPTIONS = frozenset({"batch_size", "num_workers"})
_FORMAT_VERSION = 1


@dataclass
class JobSummary:
    """What one run of a job (one process) did.

    Attributes:
        out: The output folder.
        inputs: Inputs of the whole corpus.
        share: Inputs of this process's share.
        done_before: Inputs of the share finished by earlier runs (left out).
        processed: Inputs finished by this run, with rows or with an error.
        failed: Inputs of this run that failed (in the errors parts).
        rows: Rows written by this run.
        parts: Parts committed by this run.
        seconds: Wall time of this run.
        rank: This process's rank; ``world_size``: the number of processes.
    """

    out: Path
    inputs: int = 0
    share: int = 0
    done_before: int = 0
    processed: int = 0
    failed: int = 0
    rows: int = 0
    parts: int = 0
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1
    errors: list[tuple[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------------ pieces
@dataclass
class _Images:
    predictions: list[ImagePrediction]


@dataclass
class _Video:
    path: str
    result: Any  # affectfpn.video.VideoResult


class _LeadingCsv(CsvWriter):
    """The job's CSV part: :class:`CsvWriter` with the job's leading columns."""

    leading_columns = LEADING_COLUMNS

    def __init__(self, handle: Any, model: str, revision: str | None) -> None:
        super().__init__(handle)
        self.model, self.revision = model, revision
        self.current: tuple[str, str] = ("", "image")

    def leading_values(self, prediction: ImagePrediction) -> dict[str, object]:
        path, kind = self.current
        frame = getattr(prediction, "index", None) if kind == "video" else None
        timestamp = getattr(prediction, "timestamp", None) if kind == "video" else None
        return {
            "input": prediction.source if kind == "image" else path,
            "kind": kind,
            "model": self.model,
            "revision": self.revision,
            "frame": frame,
            "timestamp": None if timestamp is None else float(timestamp),
        }


def _has_parquet() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("pandas", "pyarrow"))


def _describe_detector(detector: object) -> object:
    if detector is None or isinstance(detector, (str, int, float)):
        return detector
    if isinstance(detector, os.PathLike):
        return os.fspath(detector)
    return type(detector).__name__


class CorpusJob:
    """A resumable, shardable prediction job over a corpus of photos and videos.

    Args:
        inputs: What :func:`~affectfpn.corpus.inputs.list_inputs` takes: a folder, a glob
            pattern, a list file, a CSV with a ``path`` column, a file, or a list of these.
        out: The output folder (created): ``rows/`` and ``errors/`` parts, ``job.json``,
            ``_ledger/`` (see :mod:`affectfpn.corpus.ledger`).
        model: An :class:`~affectfpn.AffectFPN`, or what
            :meth:`AffectFPN.from_pretrained <affectfpn.AffectFPN.from_pretrained>` takes (a
            registered name, a folder, a Hub repo id); ``None``: the embedded default.
        revision: The Hub revision of a named model.
        resume: Go on with the job already in ``out`` (same model and options): only the
            inputs its ledger does not list are done. Without it, a folder that holds finished
            inputs is refused.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...; under ``torchrun`` a CUDA device
            becomes ``cuda:<LOCAL_RANK>``, one GPU per process.
        recursive: Search sub-folders of folders.
        min_face: Smallest face the detector must find, in pixels (``None``: its default).
        output_format: ``"parquet"``, ``"csv"``, or ``"auto"`` (Parquet where pandas and
            pyarrow are installed, else CSV).
        part_size: Inputs per committed part (and per ``predict_iter`` call).
        commit_seconds: Also commit what is gathered after this many seconds.
        progress: A progress bar (count, rate, ETA) on stderr; ``None``: on rank 0 when stderr
            is a terminal.
        **options: Prediction options of :class:`~affectfpn.inference.Predictor` (``faces``,
            ``detector``, ``batch_size``, ``au_threshold``, ``bgr``, ``num_workers``, ``amp``)
            and the video's own (``every_n``, ``target_fps``, ``start``, ``end``,
            ``smoothing``, ``alpha``, ``window``, ``track_iou``, ``max_missed``).

    Raises:
        ConfigError: An unknown or invalid option.
    """

    def __init__(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str],
        *,
        model: nn.Module | str | os.PathLike[str] | None = None,
        revision: str | None = None,
        resume: bool = False,
        device: str | torch.device | None = "auto",
        recursive: bool = False,
        min_face: float | None = None,
        output_format: str = "auto",
        part_size: int = 512,
        commit_seconds: float = 60.0,
        progress: bool | None = None,
        **options: Any,
    ) -> None:
        allowed = _PREDICT_OPTIONS | set(_VIDEO_DEFAULTS)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for a corpus job; the "
                f"options are {', '.join(sorted(allowed))}"
            )
        if output_format not in ("auto", "parquet", "csv"):
            raise ConfigError(f"output_format={output_format!r}; use 'auto', 'parquet' or 'csv'")
        if output_format == "auto":
            output_format = "parquet" if _has_parquet() else "csv"
        elif output_format == "parquet" and not _has_parquet():
            from affectfpn.errors import MissingExtraError

            raise MissingExtraError(
                "output_format='parquet' needs pandas and pyarrow: pip install "
                "'affectfpn[pandas]', or use output_format='csv'"
            )
        if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < 1:
            raise ConfigError(f"part_size must be an integer >= 1, got {part_size!r}")
        self.inputs = inputs
        self.out = Path(out).expanduser()
        self.model = model
        self.revision = revision
        self.resume = resume
        self.device = device
        self.recursive = recursive
        self.min_face = min_face
        self.output_format = output_format
        self.part_size = part_size
        self.commit_seconds = float(commit_seconds)
        self.progress = progress
        self.predict_options = {k: v for k, v in options.items() if k in _PREDICT_OPTIONS}
        self.video_options = {
            key: options.get(key, default) for key, default in _VIDEO_DEFAULTS.items()
        }
        self.dist = DistInfo.from_env()

    # ------------------------------------------------------------------------------ set-up
    def _load_model(self) -> nn.Module:
        if isinstance(self.model, nn.Module):
            return self.model
        from affectfpn.models import AffectFPN

        name = None if self.model is None else os.fspath(self.model)
        return AffectFPN.from_pretrained(name, revision=self.revision)

    def _device(self) -> torch.device:
        device = resolve_device(self.device)
        if device.type == "cuda" and self.dist.world_size > 1 and device.index is None:
            device = torch.device("cuda", self.dist.local_rank % torch.cuda.device_count())
        return device

    def _spec(self, model: nn.Module) -> dict[str, Any]:
        """What the rows depend on: ``job.json``, which a resume must match."""
        options = {
            "faces": self.predict_options.get("faces", "detect"),
            "detector": _describe_detector(self.predict_options.get("detector", "auto")),
            "min_face": self.min_face,
            "au_threshold": self.predict_options.get("au_threshold", 0.5),
            "bgr": self.predict_options.get("bgr", False),
            "amp": self.predict_options.get("amp", "auto"),
            **self.video_options,
        }
        return {
            "format_version": _FORMAT_VERSION,
            "model": getattr(model, "name_or_path", None) or type(model).__name__,
            "revision": getattr(model, "revision", None),
            "weights_sha256": weights_digest(model),
            "output_format": self.output_format,
            **options,
        }

    def _check_folder(self, spec: dict[str, Any], ledger: Ledger) -> None:
        job_file = self.out / JOB_FILE
        if job_file.is_file():
            try:
                old = json.loads(job_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise JobError(
                    f"{job_file}: cannot be read ({err}); it is not a corpus job's file: "
                    "choose another output folder"
                ) from None
            differences, values = describe_differences(old, spec)
            if differences:
                where = str(self.out).replace("{", "{{").replace("}", "}}")
                raise JobError(
                    f"{where} holds a job with another model or other options: "
                    + "; ".join(differences)
                    + ". Run it with the same model and options, or choose another output folder",
                    params=values,
                )
        if ledger.done and not self.resume:
            raise JobError(
                f"{self.out} already holds a job with {len(ledger.done)} finished input(s)",
                hint=Hint("resume", True, "to do only what is left, or choose another folder"),
            )

    def _write_job_file(self, spec: dict[str, Any]) -> None:
        path = self.out / JOB_FILE
        if path.is_file():
            return
        text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=True)
        except OSError as err:
            raise write_error(path, err) from None

    def _make_folder(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            for sub in (ROWS_DIR, ERRORS_DIR, "_ledger"):
                (self.out / sub).mkdir(exist_ok=True)
        except OSError as err:
            raise write_error(self.out, err) from None
        if not os.access(self.out, os.W_OK):
            raise write_error(self.out, PermissionError(13, "Permission denied"))

    # ------------------------------------------------------------------------------ running
    def run(self) -> JobSummary:
        """Do what is left of this process's share; returns what this run did.

        Raises:
            InputError: The corpus cannot be listed (see
                :func:`~affectfpn.corpus.inputs.list_inputs`).
            JobError: The output folder cannot be written, or holds a job with another model or
                other options (the message names the differences).
        """
        started = time.perf_counter()
        rank, world = self.dist.rank, self.dist.world_size
        corpus = list_inputs(self.inputs, recursive=self.recursive)
        mine = shard(corpus, rank, world)
        model = self._load_model()
        model.eval()
        spec = self._spec(model)
        group = self._join_group()
        try:
            self._make_folder()
            ledger = Ledger(self.out, rank)
            self._check_folder(spec, ledger)
            if rank == 0:
                self._write_job_file(spec)
            try:
                ledger.clean(world)
            except OSError as err:
                raise write_error(self.out, err) from None
            if group:
                torch.distributed.barrier()
            todo = [item for item in mine if item.path not in ledger.done]
            summary = JobSummary(
                out=self.out,
                inputs=len(corpus),
                share=len(mine),
                done_before=len(mine) - len(todo),
                rank=rank,
                world_size=world,
            )
            self._process(model, spec, ledger, todo, summary)
        finally:
            if group:
                torch.distributed.destroy_process_group()
        summary.seconds = time.perf_counter() - started
        return summary

    def _join_group(self) -> bool:
        """Join torchrun's process group (gloo: only for the barrier after the set-up)."""
        if self.dist.world_size <= 1 or not torch.distributed.is_available():
            return False
        if torch.distributed.is_initialized():
            return False
        torch.distributed.init_process_group(backend="gloo", timeout=datetime.timedelta(minutes=30))
        return True

    def _process(
        self,
        model: nn.Module,
        spec: dict[str, Any],
        ledger: Ledger,
        todo: list[CorpusInput],
        summary: JobSummary,
    ) -> None:
        from affectfpn.inference.detectors import get_detector

        options = dict(self.predict_options)
        if self.min_face is not None and options.get("faces", "detect") == "detect":
            options["detector"] = get_detector(
                options.get("detector", "auto"), min_face=self.min_face or None
            )
        predictor = Predictor(
            model, device=self._device(), on_error="skip", progress=False, **options
        )
        show = self.progress
        if show is None:
            show = self.dist.rank == 0 and sys.stderr.isatty()
        desc = "affectfpn corpus" + (
            f" [{self.dist.rank}/{self.dist.world_size}]" if self.dist.world_size > 1 else ""
        )
        bar = tqdm(
            total=summary.share,
            initial=summary.done_before,
            unit="input",
            desc=desc,
            disable=not show,
            dynamic_ncols=True,
        )
        name, revision = str(spec["model"]), spec["revision"]
        pieces: list[_Images | _Video] = []
        finished: list[str] = []
        errors: list[tuple[CorpusInput, str]] = []
        since = time.monotonic()

        def commit() -> None:
            nonlocal since
            if finished:
                self._commit(ledger, pieces, errors, finished, name, revision, summary)
            pieces.clear()
            finished.clear()
            errors.clear()
            since = time.monotonic()

        try:
            position = 0
            while position < len(todo):
                item = todo[position]
                if item.kind == "video":
                    position += 1
                    self._video(predictor, item, pieces, errors)
                    finished.append(item.path)
                    bar.update(1)
                else:
                    room = self.part_size - len(finished)
                    end = position
                    while end < len(todo) and end - position < room and todo[end].kind == "image":
                        end += 1
                    group = todo[position:end]
                    position = end
                    self._images(predictor, group, pieces, errors, bar)
                    finished.extend(i.path for i in group)
                if (
                    len(finished) >= self.part_size
                    or time.monotonic() - since >= self.commit_seconds
                ):
                    commit()
            commit()
        finally:
            bar.close()

    def _images(
        self,
        predictor: Predictor,
        group: list[CorpusInput],
        pieces: list[_Images | _Video],
        errors: list[tuple[CorpusInput, str]],
        bar: Any,
    ) -> None:
        readable: list[str] = []
        for item in group:
            if os.path.isfile(item.path):
                readable.append(item.path)
            elif os.path.isdir(item.path):
                errors.append((item, f"{item.path}: a folder, not a photo or video file"))
                bar.update(1)
            else:
                errors.append((item, f"{item.path}: no such file"))
                bar.update(1)
        predictions: list[ImagePrediction] = []
        if readable:
            for prediction in predictor.predict_iter(readable):
                predictions.append(prediction)
                bar.update(1)
            kinds = {item.path: item for item in group}
            for source, message in predictor.failures:
                errors.append((kinds.get(source, CorpusInput(source, "image")), message))
                bar.update(1)
        if predictions:
            pieces.append(_Images(predictions))

    def _video(
        self,
        predictor: Predictor,
        item: CorpusInput,
        pieces: list[_Images | _Video],
        errors: list[tuple[CorpusInput, str]],
    ) -> None:
        from affectfpn.video import analyze_video

        try:
            result = analyze_video(predictor, item.path, progress=False, **self.video_options)
        except InputError as err:
            logger.warning("skipped %s: %s", item.path, err)
            errors.append((item, str(err)))
            return
        pieces.append(_Video(item.path, result))

    def _commit(
        self,
        ledger: Ledger,
        pieces: list[_Images | _Video],
        errors: list[tuple[CorpusInput, str]],
        finished: list[str],
        model: str,
        revision: str | None,
        summary: JobSummary,
    ) -> None:
        suffix = ".parquet" if self.output_format == "parquet" else ".csv"
        rows_name, errors_name = ledger.next_names(suffix)
        rows = 0
        target = self.out / rows_name
        try:
            if pieces:
                if self.output_format == "parquet":
                    table = _rows_frame(pieces, model, revision)
                    rows = len(table)
                    atomic_write(
                        target, lambda tmp: table.to_parquet(tmp, index=False), durable=True
                    )
                else:
                    rows = _write_rows_csv(target, pieces, model, revision)
            if errors:
                target = self.out / errors_name
                records = [(i.path, i.kind, model, revision, message) for i, message in errors]
                if self.output_format == "parquet":
                    frame = _errors_frame(records)
                    atomic_write(
                        target, lambda tmp: frame.to_parquet(tmp, index=False), durable=True
                    )
                else:
                    _write_errors_csv(target, records)
        except OSError as err:
            raise write_error(target, err) from None
        ledger.record(
            Commit(
                rows=rows_name if pieces else None,
                errors=errors_name if errors else None,
                inputs=tuple(finished),
                row_count=rows,
            )
        )
        summary.processed += len(finished)
        summary.failed += len(errors)
        summary.rows += rows
        summary.parts += 1
        summary.errors.extend((i.path, message) for i, message in errors)
        del summary.errors[:-1000]  # the last ones, for the command line's report


# ------------------------------------------------------------------------------------ tables
def _rows_frame(pieces: list[_Images | _Video], model: str, revision: str | None) -> Any:
    import pandas as pd

    frames = []
    for piece in pieces:
        if isinstance(piece, _Images):
            table = to_pandas(piece.predictions)
            table.insert(0, "input", table["source"].astype("string"))
            table.insert(1, "kind", "image")
            table["frame"] = pd.array([None] * len(table), dtype="Int64")
            table["timestamp"] = float("nan")
        else:
            table = piece.result.to_pandas()
            table.insert(0, "input", piece.path)
            table.insert(1, "kind", "video")
        frames.append(table)
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    table["model"] = model
    table["revision"] = revision
    columns = [*LEADING_COLUMNS, *[c for c in table.columns if c not in LEADING_COLUMNS]]
    table = table[columns]
    for column in ("input", "kind", "model", "revision"):
        table[column] = table[column].astype("string")
    table["frame"] = table["frame"].astype("Int64")
    table["timestamp"] = table["timestamp"].astype("float64")
    return table


def _errors_frame(records: list[tuple[str, str, str, str | None, str]]) -> Any:
    import pandas as pd

    frame = pd.DataFrame.from_records(records, columns=list(ERROR_COLUMNS))
    return frame.astype(dict.fromkeys(ERROR_COLUMNS, "string"))


def _write_rows_csv(
    target: Path, pieces: list[_Images | _Video], model: str, revision: str | None
) -> int:
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = _LeadingCsv(handle, model, revision)
            for piece in pieces:
                if isinstance(piece, _Images):
                    writer.current = ("", "image")
                    for prediction in piece.predictions:
                        writer.add(prediction)
                else:
                    writer.current = (piece.path, "video")
                    for frame in piece.result.frames():
                        writer.add(frame)
            writer.close()
            count = writer.rows

    atomic_write(target, write, durable=True)
    return count


def _write_errors_csv(target: Path, records: list[tuple[str, str, str, str | None, str]]) -> None:
    import csv

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(ERROR_COLUMNS)
            writer.writerows([[("" if v is None else v) for v in r] for r in records])

    atomic_write(target, write, durable=True)


# ------------------------------------------------------------------------------------ API
def run_corpus(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    **kwargs: Any,
) -> JobSummary:
    """Run a :class:`CorpusJob` (same arguments) and return its :class:`JobSummary`.

    Example:
        >>> run_corpus("photos/", "results/", resume=True)               # doctest: +SKIP
        >>> read_corpus("results/").groupby("expression").size()         # doctest: +SKIP
    """
    return CorpusJob(inputs, out, **kwargs).run()


def read_corpus(out: str | os.PathLike[str], *, errors: bool = False) -> Any:
    """The committed rows of a job's output folder as one pandas DataFrame.

    Only parts that a ledger line names are read, so a folder left by a killed run reads as
    exactly what was committed. Needs pandas (and pyarrow for Parquet parts).

    Args:
        out: The job's output folder.
        errors: Read the errors parts (``input``, ``kind``, ``model``, ``revision``,
            ``error``) instead of the rows.
    """
    try:
        import pandas as pd
    except ImportError:
        from affectfpn.errors import MissingExtraError

        raise MissingExtraError(
            "read_corpus needs pandas: pip install 'affectfpn[pandas]'"
        ) from None
    folder = Path(out).expanduser()
    if not (folder / JOB_FILE).is_file():
        raise InputError(f"{folder}: not a corpus job's output folder (it has no {JOB_FILE})")
    ledger = Ledger(folder, rank=0)
    parts = ledger.committed_parts(ERRORS_DIR if errors else ROWS_DIR)
    tables = [
        pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype={"input": "string"})
        for p in parts
    ]
    if not tables:
        return pd.DataFrame(columns=list(ERROR_COLUMNS if errors else LEADING_COLUMNS))
    return pd.concat(tables, ignore_index=True)
