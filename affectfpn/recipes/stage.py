"""One training run (a stage) described by a recipe's tables: checking them, building the
datasets and the model, and training.

A ``kind = "train"`` recipe is one such stage; a ``kind = "teacher-student"`` recipe
(:mod:`affectfpn.recipes.teacher_student`) runs several. :mod:`affectfpn.recipes.recipe` loads
recipe files and re-exports these names.
"""

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError

logger = logging.getLogger("affectfpn.recipes.recipe")

MODEL_EXTRA_KEYS: tuple[str, ...] = ("init", "backbone_weights", "add_tasks", "add_action_units")
#: ``[model] add_action_units = "labelled"``: every action unit the training data labels that
#: the start lacks becomes a new output of its AU head (the fine-tuning default).
LABELLED_UNITS = "labelled"
#: Keys of ``[card]`` (see :meth:`affectfpn.AffectFPN.save_pretrained`).
CARD_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "license",
    "datasets",
    "recipe",
    "training",
    "limitations",
    "metrics",
    "repo_id",
)
#: Keys of ``[data]``.
DATA_KEYS: tuple[str, ...] = ("train", "val")


@dataclass
class Recipe:
    """A parsed recipe file.

    Attributes:
        path: The file it was read from (``None`` when built from a dict).
        name: The run's name (default: the file's stem).
        kind: ``"train"`` or ``"teacher-student"``.
        output_dir: Where the run writes (default: ``runs/<name>``).
        data: The whole recipe after overrides and ``${VAR}`` expansion.
        tables: ``data`` without ``name``, ``kind`` and ``output_dir``.
    """

    path: Path | None
    name: str
    kind: str
    output_dir: Path
    data: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> dict[str, Any]:
        """A copy of one top-level table (empty when the recipe lacks it)."""
        value = self.tables.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.source}: [{name}] must be a table")
        return copy.deepcopy(dict(value))

    @property
    def source(self) -> str:
        """How error messages name this recipe."""
        return str(self.path) if self.path else f"recipe {self.name!r}"

    @property
    def train_settings(self) -> Any:
        """The ``[train]`` table parsed once into
        :class:`~affectfpn.recipes.trainer.TrainSettings` (cached; errors name the table)."""
        cached = self.__dict__.get("_train_settings")
        if cached is None:
            from affectfpn.recipes.trainer import TrainSettings

            cached = TrainSettings.from_dict(self.table("train"), source=f"{self.source} [train]")
            self.__dict__["_train_settings"] = cached
        return cached


def check_stage_tables(tables: Mapping[str, Any], *, source: str) -> None:
    """Check the ``model``, ``data``, ``augment``, ``train`` and ``card`` tables of one stage.

    Every key must be known and every value valid (datasets are not opened here).

    Raises:
        ConfigError: naming the table and the setting at fault.
    """
    from affectfpn.recipes.augment import BatchAugment
    from affectfpn.recipes.trainer import TrainSettings

    for name in ("model", "data", "augment", "train", "card"):
        value = tables.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table")
    model = dict(tables.get("model", {}))
    fields = [f.name for f in dataclasses.fields(AffectFPNConfig) if not f.name.startswith("_")]
    _reject_unknown(model, [*fields, *MODEL_EXTRA_KEYS], f"{source} [model]")
    config_keys = {k: v for k, v in model.items() if k not in MODEL_EXTRA_KEYS}
    if "add_action_units" in model:
        parse_add_action_units(model["add_action_units"], source=f"{source} [model]")
        if "init" not in model:
            raise ConfigError(
                f"{source} [model] add_action_units adds outputs to a pretrained model's AU "
                "head and needs [model] init; a fresh model learns [model] action_units"
            )
    if "init" not in model:
        AffectFPNConfig.from_dict(config_keys, source=f"{source} [model]")
    elif config_keys:
        # The pretrained configuration is not read here; check each value as the run will
        # (on the default configuration, so that a value's type and range are the same).
        AffectFPNConfig.from_dict(
            {**AffectFPNConfig().to_dict(), **config_keys}, source=f"{source} [model]"
        )
    TrainSettings.from_dict(tables.get("train", {}), source=f"{source} [train]")
    augment = dict(tables.get("augment", {}))
    _reject_unknown(
        augment, [f.name for f in dataclasses.fields(BatchAugment)], f"{source} [augment]"
    )
    try:
        BatchAugment(**augment)
    except TypeError as err:
        raise ConfigError(f"{source} [augment]: {err}") from None
    _reject_unknown(dict(tables.get("card", {})), CARD_KEYS, f"{source} [card]")
    data = dict(tables.get("data", {}))
    _reject_unknown(data, DATA_KEYS, f"{source} [data]")
    for split in DATA_KEYS:
        for spec in _spec_list(data.get(split), f"{source} [data.{split}]"):
            _check_spec(spec, f"{source} [data.{split}]")


