"""Score a model on a labelled dataset with every ABAW2 metric its labels allow.

:func:`evaluate` runs a model over a dataset of training samples (or a folder / CSV that
:func:`build_eval_dataset` reads) and returns an :class:`EvaluationReport`: the metrics of
:class:`~affectfpn.metrics.MultiTaskMeter` for every task that both the model predicts and the
labels cover, with class names and the confusion matrix, plus what was evaluated, on what and how
fast. The report is plain data: ``to_dict()``, ``to_json(path)``, ``summary()``.

Example:
    >>> from affectfpn import AffectFPN
    >>> from affectfpn.evaluation import evaluate
    >>> model = AffectFPN.from_pretrained("some-model")                     # doctest: +SKIP
    >>> report = evaluate(model, "fer2013/test", model_name="some-model",
    ...                   exclude="fer2013/overlap_with_train.txt")        # doctest: +SKIP
    >>> print(report.summary())                                             # doctest: +SKIP
"""

import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast, overload

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from affectfpn._device import amp_dtype, amp_mode, autocast, resolve_device
from affectfpn._version import __version__
from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError, DatasetError, InputError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS
from affectfpn.metrics import AUMeter, ExpressionMeter, MultiTaskMeter
from affectfpn.models.affectfpn import AffectFPN, AffectFPNOutput
from affectfpn.preprocess import eval_transform, normalize

if TYPE_CHECKING:
    from affectfpn.calibration import AdaptiveTemperature

__all__ = [
    "REPORT_FORMAT_VERSION",
    "EvaluationReport",
    "build_eval_dataset",
    "evaluate",
    "model_outputs",
    "models_outputs",
]

logger = logging.getLogger(__name__)

#: Version of the JSON layout written by :meth:`EvaluationReport.to_dict`.
REPORT_FORMAT_VERSION = 1

#: What :func:`evaluate` accepts as data: a dataset of sample dicts, or a path for
#: :func:`build_eval_dataset`.
DatasetSpec: TypeAlias = Dataset[dict[str, Any]] | str | os.PathLike[str]
#: What ``exclude`` accepts: relative paths, or the path of a text file listing them.
ExcludeSpec: TypeAlias = Iterable[str] | str | os.PathLike[str]

