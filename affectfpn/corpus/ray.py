"""Ray Data integration: :class:`AffectPredictor`, a callable class for ``Dataset.map_batches``.

Install the extra (``pip install 'affectfpn[ray]'``). Each Ray actor builds the model and a
:class:`~affectfpn.inference.Predictor` once, in ``__init__``; every batch then gives an Arrow
table with the rows of a corpus job (:data:`~affectfpn.corpus.LEADING_COLUMNS`, then the
table's columns) plus an ``error`` column, set on the one row of an input that failed::

    import ray
    from affectfpn.corpus.ray import AffectPredictor, corpus_dataset

    ds = corpus_dataset("photos/")          # the paths; each actor reads its files
    ds = ds.map_batches(
        AffectPredictor,
        fn_constructor_kwargs={"model": "fer2013-fast-resnet18half"},
        compute=ray.data.ActorPoolStrategy(size=4),  # actors, each with the model loaded once
        num_gpus=1,                          # per actor; leave out on CPUs
        batch_size=1024,
    )
    ds.write_parquet("results/")

By default the dataset holds paths only and the actor reads each file itself, exactly as
:func:`~affectfpn.corpus.run_corpus` does, so the rows equal the job's; no file's bytes go
through Ray's object store. ``corpus_dataset(..., read="bytes")`` has Ray's read tasks read
the photos instead (``ray.data.read_binary_files``), for actors that cannot see the files; the
rows are the same. On one small CPU machine the fast shape is a single actor of ``num_cpus=1``
with ``torch_threads`` set to the machine's cores (Ray sets ``OMP_NUM_THREADS`` to the actor's
``num_cpus``, which would leave torch one thread): docs/corpus.md gives the shapes. The job's
ledger and ``resume`` are not part of this path: Ray retries failed tasks itself, and a
pipeline that is stopped is run again whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from affectfpn.corpus.inputs import list_inputs
from affectfpn.errors import ConfigError, Hint, MissingExtraError

__all__ = ["READ_MODES", "AffectPredictor", "corpus_dataset", "require_ray"]


def require_ray() -> Any:
    """The ``ray`` module, or :class:`~affectfpn.errors.MissingExtraError` naming the extra."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError(
            "this needs Ray Data, the optional 'ray' extra: pip install 'affectfpn[ray]'"
        ) from None
    return ray


#: What :func:`corpus_dataset` can give the actors: paths that they read, or the files' bytes.
READ_MODES = ("paths", "bytes")


def corpus_dataset(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    read: str = "paths",
) -> Any:
    """A Ray Dataset of the corpus's inputs: column ``path`` (and ``bytes`` when read as bytes).

    The inputs are those of :func:`~affectfpn.corpus.list_inputs` (a folder, glob, list file,
    CSV).

    Args:
        inputs: What :func:`~affectfpn.corpus.list_inputs` takes.
        recursive: Search sub-folders of folders.
        read: ``"paths"`` (default): a dataset of paths only (``ray.data.from_items``), and
            :class:`AffectPredictor` reads each file where it runs, as the single-process job
            does; no read tasks, no file bytes through Ray's object store. Every actor must
            see the same files (one machine, or a shared filesystem). ``"bytes"``: photos are
            read by Ray's read tasks (``ray.data.read_binary_files(..., include_paths=True)``,
            column ``bytes``: the encoded file) and sent to the actors, for actors that cannot
            see the files themselves; videos still come as paths (empty ``bytes``).

    Raises:
        ConfigError: ``read`` is not one of :data:`READ_MODES`.
        MissingExtraError: Ray Data is not installed.
    """
    if read not in READ_MODES:
        raise ConfigError(
            f"is not one of {', '.join(map(repr, READ_MODES))}",
            option="read",
            value=read,
            hint=Hint("read", "paths", "where the actors see the corpus's files"),
        )
    ray = require_ray()
    found = list_inputs(inputs, recursive=recursive)
    if read == "paths":
        return ray.data.from_items([{"path": i.path} for i in found])
    photos = [i.path for i in found if i.kind == "image" and os.path.isfile(i.path)]
    others = [i.path for i in found if i.kind != "image" or not os.path.isfile(i.path)]
    parts = []
    if photos:
        parts.append(ray.data.read_binary_files(photos, include_paths=True))
    if others:
        parts.append(ray.data.from_items([{"bytes": b"", "path": p} for p in others]))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