def _reject_unknown(table: Mapping[str, Any], known: Sequence[str], source: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")


def _spec_list(specs: Any, source: str) -> list[Mapping[str, Any]]:
    if specs is None:
        return []
    if isinstance(specs, Mapping):
        return [specs]
    if isinstance(specs, list) and all(isinstance(s, Mapping) for s in specs):
        return list(specs)
    raise ConfigError(
        f'{source}: a dataset must be a table such as {{ type = "imagefolder", root = "..." }}'
        ", or a list of them"
    )


def _check_spec(spec: Mapping[str, Any], source: str) -> None:
    kind = spec.get("type")
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or ":" in name):
        raise ConfigError(
            f"{source}: a dataset's name must be a non-empty word without ':', got {name!r}"
        )
    weight = spec.get("weight")
    if weight is not None and (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not (math.isfinite(weight) and weight >= 0)
    ):
        raise ConfigError(f"{source}: a dataset's weight must be a number >= 0, got {weight!r}")
    if kind not in dataset_types():
        raise ConfigError(
            f"{source}: dataset type {kind!r} is not one of {sorted(dataset_types())}"
        )
    if "transform" in spec:
        raise ConfigError(f"{source}: 'transform' is set by the recipe, not in a dataset table")


# ------------------------------------------------------------------------------------ data
def dataset_types() -> dict[str, Any]:
    """The dataset ``type`` names a recipe may use, and their classes (the one registry,
    :func:`affectfpn.data.dataset_types`)."""
    from affectfpn.data import dataset_types as registry

    return registry()


def build_dataset(spec: Mapping[str, Any], *, transform: Any, source: str) -> Dataset[Any]:
    """Build one dataset from a recipe's spec: ``{type = "...", ...arguments}``.

    Types: ``imagefolder``, ``csv``, ``affwild2``, ``affwild2-multitask``, ``affectnet``,
    ``expw``. ``pseudo_labels = "table.csv"`` (a :class:`~affectfpn.recipes.datasets.LabelTable`
    file, e.g. an external teacher's; or a list of them, joined by key, a later one winning)
    fills the labels a sample lacks from that table, matched by key (a real label wins). With
    ``distill_weight = w`` as well, a sample with a real expression label learns from
    ``(1 - w) * real + w * table`` (knowledge distillation from the table's soft expressions,
    e.g. an ensemble's). The remaining keys are the dataset class's keyword arguments.
    """
    builders = dataset_types()
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{source}: a dataset must be a table with a 'type'")
    _check_spec(spec, source)
    spec = dict(spec)
    # name and weight belong to the list the spec is in (see build_datasets / build_val_sets)
    spec.pop("name", None)
    spec.pop("weight", None)
    kind = spec.pop("type", None)
    pseudo = spec.pop("pseudo_labels", None)
    distill_weight = spec.pop("distill_weight", None)
    if distill_weight is not None and pseudo is None:
        raise ConfigError(
            f"{source}: distill_weight needs pseudo_labels = 'table.csv' (the teacher's soft "
            "expression labels) in the same dataset"
        )
    if kind not in builders:
        raise ConfigError(f"{source}: dataset type {kind!r} is not one of {sorted(builders)}")
    try:
        dataset: Dataset[Any] = builders[kind](**spec, transform=transform)
    except TypeError as err:
        raise ConfigError(f"{source}: bad arguments for a {kind} dataset ({err})") from None
    if pseudo is not None:
        # Labels from a teacher (a pseudo-label table written by the teacher-student pipeline
        # or by affectfpn.recipes.teachers), matched by key; real labels win.
        from affectfpn.recipes.datasets import LabelTable, WithPseudoLabels

        # One table, or several joined by key (e.g. a distillation table of soft expression
        # labels and an AU teacher's table); for the same key and task a later one wins.
        names = [pseudo] if isinstance(pseudo, (str, Path)) else pseudo
        if not isinstance(names, list) or not names:
            raise ConfigError(
                f"{source}: pseudo_labels must be a table path or a list of them, got {pseudo!r}"
            )
        paths = [Path(str(name)).expanduser() for name in names]
        for path in paths:
            if not path.is_file():
                raise ConfigError(
                    f"{source}: pseudo_labels {str(path)!r} is no file: write the table first "
                    "(see docs/action-units.md) or fix the path"
                )
        try:
            tables = [LabelTable.load(path) for path in paths]
            table = tables[0] if len(tables) == 1 else LabelTable.merge(tables)
            dataset = WithPseudoLabels(dataset, table, distill_weight=distill_weight)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return dataset