_TASK_TITLES = {"va": "valence/arousal", "expression": "expression", "au": "action units"}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """The outcome of :func:`evaluate`.

    Attributes:
        metrics: ``{task: metrics}`` for every scored task, in ``("va", "expression", "au")``
            order. Each holds the keys of :meth:`affectfpn.metrics.MultiTaskMeter.compute`
            (``score`` is the ABAW2 score of the task) plus:

            * ``va``: nothing more (``ccc_valence``, ``ccc_arousal``, ``mse_valence``,
              ``mse_arousal``);
            * ``expression``: ``class_names`` (the order of every per-class list and of both
              axes of the confusion matrix), ``support_per_class`` (true samples per class) and
              ``confusion_matrix`` (nested lists; rows: true class, columns: predicted class);
            * ``au``: ``unit_names`` (the order of every per-unit list),
              ``positives_per_unit`` (labelled positives per unit), ``labelled_per_unit`` and
              ``threshold`` (probability above which an AU counts as present).
        num_samples: samples evaluated (after ``exclude``).
        labelled: ``{task: samples with a valid label}`` for all three tasks (an AU sample
            counts when any of its units is labelled), also for tasks that were not scored.
        not_scored: ``{task: reason}`` for each task the model or the labels lack.
        dataset: a description of the data (kind, path, split).
        excluded: samples left out by ``exclude``.
        model_name: registry name, Hub repo id or folder, as given to :func:`evaluate`.
        model_revision: the weights' revision (Hub commit or tag), as given.
        model_tasks: the tasks the model predicts.
        model_config: the model's ``config.to_dict()``.
        num_params: the model's number of parameters.
        seconds: wall time of the run (data loading included).
        images_per_second: ``num_samples / seconds``.
        device: the device the model ran on.
        amp: the autocast dtype (``"bfloat16"`` / ``"float16"``), or ``None`` for float32.
        batch_size: images per batch.
        au_threshold: the AU probability threshold.
        affectfpn_version: the affectfpn version that produced the report.
        created: when the report was made (ISO 8601, UTC).
    """

    metrics: dict[str, dict[str, Any]]
    num_samples: int
    labelled: dict[str, int]
    dataset: str
    not_scored: dict[str, str] = field(default_factory=dict)
    excluded: int = 0
    model_name: str | None = None
    model_revision: str | None = None
    model_tasks: tuple[str, ...] = ()
    model_config: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    device: str = "cpu"
    amp: str | None = None
    batch_size: int = 0
    au_threshold: float = 0.5
    affectfpn_version: str = __version__
    created: str = ""

    @property
    def tasks(self) -> tuple[str, ...]:
        """The scored tasks."""
        return tuple(self.metrics)

    @property
    def scores(self) -> dict[str, float]:
        """``{task: ABAW2 score}`` of every scored task."""
        return {task: float(values["score"]) for task, values in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :func:`evaluate` for the layout)."""
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "affectfpn_version": self.affectfpn_version,
            "created": self.created,
            "model": {
                "name": self.model_name,
                "revision": self.model_revision,
                "tasks": list(self.model_tasks),
                "num_params": self.num_params,
                "config": dict(self.model_config),
            },
            "dataset": {
                "description": self.dataset,
                "num_samples": self.num_samples,
                "excluded": self.excluded,
                "labelled": dict(self.labelled),
            },
            "settings": {
                "batch_size": self.batch_size,
                "device": self.device,
                "amp": self.amp,
                "au_threshold": self.au_threshold,
            },
            "timing": {"seconds": self.seconds, "images_per_second": self.images_per_second},
            "metrics": {task: dict(values) for task, values in self.metrics.items()},
            "not_scored": dict(self.not_scored),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationReport":
        """Rebuild a report from :meth:`to_dict` output (e.g. a parsed JSON file)."""
        if not isinstance(data, Mapping):
            raise InputError(f"an evaluation report must be a dict, got {type(data).__name__}")
        version = data.get("format_version", REPORT_FORMAT_VERSION)
        if not isinstance(version, int) or version > REPORT_FORMAT_VERSION:
            raise InputError(
                f"evaluation report format_version {version!r} is newer than this affectfpn "
                f"reads ({REPORT_FORMAT_VERSION}); upgrade: pip install -U affectfpn"
            )
        try:
            model, ds = data["model"], data["dataset"]
            settings, timing = data["settings"], data["timing"]
            return cls(
                metrics={t: dict(v) for t, v in data["metrics"].items()},
                num_samples=int(ds["num_samples"]),
                labelled={t: int(n) for t, n in ds["labelled"].items()},
                dataset=str(ds["description"]),
                not_scored=dict(data.get("not_scored", {})),
                excluded=int(ds.get("excluded", 0)),
                model_name=model.get("name"),
                model_revision=model.get("revision"),
                model_tasks=tuple(model.get("tasks", ())),
                model_config=dict(model.get("config", {})),
                num_params=int(model.get("num_params", 0)),
                seconds=float(timing["seconds"]),
                images_per_second=float(timing["images_per_second"]),
                device=str(settings["device"]),
                amp=settings.get("amp"),
                batch_size=int(settings["batch_size"]),
                au_threshold=float(settings["au_threshold"]),
                affectfpn_version=str(data.get("affectfpn_version", "")),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(
                f"not an evaluation report: {err!r} is missing or malformed; pass the output of "
                "EvaluationReport.to_dict()"
            ) from None

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as indented JSON to ``path`` (folders created); return the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EvaluationReport":
        """Read a report written by :meth:`to_json`."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{os.fspath(p)}: no such evaluation report") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{os.fspath(p)}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise InputError(f"{os.fspath(p)}: expected a JSON object")
        return cls.from_dict(data)

    def summary(self) -> str:
        """A few lines of text: model, data, the main figures of each task, speed."""
        name = self.model_name or "unnamed model"
        if self.model_revision:
            name += f"@{self.model_revision}"
        excluded = f", {self.excluded} excluded" if self.excluded else ""
        lines = [
            f"{name} ({', '.join(self.model_tasks)}) on {self.dataset}: "
            f"{self.num_samples} samples{excluded}"
        ]
        for task, m in self.metrics.items():
            n = self.labelled.get(task, 0)
            if task == "va":
                detail = (
                    f"CCC valence {m['ccc_valence']:.4f}, arousal {m['ccc_arousal']:.4f}; "
                    f"{n} labelled"
                )
            elif task == "expression":
                ece = f", ECE {m['ece']:.4f}" if "ece" in m else ""
                detail = (
                    f"macro F1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f}{ece}; {n} labelled"
                )
            else:
                detail = f"mean F1 {m['mean_f1']:.4f}, accuracy {m['accuracy']:.4f}; {n} labelled"
            lines.append(f"  {_TASK_TITLES[task]}: score {m['score']:.4f} ({detail})")
        for task, reason in self.not_scored.items():
            lines.append(f"  {_TASK_TITLES[task]}: not scored ({reason})")
        amp = f", {self.amp}" if self.amp else ""
        lines.append(
            f"  {self.images_per_second:.1f} images/s on {self.device}{amp} "
            f"(batch {self.batch_size}, {self.seconds:.1f} s)"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def _read_exclude(exclude: ExcludeSpec) -> list[str]:
    """Normalised relative paths from a list, or from a text file of them."""
    from affectfpn.data import read_path_list
    from affectfpn.data.common import normalize_relpath

    if isinstance(exclude, str | os.PathLike):
        path = Path(exclude)
        if not path.is_file():
            raise InputError(
                "is not a file; pass the path of a text file listing relative image paths (one "
                "per line) or a list of such paths",
                option="exclude",
                value=os.fspath(path),
            )
        return read_path_list(path)
    return [normalize_relpath(str(p), file="exclude", line=None) for p in exclude]


def build_eval_dataset(
    spec: str | os.PathLike[str],
    config: AffectFPNConfig,
    *,
    exclude: ExcludeSpec | None = None,
) -> Dataset[dict[str, Any]]:
    """Turn a path into an evaluation dataset whose images fit a model's input.

    The kind of data is recognised from the path (:func:`affectfpn.data.spec_for_path`, the
    one registry of dataset kinds that recipes use too):

    * a folder with ``annotations/`` and ``cropped_aligned/`` sub-folders: Aff-Wild2 (ABAW2
      layout), its **validation** split, as one multi-task dataset
      (:class:`~affectfpn.recipes.datasets.AffWild2MultiTask`) over the tasks of ``config`` that
      have a ``Validation_Set`` folder; frames with no valid label for them are dropped;
    * a ``.csv`` file: a table of image paths and labels
      (:class:`~affectfpn.recipes.datasets.LabelCSV`, paths relative to the CSV's folder);
    * any other folder: expression class folders
      (:class:`~affectfpn.recipes.datasets.ImageFolderExpressions`, e.g. FER2013's ``test``).

    Every image goes through :func:`affectfpn.preprocess.eval_transform` (resized to
    ``config.input_size``, uint8 ``3 x H x W``).

    Args:
        spec: the folder or CSV file.
        config: the model's configuration (input size; tasks, for Aff-Wild2).
        exclude: relative paths (or the path of a text file listing them, such as FER2013's
            ``overlap_with_train.txt``) of images to leave out. For an image folder a path may be
            relative to the folder or to its parent (``test/angry/x.jpg``); otherwise it is
            compared with the sample keys (``<video>/<frame:05d>`` for Aff-Wild2, the CSV path).

    Raises:
        InputError: a path that does not exist or is not one of the kinds above.
        DatasetError: malformed data (from the dataset classes).
    """
    from affectfpn.data import dataset_types, spec_for_path

    table = spec_for_path(spec, what="dataset")
    kind = table.pop("type")
    transform = eval_transform(config)
    excluded = None if exclude is None else _read_exclude(exclude)
    dataset: Dataset[dict[str, Any]]
    if kind == "affwild2-multitask":
        root = Path(table["root"])
        ann = root / "annotations"
        folders = {"va": "VA_Set", "expression": "EXPR_Set", "au": "AU_Set"}
        tasks = [t for t in config.tasks if (ann / folders[t] / "Validation_Set").is_dir()]
        if not tasks:
            raise DatasetError(
                f"Aff-Wild2 root {table['root']!r} has no Validation_Set annotations for the "
                f"model's tasks {list(config.tasks)} (expected annotations/"
                f"{{{','.join(folders[t] for t in config.tasks)}}}/Validation_Set/)"
            )
        table.update(tasks=tasks, drop_unlabelled=True)
    elif kind == "imagefolder" and excluded is not None:
        table["exclude"] = excluded
        excluded = None  # the folder dataset reads the paths itself
    dataset = dataset_types()[kind](**table, transform=transform)
    if excluded is not None:
        dataset = _exclude_by_key(dataset, excluded)
    return dataset


def _dataset_keys(dataset: Dataset[Any]) -> list[str] | None:
    """The sample keys of a dataset (a ``keys`` list, or through a Subset); ``None`` if unknown."""
    if isinstance(dataset, Subset):
        inner = _dataset_keys(dataset.dataset)
        return None if inner is None else [inner[int(i)] for i in dataset.indices]
    keys = getattr(dataset, "keys", None)
    return [str(k) for k in keys] if isinstance(keys, list) else None


def _dataset_root(dataset: Dataset[Any]) -> Path | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    root = getattr(dataset, "root", None)
    return Path(root) if isinstance(root, str | os.PathLike) else None


def _exclude_by_key(dataset: Dataset[dict[str, Any]], exclude: Sequence[str]) -> Subset[Any]:
    """Leave out the samples whose key is in ``exclude``.

    A path also matches when it starts with the name of the dataset's root folder
    (``test/angry/x.jpg`` for the key ``angry/x.jpg`` of a dataset rooted at ``.../test``).
    """
    keys = _dataset_keys(dataset)
    if keys is None:
        logger.warning("%r has no 'keys' list: reading every sample to get the keys", dataset)
        keys = [str(dataset[i]["key"]) for i in range(len(dataset))]  # type: ignore[arg-type]
    wanted = set(exclude)
    root = _dataset_root(dataset)
    prefixes = set()
    if root is not None:
        prefixes = {root.name, Path(os.path.realpath(root)).name} - {""}
    keep = [
        i
        for i, key in enumerate(keys)
        if key not in wanted and not any(f"{p}/{key}" in wanted for p in prefixes)
    ]
    dropped = len(keys) - len(keep)
    if wanted and not dropped:
        logger.warning(
            "none of the %d exclude paths matched a sample key of %r; give paths relative to "
            "the dataset root (or to its parent)",
            len(wanted),
            dataset,
        )
    return Subset(dataset, keep)


def _describe(dataset: Dataset[Any]) -> str:
    """A one-line description of a dataset for the report."""
    from affectfpn.data import (
        AffWild2,
        AffWild2MultiTask,
        ImageFolderExpressions,
        LabelCSV,
    )

    if isinstance(dataset, Subset):
        return f"{_describe(dataset.dataset)}, a subset of {len(dataset.indices)} samples"
    if isinstance(dataset, ImageFolderExpressions):
        return f"expression image folder {os.fspath(dataset.root)}"
    if isinstance(dataset, LabelCSV):
        return f"label CSV {os.fspath(dataset.csv_path)}"
    if isinstance(dataset, AffWild2 | AffWild2MultiTask):
        tasks = "+".join(dataset.tasks)
        return f"Aff-Wild2 {dataset.split} ({tasks}) at {os.fspath(dataset.root)}"
    kind = type(dataset).__name__
    root = getattr(dataset, "root", None)
    where = f" at {os.fspath(root)}" if isinstance(root, str | os.PathLike) else ""
    return f"{getattr(dataset, 'name', kind)} ({kind}){where}"


def _resolve_dataset(
    dataset: DatasetSpec, config: AffectFPNConfig, exclude: ExcludeSpec | None
) -> tuple[Dataset[dict[str, Any]], int, str]:
    """The dataset to run, the number of samples excluded, and its description."""
    if isinstance(dataset, str | os.PathLike):
        ds = build_eval_dataset(dataset, config, exclude=exclude)
        inner = ds.dataset if isinstance(ds, Subset) else ds
        description = _describe(inner)
        if isinstance(ds, Subset):
            excluded = len(inner) - len(ds)  # type: ignore[arg-type]
        else:
            excluded = int(getattr(ds, "n_excluded", 0))
        return ds, excluded, description
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise InputError(
            f"dataset must be a torch Dataset of sample dicts (with len()) or a path, got "
            f"{type(dataset).__name__}"
        )
    description = _describe(dataset)
    if exclude is None:
        return dataset, 0, description
    subset = _exclude_by_key(dataset, _read_exclude(exclude))
    return subset, len(dataset) - len(subset), description


# --------------------------------------------------------------------------------------------
# Label alignment between model outputs and dataset labels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Alignment:
    """Which model outputs correspond to which label columns."""

    class_names: tuple[str, ...]
    expression_order: list[int] | None  # model logit index for each dataset class, or None
    unit_names: tuple[str, ...]
    au_model_cols: list[int]
    au_label_cols: list[int]


def _align(config: AffectFPNConfig) -> _Alignment:
    expression_order: list[int] | None = None
    class_names = tuple(config.expressions)
    if set(config.expressions) == set(EXPRESSIONS):
        if tuple(config.expressions) != EXPRESSIONS:
            expression_order = [config.expressions.index(n) for n in EXPRESSIONS]
        class_names = EXPRESSIONS
    elif "expression" in config.tasks:
        logger.warning(
            "the model's expression names %s are not the dataset labels %s; scoring assumes "
            "that class i of the model is class i of the labels",
            list(config.expressions),
            list(EXPRESSIONS),
        )
    units = [u for u in config.action_units if u in ACTION_UNITS]
    if "au" in config.tasks and len(units) != len(config.action_units):
        logger.warning(
            "the model's action units %s are not all among the labelled %s; only %s are scored",
            [u for u in config.action_units if u not in ACTION_UNITS],
            list(ACTION_UNITS),
            units,
        )
    return _Alignment(
        class_names=class_names,
        expression_order=expression_order,
        unit_names=tuple(units),
        au_model_cols=[config.action_units.index(u) for u in units],
        au_label_cols=[ACTION_UNITS.index(u) for u in units],
    )


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _check_args(batch_size: int, num_workers: int, au_threshold: float) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"must be a positive integer, got {batch_size!r}", option="batch_size")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise InputError(f"must be an integer >= 0, got {num_workers!r}", option="num_workers")
    if not isinstance(au_threshold, int | float) or not 0.0 < float(au_threshold) < 1.0:
        raise InputError(
            f"must be a probability in (0, 1), got {au_threshold!r}", option="au_threshold"
        )


