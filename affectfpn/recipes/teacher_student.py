"""The paper's teacher-student strategy (He et al. 2021, algorithm 1) as one resumable pipeline.

Four stages, run in order by :func:`run_teacher_student` from a ``kind = "teacher-student"``
recipe; each can also run alone (``stages=["pseudo"]``) and reuses what finished stages wrote:

1. ``teachers``: one single-task teacher per task, each trained on that task's mix of datasets
   (the paper: expressions on Aff-Wild2 train + ExpW + AffectNet; valence/arousal on Aff-Wild2
   train, every 5th frame, + AffectNet; action units on Aff-Wild2 only). A teacher sees only
   samples that carry a valid label of its task. A teacher whose run finished (its ``done.json``
   or ``last.pt`` holds all epochs) is not trained again; an interrupted one resumes.
2. ``pseudo``: every teacher labels every training sample of the target dataset (the student's
   ``[student.data] train``, Aff-Wild2 train with multi-task keys). The labels are
   :class:`~affectfpn.recipes.datasets.LabelTable` files keyed by sample key (never by row
   order), one per teacher. Validation samples are never labelled: the target must share no
   Aff-Wild2 video (and no key) with the validation data, or the stage stops.
3. ``student``: the multi-task student trains on the unified dataset: the target's real labels,
   with every missing label filled from the teachers' tables by key
   (:class:`~affectfpn.recipes.datasets.WithPseudoLabels`; a real label always wins). Its
   validation data is read fresh from the annotations, never from a table.
4. ``evaluate``: the student's best epoch (``student/best``) is scored on the validation data
   with the ABAW2 metrics and exported to ``export/``, a folder ready for
   ``AffectFPN.from_pretrained`` or the Hub whose model card holds the measured metrics.

Pseudo labels (``[pseudo]``, :class:`PseudoLabelSettings`): expressions as the argmax class
(``"hard"``, the reference code) or the softmax probabilities (``"soft"``); action units as
``sigmoid(logit) >= au_threshold`` (``"hard"``) or the probabilities (``"soft"``); valence and
arousal clipped to ``+-va_clip`` (0.99). The paper writes "logit > 0.5" for action units; this
library thresholds the *probability* at 0.5 by default (that is, logit > 0), the same decision
rule as the AU metric and the training loss; ``au_threshold = 0.6225`` (= sigmoid(0.5))
reproduces the literal reading.

Outputs under the recipe's ``output_dir``::

    teachers/<task>/    a Trainer folder per teacher: last.pt, best/, metrics.jsonl,
                        metrics.csv, recipe.json, done.json
    pseudo/<task>.csv   one LabelTable per teacher (``.json`` with ``format = "json"``)
    pseudo/done.json    what the tables were made from (teachers, settings) and label counts
    student/            the student's Trainer folder (+ inputs.json: the tables it trained on)
    export/             config.json, model.safetensors, README.md (card with the metrics)
    evaluation.json     the validation metrics of the exported model, the teachers' and the
                        student's best validation scores

The reference code's flaws are guarded against: train and validation data never share a video
or key (checked before every stage that trains or labels); invalid VA frames (-5) carry no label
(they are left out of teacher data and filled by the VA teacher in the student's data);
teacher tables are joined by key; every ExpW face is its own sample (key
``"<image>#<face_id>"``); no validation frame is labelled or receives a label.
"""

import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.evaluation import model_outputs, models_outputs
from affectfpn.io import atomic_write
from affectfpn.labels import TASKS
from affectfpn.metrics import MultiTaskMeter
from affectfpn.models.affectfpn import AffectFPN
from affectfpn.preprocess import eval_transform
from affectfpn.recipes.datasets import (
    AffWild2,
    AffWild2MultiTask,
    LabelledDataset,
    LabelTable,
    MixedDataset,
    Sample,
    WithPseudoLabels,
    check_disjoint,
    dataset_keys,
    dataset_label_arrays,
)
from affectfpn.recipes.stage import (
    Recipe,
    build_datasets,
    check_stage_tables,
    model_from_recipe,
    train_from_recipe,
)
from affectfpn.recipes.trainer import (
    DONE_NAME,
    TrainSettings,
    remove_stale_temporaries,
    resolve_workers,
    settings_from_dict,
    settings_of_kind,
    training_finished,
)

logger = logging.getLogger(__name__)

#: The stages, in the order they run.
STAGES: tuple[str, ...] = ("teachers", "pseudo", "student", "evaluate")
#: Tables a stage may override (merged over the recipe's top-level tables of the same name).
_SHARED_TABLES: tuple[str, ...] = ("model", "augment", "train", "card")
_STAGE_KEYS: tuple[str, ...] = (*_SHARED_TABLES, "data")
_INPUTS_NAME = "inputs.json"
#: How long the other ranks of a distributed run wait while rank 0 labels or evaluates alone.
_DIST_TIMEOUT = datetime.timedelta(hours=12)