def build_datasets(specs: Any, *, transform: Any, source: str) -> Dataset[Any] | None:
    """Build and concatenate a list of dataset specs (``None`` for an empty list).

    Several specs become a :class:`~affectfpn.recipes.datasets.MixedDataset` whose keys are
    prefixed with ``"<position>-<type>:"``, so that parts can never collide.
    """
    specs = _spec_list(specs, source)
    parts = [build_dataset(s, transform=transform, source=source) for s in specs]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    from affectfpn.recipes.datasets import MixedDataset

    names = [f"{i}-{dict(s).get('type', 'data')}" for i, s in enumerate(specs)]
    weights = None
    if any("weight" in s for s in specs):
        weights = [float(s.get("weight", 1.0)) for s in specs]
    return MixedDataset(parts, names=names, weights=weights)


def build_val_sets(
    specs: Any, *, transform: Any, source: str
) -> Dataset[Any] | dict[str, Dataset[Any]] | None:
    """The validation data of a recipe: one dataset, or several scored apart.

    When the specs carry ``name = "..."`` (all of them, distinct), each is its own validation
    set: the trainer scores each and chooses the best epoch by the mean of their scores, so a
    small set counts as much as a large one. Without names, the specs are joined as by
    :func:`build_datasets` and scored as one.
    """
    spec_list = _spec_list(specs, source)
    named = [s.get("name") for s in spec_list]
    if not any(n is not None for n in named):
        return build_datasets(specs, transform=transform, source=source)
    if any(n is None for n in named) or len(set(named)) != len(named):
        raise ConfigError(
            f'{source}: validation sets scored apart need a distinct name each (name = "..."); '
            f"got names {named}"
        )
    return {
        str(s["name"]): build_dataset(s, transform=transform, source=f"{source} {s['name']}")
        for s in spec_list
    }


@dataclass(frozen=True)
class DataCheck:
    """What :func:`inspect_data` found.

    Attributes:
        lines: One line per dataset: its split, type, sample count and label counts.
        units: Per split, the action units its datasets hold labels for (ACTION_UNITS order).
    """

    lines: list[str]
    units: dict[str, list[str]]


def check_data(data: Mapping[str, Any], *, source: str) -> list[str]:
    """Open every dataset of a ``[data]`` table (listing files, decoding nothing) and count its
    labels: what ``affectfpn train --check`` reports before a run starts.

    Returns:
        One line per dataset: its split, type, sample count and label counts
        (:attr:`DataCheck.lines` of :func:`inspect_data`).

    Raises:
        ConfigError: every dataset that is missing, empty or holds no label, each named with
            its path and the fix, in one message.
    """
    return inspect_data(data, source=source).lines


