"""Fine-tuning a pretrained model on your own labelled faces, with defaults that were measured.

The zoo's models are trained on FER2013 and news photos. Your camera, your population or a task
the zoo lacks (valence/arousal, your own action units) is reached by fine-tuning: a few hundred
labelled faces and a few minutes on a CPU. :func:`finetune` (``affectfpn finetune`` on the
command line, ``recipes/finetune-custom.toml`` as a recipe file) does it with three guarantees:

* **Never worse than the start.** The start is scored on your validation data as epoch 0, with
  the metric that picks the best epoch; ``best/`` keeps the start when no epoch beats it, and the
  run says so.
* **What your data does not teach is kept.** Heads for tasks your labels lack (the default's
  action units) stay, and are held to the start's outputs on your faces (``distill_start``);
  the expression outputs are held too, with a weight that trades what is gained on your faces
  against what is forgotten elsewhere (measured in docs/training.md).
* **New tasks are added, not swapped.** ``add_tasks=["va"]`` adds a valence/arousal head to the
  start's heads; a CSV with ``valence``/``arousal`` columns trains it. Action units your CSV
  labels that the start lacks (``AU4`` beside the default's AU1, AU2, AU12 and AU26) become new
  outputs of its AU head (``add_action_units="labelled"``); the start's units keep theirs.

Data: an image folder of expression class folders (``train/happy/0001.jpg``) or a label CSV
(``path`` plus any of ``expression``, ``valence``, ``arousal``, ``AU1`` .. ``AU26``) per split.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from affectfpn.errors import ConfigError
from affectfpn.recipes.stage import Recipe

#: The fine-tuning settings (``[train]`` of ``recipes/finetune-custom.toml``, which a test holds
#: equal), chosen on lfw-expressions ``val`` with FER2013 ``val`` as the forgetting check:
#: docs/training.md lists the runs.
FINETUNE_TRAIN: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "max_steps_per_epoch": 40,
    "optimizer": "sgd",
    "lr": 0.005,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "backbone_lr_scale": 0.1,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "grad_clip": 5.0,
    "distill_start": {"expression": 1.0, "au": 1.0},
    "distill_temperature": 2.0,
    "replay_synthetic": 128,
    "replay_weight": 1.0,
    "replay_iterations": 300,
    "replay_grey": True,
    "interpolate_start": 0.7,
    "score_start": True,
    "calibrate": True,
    "num_workers": "auto",
    "seed": 0,
    "select_metric": "score",
}

#: The augmentation of fine-tuning (``[augment]`` of the recipe file).
FINETUNE_AUGMENT: dict[str, Any] = {
    "scale": [0.8, 1.0],
    "ratio": [0.9, 1.1],
    "rotation": 10.0,
    "flip": True,
    "color_jitter": 0.2,
    "erasing": 0.25,
}


def data_spec(path: str | os.PathLike[str], *, what: str = "data") -> dict[str, Any]:
    """The dataset table for a folder of class folders or a label ``.csv``
    (:func:`affectfpn.data.spec_for_path`; a path that does not exist yet is read as a folder,
    which ``--check`` and the run report)."""
    from affectfpn.data import spec_for_path

    p = Path(path).expanduser()
    if not p.exists():
        return (
            {"type": "csv", "csv_path": str(p)}
            if p.suffix.lower() == ".csv"
            else {
                "type": "imagefolder",
                "root": str(p),
            }
        )
    spec = spec_for_path(p, what=what)
    if spec["type"] == "affwild2-multitask":
        raise ConfigError(
            f"{what} {str(p)!r} is an Aff-Wild2 root: train on it with "
            "recipes/abaw2-teacher-student.toml, or list its frames in a label CSV"
        )
    return spec


def finetune_recipe(
    train: str | os.PathLike[str],
    val: str | os.PathLike[str] | None,
    *,
    init: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] = "runs/finetune",
    add_tasks: Sequence[str] = (),
    add_action_units: str | Sequence[str] = "labelled",
    settings: Mapping[str, Any] | None = None,
    name: str = "finetune",
) -> Recipe:
    """The fine-tuning recipe for ``train`` (and ``val``) data, as :class:`Recipe`.

    Args:
        train: The training faces: a folder of class folders or a label CSV.
        val: The validation faces (same forms); ``None`` trains without validation (then the
            last epoch is kept and nothing guards against a worse model: not recommended).
        init: The start: a registered model name, a folder or a Hub repo id (default: the
            embedded default model).
        output_dir: Where the run writes (``best/``, ``last.pt``, ``metrics.csv``).
        add_tasks: Tasks to add to the start's (e.g. ``["va"]``), each with a new head.
        add_action_units: Action units to add to the start's AU head: ``"labelled"`` (every
            unit the training data labels that the start lacks), a list of names, or ``()``
            for none.
        settings: Changes to :data:`FINETUNE_TRAIN` (any :class:`TrainSettings` field).
        name: The run's name (model card).
    """
    from affectfpn.recipes.recipe import recipe_from_dict
    from affectfpn.registry import default_model_name

    model: dict[str, Any] = {"init": str(init) if init is not None else default_model_name()}
    if add_tasks:
        model["add_tasks"] = list(add_tasks)
    if isinstance(add_action_units, str):
        model["add_action_units"] = add_action_units
    elif add_action_units:
        model["add_action_units"] = list(add_action_units)
    data: dict[str, Any] = {"train": [data_spec(train, what="train")]}
    if val is not None:
        data["val"] = [data_spec(val, what="val")]
    train_table = copy.deepcopy(FINETUNE_TRAIN)
    train_table.update(dict(settings or {}))
    return recipe_from_dict(
        {
            "name": name,
            "kind": "train",
            "output_dir": str(output_dir),
            "model": model,
            "data": data,
            "augment": copy.deepcopy(FINETUNE_AUGMENT),
            "train": train_table,
            "card": {
                "description": f"Fine-tuned from {model['init']} on custom data with affectfpn.",
                "license": "other",
                "limitations": (
                    "Fine-tuned on a custom dataset; check its licence and how well it "
                    "represents the faces the model will see."
                ),
            },
        }
    )


def new_action_units(
    recipe: Recipe, *, labelled: Sequence[str] | None = None
) -> tuple[str, list[str]]:
    """What a fine-tuning recipe adds to its start's AU head: ``(start, units)``, the units
    its training data labels (or its ``add_action_units`` lists) that the start lacks. Reads
    the start's weights and, unless ``labelled`` gives the training data's units (as
    :func:`~affectfpn.recipes.stage.inspect_data` found them), lists that data."""
    from affectfpn.models.affectfpn import AffectFPN
    from affectfpn.recipes.stage import LABELLED_UNITS, inspect_data, parse_add_action_units

    table = recipe.table("model")
    start = str(table["init"])
    value = table.get("add_action_units")
    if value is None:
        return start, []
    wanted = parse_add_action_units(value, source=f"{recipe.source} [model]")
    if wanted == LABELLED_UNITS:
        if labelled is None:
            train = {"train": recipe.table("data").get("train")}
            labelled = inspect_data(train, source=recipe.source).units.get("train", [])
        wanted = list(labelled)
    config = AffectFPN.from_pretrained(start).config
    have = config.action_units if "au" in config.tasks else ()
    return start, [u for u in wanted if u not in have]


def finetune(
    train: str | os.PathLike[str],
    val: str | os.PathLike[str] | None,
    *,
    init: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] = "runs/finetune",
    add_tasks: Sequence[str] = (),
    add_action_units: str | Sequence[str] = "labelled",
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune ``init`` (default: the embedded default model) on your faces.

    Example::

        from affectfpn.recipes.finetune import finetune
        summary = finetune("my-faces/train", "my-faces/val", output_dir="runs/mine")
        model = AffectFPN.from_pretrained("runs/mine/best")

    Keyword arguments beyond those below change the training settings (see
    :data:`FINETUNE_TRAIN` and :class:`~affectfpn.recipes.trainer.TrainSettings`), e.g.
    ``epochs=20`` or ``distill_start={"expression": 1.0, "au": 1.0}``.

    Returns:
        The trainer's summary: ``best_epoch`` (0 when the start was kept), ``best_score``,
        ``history`` (epoch 0 is the start) and ``output_dir``.
    """
    from affectfpn.recipes.stage import check_data, train_from_recipe

    recipe = finetune_recipe(
        train,
        val,
        init=init,
        output_dir=output_dir,
        add_tasks=add_tasks,
        add_action_units=add_action_units,
        settings=settings,
    )
    check_data(recipe.table("data"), source=recipe.source)
    return train_from_recipe(recipe)