def _batches(
    loader: DataLoader[dict[str, Any]], total: int, enabled: bool
) -> Iterator[dict[str, Any]]:
    """Iterate ``loader`` with a tqdm bar on stderr counting images (shown after 2 s)."""
    if not enabled:
        yield from loader
        return
    from tqdm import tqdm

    with tqdm(
        total=total, desc="evaluate", unit="img", file=sys.stderr, delay=2.0, leave=False
    ) as bar:
        for batch in loader:
            yield batch
            bar.update(int(batch["image"].shape[0]))


def _check_images(images: Any, config: AffectFPNConfig) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(
            f"dataset samples must have 'image' tensors 3 x H x W, got a batch of {shape}; "
            "build the dataset with transform=affectfpn.preprocess.eval_transform(model.config)"
        )
    h, w = config.input_size
    if tuple(images.shape[2:]) != (h, w):
        raise InputError(
            f"dataset images are {images.shape[2]} x {images.shape[3]} but the model expects "
            f"{h} x {w} (config.input_size); build the dataset with "
            "transform=affectfpn.preprocess.eval_transform(model.config)"
        )
    return images


def _labelled_counts(batch: Mapping[str, Any]) -> dict[str, int]:
    out = {}
    for task in TASKS:
        mask = batch.get(f"{task}_mask")
        if mask is None or task not in batch:
            out[task] = 0
            continue
        m = torch.as_tensor(mask).bool()
        out[task] = int(m.reshape(m.shape[0], -1).any(dim=1).sum())
    return out