def inspect_data(data: Mapping[str, Any], *, source: str) -> DataCheck:
    """:func:`check_data`, also giving the action units each split labels."""
    from affectfpn.data.common import labelled_units
    from affectfpn.errors import AffectFPNError
    from affectfpn.labels import ACTION_UNITS

    lines: list[str] = []
    labelled_by_split: dict[str, set[str]] = {}
    problems: list[str] = []
    for split in DATA_KEYS:
        specs = _spec_list(data.get(split), f"{source} [data.{split}]")
        if split == "train" and not specs:
            problems.append(f"{source} [data.train] lists no dataset")
        for i, spec in enumerate(specs):
            where = f"{source} [data.{split}] #{i + 1} ({spec.get('type')})"
            quick = dict(spec)
            if "cache" in quick:
                quick["cache"] = False  # a check lists files; it does not decode them
            try:
                dataset = build_dataset(quick, transform=None, source=where)
            except (AffectFPNError, OSError) as err:
                problems.append(str(err) if str(err).startswith(source) else f"{where}: {err}")
                continue
            counts_fn = getattr(dataset, "counts", None)
            counts = counts_fn() if callable(counts_fn) else {}
            n = len(dataset)  # type: ignore[arg-type]
            labelled = {t: int(counts.get(t, 0)) for t in ("expression", "va", "au")}
            if n == 0 or not any(labelled.values()):
                problems.append(
                    f"{where}: {n} samples and no label (expected expression class folders, "
                    "or CSV columns 'expression', 'valence'/'arousal', 'AU1'..'AU26')"
                )
                continue
            name = f" {spec['name']}" if spec.get("name") else ""
            units = labelled_units(counts)
            labelled_by_split.setdefault(split, set()).update(units)
            shown = ", ".join(
                f"{t} {c}" + (f" ({', '.join(units)})" if t == "au" and units else "")
                for t, c in labelled.items()
                if c
            )
            lines.append(f"{split}{name}: {spec.get('type')} with {n} samples; labels: {shown}")
    if problems:
        raise ConfigError("the recipe's data is not ready: " + "; ".join(problems))
    by_split = {
        split: [u for u in ACTION_UNITS if u in found] for split, found in labelled_by_split.items()
    }
    return DataCheck(lines, by_split)


# ------------------------------------------------------------------------------------ running
def parse_add_action_units(value: Any, *, source: str) -> str | list[str]:
    """Check ``[model] add_action_units``: ``"labelled"`` or a list of unit names.

    Raises:
        ConfigError: another value, or a unit outside the ones affectfpn learns.
    """
    from affectfpn.labels import ACTION_UNITS

    if value == LABELLED_UNITS:
        return LABELLED_UNITS
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise ConfigError(
            f'{source} add_action_units must be "{LABELLED_UNITS}" (every unit the training '
            f'data labels) or a list of unit names such as ["AU4", "AU6"]; got {value!r}'
        )
    unknown = [u for u in value if u not in ACTION_UNITS]
    if unknown:
        raise ConfigError(
            f"{source} add_action_units: {unknown} are not action units affectfpn learns; "
            f"choose from {list(ACTION_UNITS)}"
        )
    return list(dict.fromkeys(value))


def _carry_weights(start: Any, fresh: Any) -> list[str]:
    """Load ``start``'s tensors into ``fresh`` where name and shape match, and the rows of its
    AU head by unit name (so that a head with more, fewer or reordered units keeps what the
    start knew of each unit it shares). Returns what was initialised afresh."""
    own = fresh.state_dict()
    theirs = start.state_dict()
    shared = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    new_rows: list[str] = []
    if "heads.au.weight" in own:
        old_units = list(start.config.action_units) if "heads.au.weight" in theirs else []
        weight, bias = own["heads.au.weight"].clone(), own["heads.au.bias"].clone()
        for i, unit in enumerate(fresh.config.action_units):
            if unit in old_units:
                j = old_units.index(unit)
                weight[i], bias[i] = theirs["heads.au.weight"][j], theirs["heads.au.bias"][j]
            else:
                new_rows.append(unit)
        shared["heads.au.weight"], shared["heads.au.bias"] = weight, bias
    fresh.load_state_dict(shared, strict=False)
    fresh_keys = sorted(set(own) - set(shared))
    if new_rows and len(new_rows) < len(fresh.config.action_units):
        fresh_keys.append(f"heads.au rows {', '.join(new_rows)}")
    elif new_rows:
        fresh_keys.append("heads.au")
    return fresh_keys


def data_units(dataset: Any) -> list[str]:
    """The action units ``dataset`` holds labels for (ACTION_UNITS order); none for a dataset
    that does not count its labels."""
    from affectfpn.data.common import labelled_units

    counts = getattr(dataset, "counts", None)
    return labelled_units(counts()) if callable(counts) else []


