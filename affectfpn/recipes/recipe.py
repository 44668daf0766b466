"""Recipe files: TOML descriptions of a training run, and the code that runs them.

A recipe (``kind = "train"``, the default) has the tables ``[model]`` (an
:class:`~affectfpn.AffectFPNConfig`, plus ``init`` = a pretrained model to start from and
``backbone_weights``), ``[data]`` (``train`` and ``val`` lists of dataset specs),
``[augment]`` (see :class:`affectfpn.recipes.augment.BatchAugment`), ``[train]``
(:class:`~affectfpn.recipes.trainer.TrainSettings`) and ``[card]`` (model-card metadata). A
``kind = "teacher-student"`` recipe describes the paper's whole pipeline; see
:mod:`affectfpn.recipes.teacher_student`.

String values may use ``${VAR}`` or ``${VAR:-default}``, expanded from the environment (a
``${VAR}`` whose variable is unset is an error; ``${VAR:-default}`` takes the default when the
variable is unset or empty); relative paths are taken from the directory the command runs in.
``overrides`` (``"train.epochs=3"``, the command line's ``--set``) change any value; they are
applied before the expansion. Every table is checked when the recipe is loaded: an unknown
setting is an error that names it.

Run a recipe from the command line with::

    python -m affectfpn.recipes.recipe recipes/fer2013.toml --set train.epochs=3
"""

import copy
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from affectfpn.errors import ConfigError
from affectfpn.recipes.stage import (
    Recipe,
    add_action_units,
    build_dataset,
    build_datasets,
    check_stage_tables,
    dataset_types,
    model_from_recipe,
    train_from_recipe,
)
from affectfpn.recipes.teacher_student import check_teacher_student, run_teacher_student

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")

#: Top-level keys of each kind of recipe.
RECIPE_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("name", "kind", "output_dir", "model", "data", "augment", "train", "card"),
    "teacher-student": (
        "name",
        "kind",
        "output_dir",
        "model",
        "augment",
        "train",
        "card",
        "teachers",
        "pseudo",
        "student",
    ),
}
#: Keys of ``[model]`` besides the fields of :class:`~affectfpn.AffectFPNConfig`.


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply ``key.sub=value`` overrides and expand ``${VAR}``.

    Raises:
        ConfigError: a missing file, invalid TOML, an unset variable, an unknown setting or a
            bad value (the message names the file and the setting).
    """
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
    """Build (and check) a :class:`Recipe` from an already parsed mapping."""
    data = copy.deepcopy(dict(raw))
    for item in overrides:
        _apply_override(data, item)
    where = str(path) if path else "recipe"
    data = _expand(data, where)
    name = str(data.get("name", path.stem if path else "recipe"))
    kind = str(data.get("kind", "train"))
    if kind not in RECIPE_KEYS:
        raise ConfigError(f"{where}: kind {kind!r} is not 'train' or 'teacher-student'")
    unknown = sorted(set(data) - set(RECIPE_KEYS[kind]))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {unknown} in a {kind!r} recipe; "
            f"known: {list(RECIPE_KEYS[kind])}"
        )
    output_dir = Path(str(data.get("output_dir", Path("runs") / name)))
    tables = {k: v for k, v in data.items() if k not in ("name", "kind", "output_dir")}
    recipe = Recipe(
        path=path, name=name, kind=kind, output_dir=output_dir, data=data, tables=tables
    )
    if kind == "train":
        check_stage_tables(recipe.tables, source=recipe.source)
    else:
        check_teacher_student(recipe)
    return recipe


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a table")
    node[parts[-1]] = value


def _expand(value: Any, where: str, at: str = "") -> Any:
    if isinstance(value, str):

        def substitute(m: re.Match[str]) -> str:
            name, has_default, default = m.group(1), m.group(2), m.group(3)
            found = os.environ.get(name)
            if has_default is not None:
                return found if found else default
            if found is None:
                raise ConfigError(
                    f"{where}: {at or 'a value'} uses ${{{name}}}, but the environment variable "
                    f"{name} is not set; set it, or write ${{{name}:-default}}"
                )
            return found

        return _VAR.sub(substitute, value)
    if isinstance(value, list):
        return [_expand(v, where, f"{at}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, where, f"{at}.{k}" if at else str(k)) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------ checks


def run_recipe(
    path_or_recipe: str | Path | Recipe,
    *,
    overrides: Sequence[str] = (),
    stages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run a recipe file from start to end (resuming finished or interrupted stages).

    Args:
        path_or_recipe: A recipe file or a loaded :class:`Recipe`.
        overrides: ``section.key=value`` changes (only with a path).
        stages: For a teacher-student recipe, the stages to run (default: all of them).
    """
    recipe = (
        path_or_recipe
        if isinstance(path_or_recipe, Recipe)
        else load_recipe(path_or_recipe, overrides)
    )
    if recipe.kind == "teacher-student":
        return run_teacher_student(recipe, stages=stages)
    if stages is not None:
        raise ConfigError(f"{recipe.source}: stages apply to teacher-student recipes only")
    return train_from_recipe(recipe)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m affectfpn.recipes.recipe RECIPE [options]``, an alias of
    ``affectfpn train RECIPE [options]`` (kept for existing scripts and ``torchrun -m``; the
    command line lives in :mod:`affectfpn.cli`, which this module does not import)."""
    from affectfpn._alias import run_command

    return run_command("train", argv)


__all__ = [
    "Recipe",
    "add_action_units",
    "build_dataset",
    "build_datasets",
    "check_stage_tables",
    "dataset_types",
    "load_recipe",
    "main",
    "model_from_recipe",
    "recipe_from_dict",
    "run_recipe",
    "train_from_recipe",
]

if __name__ == "__main__":
    from affectfpn._alias import exec_command

    raise SystemExit(exec_command("train"))