def evaluate(
    model: AffectFPN,
    dataset: DatasetSpec,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    au_threshold: float = 0.5,
    output: str | os.PathLike[str] | None = None,
    exclude: ExcludeSpec | None = None,
    model_name: str | None = None,
    model_revision: str | None = None,
    reliability: str | os.PathLike[str] | None = None,
    amp: str = "auto",
) -> EvaluationReport:
    """Score ``model`` on a labelled dataset with the ABAW2 metrics.

    Every task that the model predicts *and* the labels cover is scored; a task the model lacks,
    or one with no valid label in the data, is listed under ``not_scored`` instead. Images (uint8,
    at the model's input size) are normalised on the device with
    :func:`affectfpn.preprocess.normalize` and run under ``torch.inference_mode()``, with
    autocast (bfloat16, else float16) on CUDA. The model is put in eval mode on ``device`` for the
    run and returned to its device and mode afterwards.

    Args:
        model: the model.
        dataset: a Dataset of training-sample dicts (images already through
            :func:`affectfpn.preprocess.eval_transform`), or a path for
            :func:`build_eval_dataset`: a folder of expression class folders (FER2013 ``test``),
            an Aff-Wild2 root (validation split) or a label ``.csv``.
        batch_size: images per batch.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; ``None`` / ``"auto"`` picks
            CUDA, then MPS, then the CPU.
        num_workers: DataLoader worker processes reading images.
        progress: show a tqdm progress bar on stderr (it appears only after 2 s).
        au_threshold: an AU counts as present when its probability is above this.
        output: also write the report as JSON to this path.
        exclude: relative paths (or a text file listing them, like FER2013's
            ``overlap_with_train.txt``) of images to leave out; see :func:`build_eval_dataset`.
            For a dataset object they are matched against its sample keys.
        model_name: the model's registry name, Hub repo id or folder, for the report.
        model_revision: the weights' revision, for the report.
        amp: mixed precision, one of ``"auto"`` (on CUDA only), ``"on"``, ``"off"``,
            ``"bf16"``, ``"fp16"``: the vocabulary of prediction and training.
        reliability: write a reliability diagram of the expression probabilities here (PNG;
            needs matplotlib). The expected calibration error (15 equal-width bins of
            top-class confidence, at the model's ``expression_temperature``, or at each face's
            own temperature for a model with a calibrator) is in the expression metrics as
            ``ece`` either way, with ``temperature`` (the mean per-face one, and
            ``temperature_per_face: true``, for a model with a calibrator).

    Returns:
        The :class:`EvaluationReport`. Its JSON layout (``to_dict()``)::

            {"format_version": 1, "affectfpn_version": "...", "created": "...",
             "model": {"name", "revision", "tasks", "num_params", "config"},
             "dataset": {"description", "num_samples", "excluded",
                         "labelled": {"va": n, "expression": n, "au": n}},
             "settings": {"batch_size", "device", "amp", "au_threshold"},
             "timing": {"seconds", "images_per_second"},
             "metrics": {task: {...}},            # see EvaluationReport.metrics
             "not_scored": {task: reason}}

    Raises:
        InputError: an unusable dataset (empty, wrong image size) or argument.
        DatasetError: malformed data files.
        ConfigError: an unavailable ``device``.
    """
    _check_args(batch_size, num_workers, au_threshold)
    if not isinstance(model, torch.nn.Module) or not isinstance(
        getattr(model, "config", None), AffectFPNConfig
    ):
        raise InputError(f"model must be an AffectFPN, got {type(model).__name__}")
    config = model.config
    data, excluded, description = _resolve_dataset(dataset, config, exclude)
    n_total = len(data)  # type: ignore[arg-type]
    if n_total == 0:
        raise InputError(f"dataset {description} has no samples to evaluate")

    dev = resolve_device(device)
    amp_type = amp_dtype(dev, amp_mode(amp))
    align = _align(config)
    meter_tasks = [t for t in config.tasks if t != "au" or align.unit_names]
    meter = (
        MultiTaskMeter(
            meter_tasks,
            num_classes=len(align.class_names),
            num_units=max(len(align.unit_names), 1),
            au_threshold=float(au_threshold),
            au_from_logits=True,
        )
        if meter_tasks
        else None
    )
    labelled = dict.fromkeys(TASKS, 0)
    seen = 0
    # expression logits and labels of the labelled samples, for the calibration error
    expr_logits: list[torch.Tensor] = []
    expr_labels: list[torch.Tensor] = []
    expr_temperatures: list[torch.Tensor] = []  # per face, for a model with a calibrator
    start = time.perf_counter()
    outputs = model_outputs(
        model,
        data,
        batch_size=batch_size,
        device=dev,
        num_workers=num_workers,
        progress=progress,
        total=n_total,
        amp=amp,
    )
    for batch, out in outputs:
        seen += int(batch["image"].shape[0])
        for task, n in _labelled_counts(batch).items():
            labelled[task] += n
        if meter is not None:
            pred, target = _meter_inputs(out, batch, meter.tasks, align)
            meter.update(pred, target)
            if "expression" in pred:
                mask = torch.as_tensor(target["expression_mask"]).bool().cpu()
                if mask.any():
                    expr_logits.append(pred["expression"].cpu()[mask])
                    expr_labels.append(torch.as_tensor(target["expression"]).cpu()[mask].long())
                    per_face = getattr(out, "expression_temperature", None)
                    if per_face is not None:
                        expr_temperatures.append(per_face.float().cpu().reshape(-1, 1)[mask])
    end = time.perf_counter()  # the meter read the last outputs back: the device is done
    seconds = end - start

    metrics: dict[str, dict[str, Any]] = {}
    not_scored: dict[str, str] = {}
    computed = meter.compute() if meter is not None else {}
    for task in TASKS:
        if task not in config.tasks:
            if labelled[task]:
                not_scored[task] = f"the model has no {task} head ({labelled[task]} labelled)"
            continue
        if task not in computed:
            not_scored[task] = "none of the model's action units is labelled in the dataset"
            continue
        if not labelled[task]:
            not_scored[task] = "no valid label in the dataset"
            continue
        metrics[task] = _task_metrics(task, computed[task], meter, align, float(au_threshold))
    if "expression" in metrics and expr_logits:
        from affectfpn.calibration import plot_reliability, probabilities
        from affectfpn.calibration import reliability as reliability_bins

        temperature: float | torch.Tensor = float(config.expression_temperature)
        if expr_temperatures:
            temperature = torch.cat(expr_temperatures)
        probs = probabilities(torch.cat(expr_logits), temperature)
        diagram = reliability_bins(probs, torch.cat(expr_labels))
        metrics["expression"]["ece"] = diagram.ece
        if isinstance(temperature, torch.Tensor):
            metrics["expression"]["temperature"] = float(temperature.mean())
            metrics["expression"]["temperature_per_face"] = True
        else:
            metrics["expression"]["temperature"] = temperature
        if reliability is not None:
            where = Path(str(dataset)).name if isinstance(dataset, str | os.PathLike) else "data"
            plot_reliability(diagram, reliability, title=f"{model_name or 'model'} on {where}")
    if not metrics:
        logger.warning(
            "nothing scored: the model predicts %s but the dataset labels %s",
            list(config.tasks),
            [t for t in TASKS if labelled[t]] or "nothing",
        )

    report = EvaluationReport(
        metrics=metrics,
        num_samples=seen,
        labelled=labelled,
        dataset=description,
        not_scored=not_scored,
        excluded=excluded,
        model_name=model_name,
        model_revision=model_revision,
        model_tasks=tuple(config.tasks),
        model_config=config.to_dict(),
        num_params=sum(p.numel() for p in model.parameters()),
        seconds=seconds,
        images_per_second=seen / seconds if seconds > 0 else 0.0,
        device=str(dev),
        amp=None if amp_type is None else str(amp_type).removeprefix("torch."),
        batch_size=batch_size,
        au_threshold=float(au_threshold),
        affectfpn_version=__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    logger.info("%s", report.summary())
    if output is not None:
        report.to_json(output)
    return report


def model_outputs(
    model: AffectFPN,
    data: Dataset[dict[str, Any]],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
    total: int | None = None,
    amp: str = "auto",
) -> Iterator[tuple[dict[str, Any], AffectFPNOutput]]:
    """Run ``model`` over a dataset of samples: ``(batch, output)`` for each batch, in order.

    :func:`models_outputs` with one model; see there.
    """
    for batch, outputs in models_outputs(
        {"model": model},
        data,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
        total=total,
        amp=amp,
    ):
        yield batch, outputs["model"]


def models_outputs(
    models: Mapping[str, AffectFPN],
    data: Dataset[dict[str, Any]],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
    total: int | None = None,
    amp: str = "auto",
) -> Iterator[tuple[dict[str, Any], dict[str, AffectFPNOutput]]]:
    """Run several models over a dataset in one pass: ``(batch, {name: output})`` per batch.

    The one inference loop of evaluation, pseudo-labelling (the teachers of a teacher-student
    recipe read the data once) and distillation: uint8 images at the models' input size
    (samples from :func:`affectfpn.preprocess.eval_transform`; every model must share it) are
    moved to ``device``, normalised there for each model and run under
    ``torch.inference_mode()`` with mixed precision ``amp`` (the package's one vocabulary:
    ``"auto"``, the default, is bfloat16, else float16 autocast on CUDA and none on the CPU;
    ``"on"``, ``"off"``, ``"bf16"``, ``"fp16"``). The models are in eval mode on ``device``
    while the iterator runs and go back to their devices and modes when it is exhausted or
    closed. The batch is the collated samples, left on the CPU. (The trainer's validation is
    the other loop: it shards the data across DDP ranks and merges the meters.)

    Raises:
        ConfigError: no model, or models with different input sizes.
        InputError: samples without a ``3 x H x W`` image at the models' input size.
    """
    if not models:
        raise ConfigError("models_outputs needs at least one model")
    configs = {name: model.config for name, model in models.items()}
    sizes = {tuple(config.input_size) for config in configs.values()}
    if len(sizes) > 1:
        raise ConfigError(
            f"models_outputs runs models on the same images; their input sizes differ: {sizes}"
        )
    first_config = next(iter(configs.values()))
    dev = resolve_device(device)
    amp_type = amp_dtype(dev, amp_mode(amp))
    loader = DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    n = total if total is not None else len(data)  # type: ignore[arg-type]
    homes = {}
    for name, model in models.items():
        first = next(model.parameters(), None)
        homes[name] = (first.device if first is not None else torch.device("cpu"), model.training)
    try:
        for model in models.values():
            model.to(dev).eval()
        for batch in _batches(loader, n, progress):
            images = _check_images(batch.get("image"), first_config).to(dev, non_blocking=True)
            with torch.inference_mode(), autocast(dev, amp_type):
                outputs = {
                    name: model(normalize(images, configs[name])) for name, model in models.items()
                }
            yield batch, outputs
    finally:
        for name, model in models.items():
            home, was_training = homes[name]
            model.to(home)
            model.train(was_training)


def _meter_inputs(
    out: Any, batch: Mapping[str, Any], tasks: Sequence[str], align: _Alignment
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Per-task predictions (float32, label order) and targets for the meter."""
    pred: dict[str, torch.Tensor] = {}
    target: dict[str, Any] = {}
    n = int(batch["image"].shape[0])
    for task in tasks:
        p = getattr(out, task, None)
        if p is None:
            continue
        p = p.float()
        if task in batch and f"{task}_mask" in batch:
            t, m = batch[task], batch[f"{task}_mask"]
        else:  # the samples carry no such label: score nothing for this task
            t, m = _empty_label(task, n)
        if task == "expression" and align.expression_order is not None:
            p = p[:, align.expression_order]
        if task == "au":
            p = p[:, align.au_model_cols]
            t = torch.as_tensor(t)[:, align.au_label_cols]
            m = torch.as_tensor(m)[:, align.au_label_cols]
        pred[task] = p
        target[task] = t
        target[f"{task}_mask"] = m
    return pred, target


def _empty_label(task: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if task == "va":
        return torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool)
    if task == "expression":
        return torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.bool)
    k = len(ACTION_UNITS)
    return torch.zeros(n, k), torch.zeros(n, k, dtype=torch.bool)


def _task_metrics(
    task: str,
    values: Mapping[str, Any],
    meter: MultiTaskMeter | None,
    align: _Alignment,
    threshold: float,
) -> dict[str, Any]:
    out = dict(values)
    if meter is None:
        return out
    m = meter[task]
    if task == "expression" and isinstance(m, ExpressionMeter):
        cm = m.confusion
        out["class_names"] = list(align.class_names)
        out["support_per_class"] = [int(v) for v in cm.sum(axis=1)]
        out["confusion_matrix"] = [[int(v) for v in row] for row in cm]
    elif task == "au" and isinstance(m, AUMeter):
        counts = m.counts  # TP, FP, FN, TN per unit
        out["unit_names"] = list(align.unit_names)
        out["positives_per_unit"] = [int(v) for v in counts[:, 0] + counts[:, 2]]
        out["labelled_per_unit"] = [int(v) for v in counts.sum(axis=1)]
        out["threshold"] = threshold
    return out


# ----------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class CalibrationData:
    """What a model gives the labelled faces of one dataset, for fitting its calibration.

    Attributes:
        features: ``N x D`` pooled features that a per-face temperature reads (float32).
        logits: ``N x C`` raw expression logits (float32, the model's class order).
        labels: ``N`` expression labels (the model's class order).
        temperatures: ``N`` temperatures the model applies today (its per-face ones, or its
            config's ``expression_temperature`` for every face).
    """

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    temperatures: torch.Tensor


class _WithFeatures(torch.nn.Module):
    """A model whose forward also returns the pooled features (``AffectFPN.forward_features``),
    so that :func:`models_outputs` runs it like any model."""

    def __init__(self, model: AffectFPN) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, x: torch.Tensor) -> tuple[AffectFPNOutput, torch.Tensor]:
        return self.model.forward_features(x)


def calibration_data(
    model: AffectFPN, dataset: Any, *, batch_size: int = 64, device: str | None = None
) -> CalibrationData:
    """Run ``model`` over the samples of ``dataset`` that carry an expression label: their
    pooled features, raw expression logits, labels and current temperatures.

    Raises:
        InputError: a model without an expression head or without ``forward_features``, or
            data without expression labels.
    """
    if "expression" not in model.config.tasks:
        raise InputError("the model has no expression head to calibrate")
    if not callable(getattr(model, "forward_features", None)):
        raise InputError(
            f"calibration needs an AffectFPN (with forward_features), got {type(model).__name__}"
        )
    parts: dict[str, list[torch.Tensor]] = {"z": [], "x": [], "y": [], "t": []}
    scalar = float(model.config.expression_temperature)
    wrapped = cast(AffectFPN, _WithFeatures(model))
    for batch, result in model_outputs(wrapped, dataset, batch_size=batch_size, device=device):
        out, features = cast(tuple[AffectFPNOutput, torch.Tensor], result)
        mask = torch.as_tensor(batch["expression_mask"]).bool()
        if out.expression is None or not mask.any():
            continue
        parts["z"].append(features.float().cpu()[mask])
        parts["x"].append(out.expression.float().cpu()[mask])
        parts["y"].append(torch.as_tensor(batch["expression"])[mask].long())
        per_face = out.expression_temperature
        parts["t"].append(
            torch.full((int(mask.sum()),), scalar)
            if per_face is None
            else per_face.float().cpu().reshape(-1)[mask]
        )
    if not parts["x"]:
        raise InputError("the data holds no expression label to calibrate on")
    z, x, y, t = (torch.cat(parts[k]) for k in ("z", "x", "y", "t"))
    return CalibrationData(features=z, logits=x, labels=y, temperatures=t)


@overload
def calibrate(
    model: Any,
    datasets: Mapping[str, Any],
    *,
    batch_size: int = ...,
    device: str | None = ...,
    adaptive: Literal[False] = ...,
) -> tuple[float, dict[str, dict[str, float]]]: ...
@overload
def calibrate(
    model: Any,
    datasets: Mapping[str, Any],
    *,
    batch_size: int = ...,
    device: str | None = ...,
    adaptive: Literal[True],
) -> "tuple[AdaptiveTemperature, dict[str, dict[str, float]]]": ...
def calibrate(
    model: Any,
    datasets: Mapping[str, Any],
    *,
    batch_size: int = 64,
    device: str | None = None,
    adaptive: bool = False,
) -> "tuple[float | AdaptiveTemperature, dict[str, dict[str, float]]]":
    """Fit the expression temperature of ``model`` on ``{name: dataset}`` (validation data).

    With ``adaptive=False`` one temperature ``T`` (:func:`affectfpn.calibration.fit_temperature`);
    with ``adaptive=True`` a per-face temperature
    (:func:`affectfpn.calibration.fit_adaptive_temperature`) on the model's pooled features,
    with the best single temperature beside it (``.single_temperature``). Each dataset counts
    the same. The model is not changed: save ``model.config.replace(expression_temperature=T)``
    with its weights, or call ``model.set_calibrator(fit)`` (``affectfpn calibrate`` does).

    Returns:
        ``(T or the fit, {name: {"ece_before", "ece_after", "nll_before", "nll_after",
        "samples"}})``, where "before" is the model's current calibration; with
        ``adaptive=True`` also ``"ece_single"`` and ``"nll_single"`` at the single temperature.

    Raises:
        InputError: no dataset, a model without an expression head, data without expression
            labels.
    """
    if not datasets:
        raise InputError("calibrate needs at least one validation dataset")
    from affectfpn.calibration import (
        expected_calibration_error,
        fit_adaptive_temperature,
        fit_temperature,
        nll,
        probabilities,
    )

    def ece(x: torch.Tensor, y: torch.Tensor, t: float | torch.Tensor) -> float:
        return expected_calibration_error(probabilities(x, t), y)

    data = {
        name: calibration_data(model, dataset, batch_size=batch_size, device=device)
        for name, dataset in datasets.items()
    }
    single = fit_temperature([(d.logits, d.labels) for d in data.values()])
    fit: float | AdaptiveTemperature = single
    if adaptive:
        fit = fit_adaptive_temperature(
            [(d.features, d.logits, d.labels) for d in data.values()], single_temperature=single
        )
    report: dict[str, dict[str, float]] = {}
    for name, d in data.items():
        x, y = d.logits.double(), d.labels
        after = single if isinstance(fit, float) else fit(d.features)
        report[name] = {
            "samples": float(len(y)),
            "ece_before": ece(x, y, d.temperatures),
            "ece_after": ece(x, y, after),
            "nll_before": nll(x, y, d.temperatures),
            "nll_after": nll(x, y, after),
        }
        if adaptive:
            report[name]["ece_single"] = ece(x, y, single)
            report[name]["nll_single"] = nll(x, y, single)
    return fit, report