def add_action_units(model: Any, units: Sequence[str], *, start: str = "the start") -> Any:
    """``model`` with ``units`` added to its AU head (an AU head added when it has none).

    The start's units keep their outputs, in their order, with their weights; the new ones
    follow, in the order given, initialised afresh. Units it already has are left as they are.
    Returns ``model`` itself when nothing is added.
    """
    from affectfpn.models.affectfpn import AffectFPN

    config = model.config
    have = list(config.action_units) if "au" in config.tasks else []
    new = [u for u in units if u not in have]
    if not new:
        return model
    tasks = config.tasks if "au" in config.tasks else (*config.tasks, "au")
    wanted = config.replace(tasks=tasks, action_units=(*have, *new))
    fresh = AffectFPN(wanted)
    _carry_weights(model, fresh)
    logger.info(
        "%s's AU head gains %s (new outputs, learnt from the training labels)%s",
        start,
        ", ".join(new),
        f"; it keeps {', '.join(have)}" if have else "",
    )
    return fresh.train(model.training)


def model_from_recipe(recipe: Recipe, *, tasks: Sequence[str] | None = None) -> Any:
    """The model a recipe starts from: ``[model] init = ...`` or a fresh one from its config.

    With ``init`` (a registered model name, a folder or a Hub repo id), the other ``[model]``
    values change the pretrained configuration (for instance ``tasks``); every tensor whose name
    and shape still match is kept, the others (new heads) are initialised afresh, and heads of
    tasks that were dropped are left out; the AU head keeps the start's weights of every unit
    it shares, by name. ``add_tasks = ["va"]`` keeps the pretrained model's tasks and adds these
    (a fine-tuning set that labels only valence/arousal keeps the start's expression and
    action-unit heads); ``add_action_units = ["AU4"]`` adds outputs to its AU head
    (:func:`add_action_units`; ``"labelled"``, the units the training data labels, is resolved
    by :func:`train_from_recipe`, which reads that data). ``backbone_weights`` (``"imagenet"``
    or a file; ``""`` or ``"none"`` for none) initialises the backbone of a fresh model and is
    ignored with ``init``.
    """
    from affectfpn.models.affectfpn import AffectFPN
    from affectfpn.recipes.trainer import seed_everything

    # Seed first: the fresh weights (a new model, or the new heads of a fine-tuned one) are the
    # first random numbers a run draws, so that two runs of one recipe are the same run.
    seed_everything(int(recipe.train_settings.seed))
    table = recipe.table("model")
    init = table.pop("init", None)
    backbone_weights = table.pop("backbone_weights", None)
    add_tasks = table.pop("add_tasks", None)
    add_units = table.pop("add_action_units", None)
    if add_units is not None:
        add_units = parse_add_action_units(add_units, source=f"{recipe.source} [model]")
    if isinstance(backbone_weights, str) and backbone_weights.lower() in ("", "none"):
        backbone_weights = None
    if tasks is not None:
        table["tasks"] = list(tasks)
    if add_tasks is not None:
        if not isinstance(add_tasks, list) or not all(isinstance(t, str) for t in add_tasks):
            raise ConfigError(
                f"{recipe.source} [model] add_tasks must list task names, e.g. ['va']; got "
                f"{add_tasks!r}"
            )
        if "tasks" in table:
            raise ConfigError(
                f"{recipe.source} [model]: set tasks (the exact list) or add_tasks (added to "
                "the starting model's), not both"
            )
    fields = {f.name for f in dataclasses.fields(AffectFPNConfig) if not f.name.startswith("_")}
    _reject_unknown(table, sorted(fields), f"{recipe.source} [model]")
    if init is not None:
        if backbone_weights is not None:
            logger.info("[model] init is set: backbone_weights %r is not used", backbone_weights)
        model = AffectFPN.from_pretrained(str(init))
        if model.drop_calibrator():  # fitted to the start's features, stale once trained
            logger.info(
                "[model] init %s has a per-face expression temperature (calibrator): dropped; "
                "calibrate the trained model again (affectfpn calibrate --adaptive)",
                init,
            )
        if add_tasks is not None:
            have = list(model.config.tasks)
            table["tasks"] = [*have, *(t for t in add_tasks if t not in have)]
        if table:
            # Fine-tuning may change the tasks (new heads) or other settings.
            try:
                wanted = model.config.replace(**table)
            except TypeError as err:
                raise ConfigError(f"{recipe.source} [model]: {err}") from None
            except ConfigError as err:
                raise ConfigError(f"{recipe.source} [model]: {err}") from None
            if wanted != model.config:
                fresh = AffectFPN(wanted)
                new = _carry_weights(model, fresh)
                if any(not k.startswith("heads.") for k in new):
                    logger.warning(
                        "started from %s: %d tensors outside the heads do not match the new "
                        "[model] settings and were initialised afresh: %s",
                        init,
                        sum(not k.startswith("heads.") for k in new),
                        ", ".join(k for k in new if not k.startswith("heads."))[:300],
                    )
                logger.info(
                    "started from %s; initialised afresh: %s", init, ", ".join(new) or "nothing"
                )
                model = fresh
        if isinstance(add_units, list):
            model = add_action_units(model, add_units, start=str(init))
        return model.train()
    if add_units is not None:
        raise ConfigError(
            f"{recipe.source} [model] add_action_units needs [model] init (a pretrained start)"
        )
    config = AffectFPNConfig.from_dict(table, source=f"{recipe.source} [model]")
    return AffectFPN(config, backbone_weights=backbone_weights)