class AffectPredictor:
    """The prediction of a corpus job, as a callable class for ``Dataset.map_batches``.

    Args:
        model: A registered model name, a model folder or a Hub repo id (``None``: the embedded
            default), loaded once per actor.
        revision: The Hub revision of ``model``.
        device: ``"auto"`` (the GPU Ray gave the actor, else the CPU), ``"cpu"``, ``"cuda"``.
        path_column: The batch's column of paths.
        bytes_column: The batch's column of encoded photos
            (``read_binary_files(include_paths=True)``); a missing column or an empty value
            reads the file at the path instead (videos always are).
        torch_threads: ``torch.set_num_threads`` in the actor (default: what Ray's
            ``OMP_NUM_THREADS`` gives it, the actor's ``num_cpus`` rounded down, at least 1).
            Set it where one actor has the machine to itself: on 2 cores, ``num_cpus=1`` and
            ``torch_threads=2``.
        **options: The options of :class:`~affectfpn.corpus.CorpusJob`: the Predictor's
            (``faces``, ``detector``, ``batch_size``, ``au_threshold``, ``amp``) and the
            video's (``every_n``, ...).
    """

    def __init__(
        self,
        model: str | None = None,
        revision: str | None = None,
        *,
        device: str = "auto",
        path_column: str = "path",
        bytes_column: str = "bytes",
        torch_threads: int | None = None,
        **options: Any,
    ) -> None:
        import torch

        from affectfpn.corpus.job import CorpusJob
        from affectfpn.inference.predictor import Predictor
        from affectfpn.models import AffectFPN

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        # The job checks the options and splits them (Predictor / video); it runs nothing here.
        self._job = CorpusJob([], ".", model=model, revision=revision, **options)
        self.model = AffectFPN.from_pretrained(model, revision=revision).eval()
        spec = self._job._spec(self.model)
        self.model_name, self.revision = str(spec["model"]), spec["revision"]
        self.path_column, self.bytes_column = path_column, bytes_column
        self.predictor = Predictor(
            self.model,
            device=device,
            on_error="skip",
            progress=False,
            **self._job.predict_options,
        )
        from affectfpn.corpus.job import _Images, _rows_frame
        from affectfpn.inference.results import ImagePrediction

        # Every batch gets the same columns and dtypes, an errors-only batch too.
        empty = ImagePrediction(source="", width=1, height=1, labels=self.predictor.labels)
        template = _rows_frame([_Images([empty])], self.model_name, self.revision)
        self._dtypes = {**template.dtypes.to_dict(), "error": "string"}
        self._schema = _arrow_schema(template.assign(error=None).astype(self._dtypes))

    def __call__(self, batch: Mapping[str, Any]) -> Any:
        """The rows of a batch's inputs (a dict of columns, or a pandas DataFrame), as an Arrow
        table: one row per face (per frame for videos), one row with ``error`` per failure."""
        import pandas as pd

        from affectfpn.corpus.inputs import CorpusInput
        from affectfpn.corpus.job import ERROR_COLUMNS, _Images, _rows_frame, _Video
        from affectfpn.io import is_video_path

        paths = [str(p) for p in _column(batch, self.path_column)]
        blobs = (
            list(_column(batch, self.bytes_column))
            if self.bytes_column in batch
            else [None] * len(paths)
        )
        pieces: list[_Images | _Video] = []
        errors: list[tuple[CorpusInput, str]] = []
        encoded = [(p, b) for p, b in zip(paths, blobs, strict=True) if b is not None and len(b)]
        named = {f"<bytes {i}>": path for i, (path, _) in enumerate(encoded)}
        if encoded:
            predictions = list(self.predictor.predict_iter([bytes(b) for _, b in encoded]))
            for source, message in self.predictor.failures:
                path = named.get(source, source)
                errors.append((CorpusInput(path, "image"), message.replace(source, path)))
            if predictions:
                pieces.append(_Images(predictions))
        # Inputs without bytes are read here from their path, as the single-process job reads
        # them: the batch's photos in one predict_iter call, then each video.
        photos: list[CorpusInput] = []
        videos: list[CorpusInput] = []
        for path, blob in zip(paths, blobs, strict=True):
            if blob is not None and len(blob):
                continue
            if is_video_path(path):
                videos.append(CorpusInput(path, "video"))
            else:
                photos.append(CorpusInput(path, "image"))
        if photos:
            self._job._images(self.predictor, photos, pieces, errors, _NoBar())
        for item in videos:
            self._job._video(self.predictor, item, pieces, errors)
        tables = []
        if pieces:
            table = _rows_frame(pieces, self.model_name, self.revision)
            if named:
                table["input"] = table["input"].map(lambda s: named.get(s, s))
                table["source"] = table["source"].map(lambda s: named.get(s, s))
            tables.append(table)
        if errors:
            records = [(i.path, i.kind, self.model_name, self.revision, m) for i, m in errors]
            tables.append(pd.DataFrame.from_records(records, columns=list(ERROR_COLUMNS)))
        out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        out = out.reindex(columns=list(self._dtypes)).astype(self._dtypes)
        # One Arrow schema for every batch: a column that is empty in one batch (the revision
        # of a local model, the error of good rows) must not become a null-typed column there.
        import pyarrow as pa

        return pa.Table.from_pandas(out, schema=self._schema, preserve_index=False)


def _arrow_schema(template: Any) -> Any:
    """The Arrow schema of the rows: the template's, with string columns typed as strings."""
    import pyarrow as pa

    fields = []
    for name, dtype in template.dtypes.items():
        kind = str(dtype)
        if kind.startswith("string") or kind == "str":
            fields.append(pa.field(name, pa.string()))
        elif kind == "Int64":
            fields.append(pa.field(name, pa.int64()))
        else:
            fields.append(pa.field(name, pa.float64()))
    return pa.schema(fields)


class _NoBar:
    """A progress bar that shows nothing (the job's helpers count inputs on one)."""

    def update(self, n: int = 1) -> None:
        return None


def _column(batch: Mapping[str, Any], name: str) -> Sequence[Any]:
    if name not in batch:
        raise KeyError(
            f"the batch has no column {name!r} (it has {', '.join(map(str, batch))}); read the "
            "files with ray.data.read_binary_files(..., include_paths=True) or pass path_column="
        )
    values = batch[name]
    return values.tolist() if isinstance(values, np.ndarray) else list(values)