# --------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PseudoLabelSettings:
    """How teacher outputs become labels (the recipe's ``[pseudo]`` table).

    Args:
        expression: ``"hard"`` (the argmax class, as the reference code) or ``"soft"`` (the
            softmax probabilities at ``temperature``; the student then learns from a
            probability target).
        au: ``"hard"`` (1 where ``sigmoid(logit) >= au_threshold``, else 0) or ``"soft"`` (the
            probabilities).
        au_threshold: Probability threshold of hard AU labels; 0.5 means logit > 0.
            ``0.6225`` (sigmoid(0.5)) reproduces the paper's literal "logit > 0.5".
        va_clip: Teacher valence/arousal are clipped to ``[-va_clip, va_clip]``.
        temperature: Softmax temperature of soft expression labels.
        batch_size: Images per teacher forward pass.
        num_workers: Data-loading processes (default: the teachers' ``train.num_workers``).
        device: Where the teachers run (default: the teachers' ``train.device``).
        format: Table files as ``"csv"`` or ``"json"``.
    """

    expression: str = "hard"
    au: str = "hard"
    au_threshold: float = 0.5
    va_clip: float = 0.99
    temperature: float = 1.0
    batch_size: int = 256
    num_workers: int | None = None
    device: str | None = None
    format: str = "csv"

    def __post_init__(self) -> None:
        for name in ("expression", "au"):
            if getattr(self, name) not in ("hard", "soft"):
                raise ConfigError(f"pseudo.{name} must be 'hard' or 'soft'")
        if not 0 < self.au_threshold < 1:
            raise ConfigError("pseudo.au_threshold must be a probability in (0, 1)")
        if not 0 < self.va_clip <= 1:
            raise ConfigError("pseudo.va_clip must be in (0, 1]")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError("pseudo.temperature must be positive")
        if int(self.batch_size) < 1:
            raise ConfigError("pseudo.batch_size must be at least 1")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise ConfigError("pseudo.num_workers must be 0 or more")
        if self.format not in ("csv", "json"):
            raise ConfigError("pseudo.format must be 'csv' or 'json'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "pseudo") -> "PseudoLabelSettings":
        """Build from a recipe table; an unknown key is an error naming it."""
        return settings_from_dict(cls, data, source=source)


# --------------------------------------------------------------------------------- recipe checks
def _table(value: Any, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source} must be a table")
    return copy.deepcopy(dict(value))


def _teacher_tasks(recipe: Recipe) -> tuple[str, ...]:
    teachers = _table(recipe.tables.get("teachers"), f"{recipe.source} [teachers]")
    if "tasks" in teachers:
        tasks = teachers["tasks"]
        if isinstance(tasks, str) or not isinstance(tasks, list):
            raise ConfigError(f"{recipe.source} [teachers] tasks must be a list of task names")
        bad = [t for t in tasks if t not in TASKS]
        if bad or len(set(tasks)) != len(tasks):
            raise ConfigError(
                f"{recipe.source} [teachers] tasks {tasks} must be distinct names from "
                f"{list(TASKS)}"
            )
        return tuple(t for t in TASKS if t in tasks)
    return tuple(t for t in TASKS if t in teachers)


def _merged(recipe: Recipe, *layers: Mapping[str, Any]) -> dict[str, Any]:
    """The stage tables: each shared table merged key by key over the recipe's top level."""
    out: dict[str, Any] = {}
    for name in _SHARED_TABLES:
        merged = recipe.table(name)
        for layer in layers:
            merged.update(_table(layer.get(name), f"{recipe.source} [{name}]"))
        out[name] = merged
    return out


def check_teacher_student(recipe: Recipe) -> None:
    """Check a ``kind = "teacher-student"`` recipe; an unknown setting is an error naming it.

    Raises:
        ConfigError: naming the table and the setting at fault.
    """
    src = recipe.source
    teachers = _table(recipe.tables.get("teachers"), f"{src} [teachers]")
    student = _table(recipe.tables.get("student"), f"{src} [student]")
    known = ["tasks", *_SHARED_TABLES, *TASKS]
    unknown = sorted(set(teachers) - set(known))
    if unknown:
        raise ConfigError(f"{src} [teachers]: unknown setting(s) {unknown}; known: {known}")
    tasks = _teacher_tasks(recipe)
    if not tasks:
        raise ConfigError(
            f"{src}: no teacher: add a [teachers.<task>.data] table for some of {list(TASKS)}"
        )
    for task in tasks:
        where = f"{src} [teachers.{task}]"
        table = _table(teachers.get(task), where)
        unknown = sorted(set(table) - set(_STAGE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {list(_STAGE_KEYS)}")
        stage = _merged(recipe, teachers, table)
        stage["model"]["tasks"] = [task]
        stage["data"] = _table(table.get("data"), f"{where}.data")
        if not stage["data"].get("train"):
            raise ConfigError(f"{where}.data: 'train' lists no dataset")
        check_stage_tables(stage, source=where)
    unknown = sorted(set(student) - set(_STAGE_KEYS))
    if unknown:
        raise ConfigError(
            f"{src} [student]: unknown setting(s) {unknown}; known: {list(_STAGE_KEYS)}"
        )
    stage = _merged(recipe, student)
    stage["data"] = _table(student.get("data"), f"{src} [student.data]")
    for split in ("train", "val"):
        if not stage["data"].get(split):
            raise ConfigError(f"{src} [student.data]: '{split}' lists no dataset")
    check_stage_tables(stage, source=f"{src} [student]")
    PseudoLabelSettings.from_dict(recipe.table("pseudo"), source=f"{src} [pseudo]")


# --------------------------------------------------------------------------------- data helpers
class TaskLabelled(LabelledDataset):
    """The samples of ``dataset`` that carry a valid label of ``task`` (a teacher's data).

    For ``"au"`` a sample needs at least one valid action unit. Keys, labels and images are the
    underlying dataset's.
    """

    def __init__(self, dataset: Dataset[Sample], task: str) -> None:
        if task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
        labels = dataset_label_arrays(dataset)
        mask = {
            "va": labels.va_mask,
            "expression": labels.expression_mask,
            "au": labels.au_mask.any(axis=1) if len(labels) else labels.va_mask,
        }[task]
        self.dataset = dataset
        self.task = task
        self.rows = np.flatnonzero(mask)
        keys = dataset_keys(dataset)
        self._keys_cache = [keys[i] for i in self.rows]
        self._labels = labels.take(self.rows)
        self.name = f"{getattr(dataset, 'name', 'dataset')}[{task}]"
        logger.info(
            "%s: %d of %d samples have a %s label", self.name, len(self.rows), len(keys), task
        )

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[int(self.rows[self._index(index)])]


class _Keys(Dataset[Sample]):
    """A stand-in with a ``keys`` list, for :func:`check_disjoint`."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError("only the keys of this stand-in are known")


def _parts(dataset: Any) -> Iterator[Any]:
    """The dataset and every dataset it wraps."""
    yield dataset
    if isinstance(dataset, MixedDataset):
        for part in dataset.datasets:
            yield from _parts(part)
    inner = getattr(dataset, "dataset", None)
    if inner is not None:
        yield from _parts(inner)


def _leaf_keys(dataset: Any) -> list[str]:
    """The keys of every innermost dataset of ``dataset``, qualified by its class name."""
    keys: list[str] = []
    for part in _parts(dataset):
        if isinstance(part, MixedDataset) or getattr(part, "dataset", None) is not None:
            continue
        keys.extend(f"{type(part).__name__}:{k}" for k in dataset_keys(part))
    return keys


def _affwild2_keys(dataset: Any) -> list[str]:
    """The (unprefixed) ``<video>/<frame>`` keys of every Aff-Wild2 part of ``dataset``."""
    keys: list[str] = []
    for part in _parts(dataset):
        if isinstance(part, AffWild2 | AffWild2MultiTask):
            keys.extend(part.keys)
    return keys


def _video(key: str) -> str:
    return key.split("/", 1)[0]


def check_no_leak(train: Any, val: Any, *, what: str) -> None:
    """Raise :class:`DatasetError` if ``train`` and ``val`` share a key or an Aff-Wild2 video.

    Args:
        train: a training dataset (any wrapping of the datasets here).
        val: a validation dataset.
        what: names the training data in the message.
    """
    try:
        check_disjoint(_Keys(_leaf_keys(train)), _Keys(_leaf_keys(val)))
        check_disjoint(_Keys(_affwild2_keys(train)), _Keys(_affwild2_keys(val)), by=_video)
    except DatasetError as err:
        raise DatasetError(f"{what} overlaps the validation data: {err}") from None


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, default=_json_default) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def evaluate_model(
    model: AffectFPN,
    dataset: Dataset[Sample],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "auto",
) -> dict[str, dict[str, Any]]:
    """Score ``model`` on a labelled dataset with the ABAW2 metrics of every task it predicts.

    Returns:
        ``{task: metrics}`` as :meth:`affectfpn.metrics.MultiTaskMeter.compute` gives them.
    """
    meter = MultiTaskMeter(model.config.tasks, au_from_logits=True)
    for batch, out in model_outputs(
        model, dataset, batch_size=batch_size, num_workers=num_workers, device=device
    ):
        meter.update(type(out)(*(None if t is None else t.float().cpu() for t in out)), batch)
    return meter.compute()


def _flat_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    flat = {
        f"{task}/{k}": float(v)
        for task, values in metrics.items()
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if metrics:
        flat["overall/score"] = float(sum(float(v["score"]) for v in metrics.values()))
    return flat


# --------------------------------------------------------------------------------- the pipeline
class TeacherStudent:
    """The stages of a ``kind = "teacher-student"`` recipe, with the data each one uses.

    Args:
        recipe: A loaded teacher-student recipe (see :func:`affectfpn.recipes.recipe.load_recipe`).

    Example:
        >>> from affectfpn.recipes.recipe import load_recipe
        >>> ts = TeacherStudent(load_recipe("recipes/abaw2-teacher-student.toml"))  # doctest: +SKIP
        >>> ts.run(["teachers"])                                                    # doctest: +SKIP
    """

    def __init__(self, recipe: Recipe) -> None:
        if recipe.kind != "teacher-student":
            raise ConfigError(f"{recipe.source}: kind is {recipe.kind!r}, not 'teacher-student'")
        check_teacher_student(recipe)
        self.recipe = recipe
        self.output_dir = Path(recipe.output_dir)
        self.teacher_tasks = _teacher_tasks(recipe)
        self.pseudo = PseudoLabelSettings.from_dict(
            recipe.table("pseudo"), source=f"{recipe.source} [pseudo]"
        )

    # ------------------------------------------------------------------ layout
    def teacher_dir(self, task: str) -> Path:
        """The Trainer folder of the ``task`` teacher."""
        return self.output_dir / "teachers" / task

    @property
    def pseudo_dir(self) -> Path:
        """Where the pseudo-label tables are written."""
        return self.output_dir / "pseudo"

    def table_path(self, task: str) -> Path:
        """The pseudo-label table of the ``task`` teacher."""
        return self.pseudo_dir / f"{task}.{self.pseudo.format}"

    @property
    def student_dir(self) -> Path:
        """The student's Trainer folder."""
        return self.output_dir / "student"

    @property
    def export_dir(self) -> Path:
        """The final Hub-ready folder."""
        return self.output_dir / "export"

    @property
    def evaluation_path(self) -> Path:
        """The validation metrics of the exported model."""
        return self.output_dir / "evaluation.json"

    # ------------------------------------------------------------------ stage recipes
    def teacher_recipe(self, task: str) -> Recipe:
        """The ``kind = "train"`` recipe of one teacher (tables merged, tasks = [task])."""
        if task not in self.teacher_tasks:
            raise ConfigError(f"{self.recipe.source}: no teacher for {task!r}")
        teachers = self.recipe.table("teachers")
        own = _table(teachers.get(task), f"{self.recipe.source} [teachers.{task}]")
        tables = _merged(self.recipe, teachers, own)
        tables["model"]["tasks"] = [task]
        tables["data"] = _table(own.get("data"), "data")
        card = tables["card"]
        layered = {**_table(teachers.get("card"), "card"), **_table(own.get("card"), "card")}
        card["name"] = layered.get("name", f"{self.recipe.name}-teacher-{task}")
        card["description"] = layered.get(
            "description",
            f"Single-task {task} teacher of the teacher-student pipeline {self.recipe.name!r}.",
        )
        return self._stage(f"{self.recipe.name}-teacher-{task}", tables, self.teacher_dir(task))

    def student_recipe(self) -> Recipe:
        """The ``kind = "train"`` recipe of the student (its data is replaced by the unified
        dataset when it trains)."""
        student = self.recipe.table("student")
        tables = _merged(self.recipe, student)
        tables["data"] = _table(student.get("data"), "data")
        return self._stage(f"{self.recipe.name}-student", tables, self.student_dir)

    def _stage(self, name: str, tables: dict[str, Any], out: Path) -> Recipe:
        data = {"name": name, "kind": "train", "output_dir": str(out), **tables}
        return Recipe(
            path=self.recipe.path, name=name, kind="train", output_dir=out, data=data, tables=tables
        )

    def _settings(self, recipe: Recipe) -> TrainSettings:
        return recipe.train_settings

    def _config(self, recipe: Recipe) -> AffectFPNConfig:
        table = recipe.table("model")
        if "init" in table:
            config: AffectFPNConfig = model_from_recipe(recipe).config
            return config
        table.pop("backbone_weights", None)
        return AffectFPNConfig.from_dict(table, source=f"{recipe.source} [model]")

    # ------------------------------------------------------------------ data
    def teacher_data(
        self, task: str, config: AffectFPNConfig | None = None
    ) -> tuple[Dataset[Sample], Dataset[Sample] | None]:
        """The ``task`` teacher's training set (only samples with a ``task`` label) and its
        validation set, with images at ``config``'s input size."""
        recipe = self.teacher_recipe(task)
        config = config or self._config(recipe)
        data = recipe.table("data")
        transform = eval_transform(config)
        src = f"{self.recipe.source} [teachers.{task}.data]"
        train = build_datasets(data.get("train"), transform=transform, source=f"{src} train")
        if train is None:
            raise ConfigError(f"{src}: 'train' lists no dataset")
        val = build_datasets(data.get("val"), transform=transform, source=f"{src} val")
        return TaskLabelled(train, task), val

    def target_data(self, config: AffectFPNConfig | None = None) -> Dataset[Sample]:
        """The student's training samples with their real labels only (what teachers label)."""
        recipe = self.student_recipe()
        config = config or self._config(recipe)
        data = recipe.table("data")
        src = f"{self.recipe.source} [student.data] train"
        dataset = build_datasets(data.get("train"), transform=eval_transform(config), source=src)
        if dataset is None:
            raise ConfigError(f"{src}: lists no dataset")
        return dataset

    def validation_data(self, config: AffectFPNConfig | None = None) -> Dataset[Sample]:
        """The student's validation samples with their real labels (never pseudo labels)."""
        recipe = self.student_recipe()
        config = config or self._config(recipe)
        data = recipe.table("data")
        src = f"{self.recipe.source} [student.data] val"
        dataset = build_datasets(data.get("val"), transform=eval_transform(config), source=src)
        if dataset is None:
            raise ConfigError(f"{src}: lists no dataset")
        return dataset

    def pseudo_table(self) -> LabelTable:
        """The teachers' tables joined by key (each table holds its own task's labels)."""
        tables = []
        for task in self.teacher_tasks:
            path = self.table_path(task)
            if not path.is_file():
                raise ConfigError(f"pseudo labels {path} are missing: run the 'pseudo' stage first")
            tables.append(LabelTable.load(path))
        return LabelTable.merge(tables)

    def student_data(
        self, config: AffectFPNConfig | None = None
    ) -> tuple[Dataset[Sample], Dataset[Sample]]:
        """The unified training set (real labels, missing ones filled by the teachers' tables
        by key; a real label wins) and the validation set (real labels only).

        Raises:
            DatasetError: the training and validation data share a key or an Aff-Wild2 video,
                or a table holds a key that is not a training sample (such as a validation
                frame).
        """
        recipe = self.student_recipe()
        config = config or self._config(recipe)
        target = self.target_data(config)
        val = self.validation_data(config)
        check_no_leak(target, val, what="[student.data] train")
        table = self.pseudo_table()
        train_keys = set(dataset_keys(target))
        stray = [k for k in table if k not in train_keys]
        if stray:
            raise DatasetError(
                f"the pseudo-label tables in {self.pseudo_dir} hold {len(stray)} key(s) that are "
                f"not training samples, e.g. {stray[:3]}; teacher labels must come from "
                "training samples only: delete the folder and run the 'pseudo' stage again"
            )
        return WithPseudoLabels(target, table, real_label_wins=True), val

    # ------------------------------------------------------------------ stage 1
    def train_teachers(self) -> dict[str, Any]:
        """Train every teacher that has not finished; returns ``{task: summary}``."""
        out: dict[str, Any] = {}
        for task in self.teacher_tasks:
            _barrier()
            recipe = self.teacher_recipe(task)
            settings = self._settings(recipe)
            folder = self.teacher_dir(task)
            fingerprint = self._fingerprint(recipe)
            if self._finished(folder, fingerprint, settings.epochs):
                logger.info("teacher %s: finished earlier in %s, reused", task, folder)
                out[task] = {"reused": True, **(_read_json(folder / DONE_NAME) or {})}
                continue
            model = model_from_recipe(recipe, tasks=[task])
            train, val = self.teacher_data(task, model.config)
            check_no_leak(train, self.validation_data(model.config), what=f"teacher {task} data")
            if val is not None:
                check_no_leak(train, val, what=f"teacher {task} data")
            logger.info("teacher %s: %s", task, train.labels_summary())  # type: ignore[attr-defined]
            self._start(f"teacher {task}", folder, fingerprint)
            summary = train_from_recipe(
                recipe, output_dir=folder, train_set=train, val_set=val, model=model
            )
            out[task] = {k: v for k, v in summary.items() if k != "history"}
        _barrier()
        return out

    def _fingerprint(self, recipe: Recipe, **extra: Any) -> dict[str, Any]:
        """What a stage's result depends on (not how many epochs: more epochs resume)."""
        from affectfpn.recipes.augment import BatchAugment

        model = recipe.table("model")
        train = dataclasses.asdict(self._settings(recipe))
        for key in settings_of_kind("run"):
            train.pop(key, None)
        value = {
            "model": {
                "config": self._config(recipe).to_dict(),
                "init": model.get("init"),
                "backbone_weights": model.get("backbone_weights"),
            },
            "augment": dataclasses.asdict(BatchAugment(**recipe.table("augment"))),
            "train": train,
            "data": recipe.table("data"),
            **extra,
        }
        normalised: dict[str, Any] = json.loads(json.dumps(value, default=_json_default))
        return normalised

    def _finished(self, folder: Path, fingerprint: Mapping[str, Any], epochs: int) -> bool:
        """Whether ``folder`` holds a finished run made from the same inputs."""
        previous = _read_json(folder / _INPUTS_NAME)
        if previous is not None and previous != fingerprint:
            return False
        return training_finished(folder, epochs)

    def _start(self, what: str, folder: Path, fingerprint: Mapping[str, Any]) -> None:
        """Before training into ``folder``: move a run made from other inputs aside."""
        if _is_main():
            previous = _read_json(folder / _INPUTS_NAME)
            if previous is not None and previous != fingerprint:
                stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
                stale = folder.with_name(f"{folder.name}.stale-{stamp}")
                n = 1
                while stale.exists():
                    n += 1
                    stale = folder.with_name(f"{folder.name}.stale-{stamp}-{n}")
                logger.warning(
                    "%s: %s was trained from other settings, data or labels: moved it to %s and "
                    "training again",
                    what,
                    folder,
                    stale,
                )
                folder.rename(stale)
            _write_json(folder / _INPUTS_NAME, fingerprint)
        _barrier()

    def _teacher_fingerprints(self) -> dict[str, Any]:
        prints: dict[str, Any] = {}
        for task in self.teacher_tasks:
            folder = self.teacher_dir(task)
            settings = self._settings(self.teacher_recipe(task))
            if not training_finished(folder, settings.epochs):
                raise ConfigError(
                    f"the {task} teacher in {folder} has not finished its {settings.epochs} "
                    "epochs: run the 'teachers' stage first"
                )
            if not (folder / "best" / "model.safetensors").is_file():
                raise ConfigError(f"the {task} teacher has no best/ model in {folder}")
            prints[task] = _read_json(folder / DONE_NAME) or {"epochs": settings.epochs}
        return prints

    # ------------------------------------------------------------------ stage 2
    def pseudo_label(self) -> dict[str, Any]:
        """Label every training sample of the target with every teacher (unless done)."""
        _barrier()
        inputs = {
            "teachers": self._teacher_fingerprints(),
            "settings": dataclasses.asdict(self.pseudo),
            "target": self.student_recipe().table("data").get("train"),
        }
        done_path = self.pseudo_dir / DONE_NAME
        done = _read_json(done_path)
        tables_exist = all(self.table_path(t).is_file() for t in self.teacher_tasks)
        if done is not None and tables_exist and done.get("inputs") == inputs:
            logger.info("pseudo labels in %s are up to date, reused", self.pseudo_dir)
            return {"reused": True, **done}
        if not _is_main():
            _barrier()
            return _read_json(done_path) or {}
        remove_stale_temporaries(self.pseudo_dir)
        teachers = {
            task: AffectFPN.from_pretrained(self.teacher_dir(task) / "best")
            for task in self.teacher_tasks
        }
        first = next(iter(teachers.values())).config
        val_keys = set(dataset_keys(self.validation_data(first)))
        teacher_settings = self._settings(self.teacher_recipe(self.teacher_tasks[0]))
        from affectfpn._device import resolve_device

        device = resolve_device(self.pseudo.device or teacher_settings.device)
        workers = (
            self.pseudo.num_workers
            if self.pseudo.num_workers is not None
            else resolve_workers(teacher_settings.num_workers)
        )
        counts: dict[str, Any] = {}
        by_size: dict[tuple[int, int], dict[str, AffectFPN]] = {}
        for task, model in teachers.items():
            by_size.setdefault(model.config.input_size, {})[task] = model
        for group in by_size.values():
            config = next(iter(group.values())).config
            target = self.target_data(config)
            check_no_leak(target, self.validation_data(config), what="[student.data] train")
            keys: list[str] = []
            raw: dict[str, list[torch.Tensor]] = {task: [] for task in group}
            for batch, outputs in models_outputs(
                group,
                target,
                batch_size=self.pseudo.batch_size,
                num_workers=workers,
                device=device,
            ):
                keys.extend(str(k) for k in batch["key"])
                for task, out in outputs.items():
                    value = getattr(out, task)
                    raw[task].append(value.float().cpu())
            for task in group:
                table = self._table_from_outputs(task, keys, torch.cat(raw[task]))
                leaked = [k for k in table if k in val_keys]
                if leaked:  # cannot happen after check_no_leak; never write such a table
                    raise DatasetError(f"teacher {task} labelled validation samples {leaked[:3]}")
                self._save_table(table, self.table_path(task))
                counts[task] = {
                    k: v
                    for k, v in table.counts().items()
                    if k in ("samples", task) or k.startswith(f"{task}/")
                }
                logger.info("pseudo labels of teacher %s: %d samples", task, len(table))
        result = {"inputs": inputs, "samples": len(keys), "counts": counts}
        _write_json(done_path, result)
        _barrier()
        return result

    def _table_from_outputs(self, task: str, keys: list[str], values: torch.Tensor) -> LabelTable:
        p = self.pseudo
        if task == "va":
            return LabelTable.from_teacher_outputs(keys, va=values, va_clip=p.va_clip)
        if task == "expression":
            return LabelTable.from_teacher_outputs(
                keys,
                expression_logits=values,
                soft_expression=p.expression == "soft",
                temperature=p.temperature,
            )
        return LabelTable.from_teacher_outputs(
            keys, au_logits=values, au_threshold=None if p.au == "soft" else p.au_threshold
        )

    @staticmethod
    def _save_table(table: LabelTable, path: Path) -> None:
        atomic_write(path, table.save)  # the temporary file keeps the suffix

    # ------------------------------------------------------------------ stage 3
    def train_student(self) -> dict[str, Any]:
        """Train the multi-task student on the unified dataset (resuming; reused when done)."""
        _barrier()
        pseudo = _read_json(self.pseudo_dir / DONE_NAME)
        if pseudo is None:
            raise ConfigError(
                f"no pseudo labels in {self.pseudo_dir}: run the 'pseudo' stage first"
            )
        recipe = self.student_recipe()
        settings = self._settings(recipe)
        folder = self.student_dir
        fingerprint = self._fingerprint(
            recipe, pseudo={"inputs": pseudo.get("inputs"), "samples": pseudo.get("samples")}
        )
        if self._finished(folder, fingerprint, settings.epochs):
            logger.info("student: finished earlier in %s, reused", folder)
            return {"reused": True, **(_read_json(folder / DONE_NAME) or {})}
        model = model_from_recipe(recipe)
        train, val = self.student_data(model.config)
        logger.info("student: %s", train.labels_summary())  # type: ignore[attr-defined]
        self._start("student", folder, fingerprint)
        summary = train_from_recipe(
            recipe, output_dir=folder, train_set=train, val_set=val, model=model
        )
        return {k: v for k, v in summary.items() if k != "history"}

    # ------------------------------------------------------------------ stage 4
    def evaluate(self) -> dict[str, Any]:
        """Score the student's best model on the validation data and export it with its card."""
        _barrier()
        best = self.student_dir / "best"
        if not (best / "model.safetensors").is_file():
            raise ConfigError(f"no student model in {best}: run the 'student' stage first")
        if not _is_main():
            _barrier()
            return _read_json(self.evaluation_path) or {}
        recipe = self.student_recipe()
        settings = self._settings(recipe)
        if not training_finished(self.student_dir, settings.epochs):
            logger.warning("the student has not finished its epochs: evaluating its best so far")
        model = AffectFPN.from_pretrained(best)
        val = self.validation_data(model.config)
        metrics = evaluate_model(
            model,
            val,
            batch_size=self.pseudo.batch_size,
            num_workers=resolve_workers(settings.num_workers),
            device=self.pseudo.device or settings.device,
        )
        split = getattr(val, "split", "")
        data_name = f"{getattr(val, 'name', 'data')} {split}".strip() or "validation"
        student_done = _read_json(self.student_dir / DONE_NAME) or {}
        teachers = {
            task: (_read_json(self.teacher_dir(task) / DONE_NAME) or {}).get("best_score")
            for task in self.teacher_tasks
        }
        card = recipe.table("card")
        card.setdefault("name", self.recipe.name)
        if self.recipe.path is not None:
            card.setdefault("recipe", str(self.recipe.path))
        card["metrics"] = {data_name: _flat_metrics(metrics)}
        card.setdefault("training", self._training_text(student_done, teachers))
        self._export(model, card)
        exported = AffectFPN.from_pretrained(self.export_dir)
        saved = exported.state_dict()
        for name, tensor in model.state_dict().items():
            if not torch.equal(tensor, saved[name]):
                raise ConfigError(f"{self.export_dir}: tensor {name} differs from {best}")
        result = {
            "data": data_name,
            "samples": len(val),  # type: ignore[arg-type]
            "metrics": metrics,
            "scores": _flat_metrics(metrics),
            "student": {
                "best_epoch": student_done.get("best_epoch"),
                "best_score": student_done.get("best_score"),
            },
            "teachers_best_score": teachers,
            "export_dir": str(self.export_dir),
        }
        _write_json(self.evaluation_path, result)
        scores = _flat_metrics(metrics)
        logger.info(
            "evaluation on %s: %s",
            data_name,
            {k: round(v, 4) for k, v in scores.items() if k.endswith("score")},
        )
        _barrier()
        return result

    def _training_text(self, student: Mapping[str, Any], teachers: Mapping[str, Any]) -> str:
        p = self.pseudo
        parts = [
            "Teacher-student training (He et al. 2021, algorithm 1): one single-task teacher per "
            f"task ({', '.join(self.teacher_tasks)}) labelled every training frame; the student "
            "trained on the real labels with the missing ones filled by the teachers (a real "
            "label always wins).",
            f"Pseudo labels: expression {p.expression}, action units {p.au}"
            + (f" (probability > {p.au_threshold})" if p.au == "hard" else "")
            + f", valence/arousal clipped to +-{p.va_clip}.",
        ]
        if student.get("epochs") is not None:
            parts.append(
                f"The student trained {student['epochs']} epochs; this is its best epoch "
                f"({student.get('best_epoch')}) by the validation score."
            )
        scores = ", ".join(
            f"{t} {s:.4f}" for t, s in teachers.items() if isinstance(s, int | float)
        )
        if scores:
            parts.append(f"Teachers' best validation scores: {scores}.")
        return " ".join(parts)

    def _export(self, model: AffectFPN, card: dict[str, Any]) -> None:
        tmp = self.export_dir.with_name(f".{self.export_dir.name}.{os.getpid()}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp, model_card=card)
        old = self.export_dir.with_name(f".{self.export_dir.name}.{os.getpid()}.old")
        if self.export_dir.exists():
            self.export_dir.rename(old)
        tmp.rename(self.export_dir)
        if old.exists():
            shutil.rmtree(old)

    # ------------------------------------------------------------------ all together
    def run(self, stages: Sequence[str] | None = None) -> dict[str, Any]:
        """Run ``stages`` (default: all four) in pipeline order; returns each stage's summary."""
        chosen = _check_stages(stages)
        self._init_distributed()
        if _is_main():
            _write_json(self.output_dir / "recipe.json", self.recipe.data)
        out: dict[str, Any] = {"output_dir": str(self.output_dir), "stages": list(chosen)}
        steps = {
            "teachers": self.train_teachers,
            "pseudo": self.pseudo_label,
            "student": self.train_student,
            "evaluate": self.evaluate,
        }
        for stage in chosen:
            logger.info("teacher-student %s: stage %r", self.recipe.name, stage)
            out[stage] = steps[stage]()
        return out

    def _init_distributed(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return
        from affectfpn._device import resolve_device
        from affectfpn.recipes.trainer import init_distributed

        settings = self._settings(self.student_recipe())
        # rank 0 labels and evaluates alone while the others wait: allow it hours, not minutes
        init_distributed(resolve_device(settings.device).type, timeout=_DIST_TIMEOUT)


def _check_stages(stages: Sequence[str] | None) -> tuple[str, ...]:
    if stages is None:
        return STAGES
    if isinstance(stages, str):
        stages = [stages]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"stages {list(stages)} must be names from {list(STAGES)}")
    return tuple(s for s in STAGES if s in stages)


def run_teacher_student(recipe: Recipe, *, stages: Sequence[str] | None = None) -> dict[str, Any]:
    """Run a ``kind = "teacher-student"`` recipe: all stages, or the ``stages`` named.

    Finished stages are reused (a finished teacher is not trained again, up-to-date pseudo
    labels are not recomputed, a finished student is not retrained), interrupted training
    resumes from its ``last.pt``. See the module documentation for the outputs.
    """
    return TeacherStudent(recipe).run(stages)


__all__ = [
    "STAGES",
    "PseudoLabelSettings",
    "TaskLabelled",
    "TeacherStudent",
    "check_no_leak",
    "check_teacher_student",
    "evaluate_model",
    "run_teacher_student",
]
