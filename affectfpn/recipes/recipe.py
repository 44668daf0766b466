"""Recipe files: TOML descriptions of a training run, and the code that runs them.

A recipe has the tables ``[model]`` (an :class:`~affectfpn.AffectFPNConfig`, or ``init`` = a
pretrained model to start from), ``[data]`` (``train`` and ``val`` lists of dataset specs),
``[augment]`` (see :class:`affectfpn.recipes.augment.BatchAugment`), ``[train]``
(:class:`~affectfpn.recipes.trainer.TrainSettings`) and ``[card]`` (model-card metadata).

String values may use ``${VAR}`` or ``${VAR:-default}``, expanded from the environment; relative
paths are taken from the directory the command runs in. ``overrides`` (``"train.epochs=3"``)
change any value from the command line.
"""

import copy
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError

logger = logging.getLogger(__name__)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Recipe:
    """A parsed recipe file."""

    path: Path | None
    name: str
    kind: str
    output_dir: Path
    data: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> dict[str, Any]:
        value = self.tables.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.source}: [{name}] must be a table")
        return dict(value)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else f"recipe {self.name!r}"


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply ``key.sub=value`` overrides and expand ``${VAR}``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    return recipe_from_dict(raw, overrides=overrides, path=path)


def recipe_from_dict(
    raw: Mapping[str, Any], *, overrides: Sequence[str] = (), path: Path | None = None
) -> Recipe:
    """Build a :class:`Recipe` from an already parsed mapping."""
    data = copy.deepcopy(dict(raw))
    for item in overrides:
        _apply_override(data, item)
    data = _expand(data)
    name = str(data.get("name", path.stem if path else "recipe"))
    kind = str(data.get("kind", "train"))
    if kind not in ("train", "teacher-student"):
        raise ConfigError(f"{path or name}: kind {kind!r} is not 'train' or 'teacher-student'")
    output_dir = Path(str(data.get("output_dir", Path("runs") / name)))
    tables = {k: v for k, v in data.items() if k not in ("name", "kind", "output_dir")}
    return Recipe(path=path, name=name, kind=kind, output_dir=output_dir, data=data, tables=tables)


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a table")
    node[parts[-1]] = value


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------ data
def build_dataset(spec: Mapping[str, Any], *, transform: Any, source: str) -> Dataset[Any]:
    """Build one dataset from a recipe's spec: ``{type = "...", ...arguments}``.

    Types: ``imagefolder``, ``csv``, ``affwild2``, ``affwild2-multitask``, ``affectnet``,
    ``expw``. The remaining keys are the dataset class's keyword arguments.
    """
    from affectfpn.recipes import datasets as ds

    builders: dict[str, Any] = {
        "imagefolder": ds.ImageFolderExpressions,
        "csv": ds.LabelCSV,
        "affwild2": ds.AffWild2,
        "affwild2-multitask": ds.AffWild2MultiTask,
        "affectnet": ds.AffectNet,
        "expw": ds.ExpW,
    }
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in builders:
        raise ConfigError(f"{source}: dataset type {kind!r} is not one of {sorted(builders)}")
    try:
        dataset: Dataset[Any] = builders[kind](**spec, transform=transform)
    except TypeError as err:
        raise ConfigError(f"{source}: bad arguments for a {kind} dataset ({err})") from None
    return dataset


def build_datasets(specs: Any, *, transform: Any, source: str) -> Dataset[Any] | None:
    """Build and concatenate a list of dataset specs (``None`` for an empty list)."""
    if specs is None:
        return None
    if isinstance(specs, Mapping):
        specs = [specs]
    parts = [build_dataset(s, transform=transform, source=source) for s in specs]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    from affectfpn.recipes.datasets import MixedDataset

    # Prefix keys with the part's position and type so that parts can never collide.
    names = [f"{i}-{dict(s).get('type', 'data')}" for i, s in enumerate(specs)]
    return MixedDataset(parts, names=names)


# ------------------------------------------------------------------------------------ running
def model_from_recipe(recipe: Recipe, *, tasks: Sequence[str] | None = None) -> Any:
    """The model a recipe starts from: ``[model] init = ...`` or a fresh one from its config."""
    from affectfpn.models.affectfpn import AffectFPN

    table = recipe.table("model")
    init = table.pop("init", None)
    backbone_weights = table.pop("backbone_weights", None)
    if tasks is not None:
        table["tasks"] = list(tasks)
    if init is not None:
        model = AffectFPN.from_pretrained(init)
        if table:
            # Fine-tuning may change the tasks (new heads) or the input size.
            wanted = model.config.replace(**table)
            if wanted != model.config:
                fresh = AffectFPN(wanted)
                own = fresh.state_dict()
                shared = {
                    k: v
                    for k, v in model.state_dict().items()
                    if k in own and own[k].shape == v.shape
                }
                fresh.load_state_dict(shared, strict=False)
                logger.info(
                    "started from %s, re-initialised %d tensors", init, len(own) - len(shared)
                )
                model = fresh
        return model.train()
    config = AffectFPNConfig.from_dict(table, source=f"{recipe.source} [model]")
    return AffectFPN(config, backbone_weights=backbone_weights)


def train_from_recipe(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    train_set: Dataset[Any] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run a ``kind = "train"`` recipe (or one stage of a larger one). Returns the summary."""
    from affectfpn.preprocess import eval_transform
    from affectfpn.recipes.augment import BatchAugment
    from affectfpn.recipes.trainer import Trainer, TrainSettings

    settings = TrainSettings.from_dict(recipe.table("train"), source=f"{recipe.source} [train]")
    model = model_from_recipe(recipe, tasks=tasks)
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
    val_set = build_datasets(
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
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe.data, indent=2), encoding="utf-8")
    return trainer.fit(resume=resume)


def run_recipe(
    path_or_recipe: str | Path | Recipe,
    *,
    overrides: Sequence[str] = (),
    stages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run a recipe file from start to end (resuming finished or interrupted stages)."""
    recipe = (
        path_or_recipe
        if isinstance(path_or_recipe, Recipe)
        else load_recipe(path_or_recipe, overrides)
    )
    if recipe.kind == "teacher-student":
        from affectfpn.recipes.teacher_student import run_teacher_student

        return run_teacher_student(recipe, stages=stages)
    return train_from_recipe(recipe)


__all__ = [
    "Recipe",
    "build_dataset",
    "build_datasets",
    "load_recipe",
    "model_from_recipe",
    "recipe_from_dict",
    "run_recipe",
    "train_from_recipe",
]