def train_from_recipe(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    train_set: Dataset[Any] | None = None,
    val_set: Dataset[Any] | Mapping[str, Dataset[Any]] | None = None,
    model: Any | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run a ``kind = "train"`` recipe (or one stage of a larger one). Returns the summary.

    Args:
        recipe: The recipe.
        output_dir: Where to write (default: the recipe's ``output_dir``).
        tasks: Train a model with these tasks instead of ``[model] tasks``.
        train_set: Use this training set instead of ``[data] train``.
        val_set: Use this validation set instead of ``[data] val``.
        model: Train this model instead of the one ``[model]`` describes.
        resume: Continue from the output folder's ``last.pt`` if there is one.

    Returns:
        :meth:`~affectfpn.recipes.trainer.Trainer.fit`'s summary.
    """
    from affectfpn.models.affectfpn import AffectFPN
    from affectfpn.preprocess import eval_transform
    from affectfpn.recipes.augment import BatchAugment
    from affectfpn.recipes.trainer import Trainer

    settings = recipe.train_settings
    teacher = None
    init = recipe.table("model").get("init")
    if settings.score_start is None:
        settings = dataclasses.replace(settings, score_start=init is not None)
    built = model is None
    if model is None:
        model = model_from_recipe(recipe, tasks=tasks)
        if settings.distill_start and init is not None:
            # Held to the start as it was loaded (its own heads, not the new model's fresh ones).
            teacher = AffectFPN.from_pretrained(str(init))
    data = recipe.table("data")
    try:
        augment = BatchAugment(**recipe.table("augment"))
    except TypeError as err:
        raise ConfigError(f"{recipe.source} [augment]: {err}") from None
    if train_set is None:
        train_set = build_datasets(
            data.get("train"),
            transform=eval_transform(model.config),
            source=f"{recipe.source} [data.train]",
        )
    if train_set is None:
        raise ConfigError(f"{recipe.source}: [data] train lists no dataset")
    added: list[str] = []
    if built and init is not None and recipe.table("model").get("add_action_units") is not None:
        if recipe.table("model")["add_action_units"] == LABELLED_UNITS:
            model = add_action_units(model, data_units(train_set), start=str(init))
        # the start's own units (read again only where no teacher was loaded: distill_start off)
        start = (teacher or AffectFPN.from_pretrained(str(init))).config
        had = start.action_units if "au" in start.tasks else ()
        if "au" in model.config.tasks:
            added = [u for u in model.config.action_units if u not in had]
    if val_set is None:
        val_set = build_val_sets(
            data.get("val"),
            transform=eval_transform(model.config),
            source=f"{recipe.source} [data.val]",
        )
    out = Path(output_dir) if output_dir is not None else recipe.output_dir
    card = recipe.table("card")
    card.setdefault("name", recipe.name)
    if recipe.path is not None:
        card.setdefault("recipe", str(recipe.path))
    logger.info("training %s on %d samples -> %s", recipe.name, len(train_set), out)  # type: ignore[arg-type]
    trainer = Trainer(
        model,
        train_set,
        val_set=val_set,
        settings=settings,
        output_dir=out,
        model_card=card,
        augment=augment,
        teacher=teacher,
    )
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(recipe.data, indent=2), encoding="utf-8")
    summary = trainer.fit(resume=resume)
    if added and summary.get("best_epoch") == 0:
        logger.warning(
            "the new action units %s were not learnt: no epoch beat the start on the "
            "validation data, so best/ holds the start, whose outputs for them are untrained "
            "(more labelled faces or epochs may help)",
            ", ".join(added),
        )
    return summary
