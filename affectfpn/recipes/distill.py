"""Knowledge distillation: a teacher ensemble's soft expression labels for a student's recipe.

The student of a distillation learns each training face from a blend of its real label and the
teachers' probabilities. This module writes the teachers' half: a
:class:`~affectfpn.recipes.datasets.LabelTable` of soft expressions (the mean of the teachers'
softmax probabilities at ``temperature``; each teacher in eval mode, so with its test-time
flip), keyed like the training dataset. A recipe then names the table and the teachers' share:

.. code-block:: toml

    [data]
    train = [{ type = "imagefolder", root = ".../fer2013/train",
               pseudo_labels = "runs/distill/fer2013-train.csv", distill_weight = 0.7 }]

Command line::

    python -m affectfpn.recipes.distill --teacher fer2013-multitask-resnet18-fpn \\
        --teacher runs/other-run/best --data ../shared/data/fer2013/train \\
        --out runs/distill/fer2013-train.csv

The teachers see the training images without augmentation (one pass each), so a table is
written once and serves every epoch and every student.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from affectfpn.errors import ConfigError, DatasetError
from affectfpn.evaluation import build_eval_dataset, model_outputs
from affectfpn.models.affectfpn import AffectFPN
from affectfpn.recipes.datasets import LabelTable

__all__ = ["main", "soft_expression_table"]

logger = logging.getLogger(__name__)


def soft_expression_table(
    teachers: Sequence[AffectFPN | str | os.PathLike[str]],
    data: str | os.PathLike[str],
    *,
    temperature: float = 1.0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> LabelTable:
    """The mean soft expression labels of ``teachers`` on every image of ``data``.

    Args:
        teachers: models, or what :meth:`AffectFPN.from_pretrained` takes (a registered name, a
            folder, a Hub repo id). Each must predict expressions.
        data: what :func:`affectfpn.evaluation.build_eval_dataset` reads (a folder of expression
            class folders, an Aff-Wild2 root, a label CSV); its keys are the table's keys.
        temperature: softmax temperature of every teacher (above 1 softens the labels).
        batch_size, device, num_workers, progress: as for
            :func:`affectfpn.evaluation.evaluate`.

    Raises:
        ConfigError: no teacher, a teacher without an expression head, a bad temperature.
        DatasetError: teachers whose datasets list different keys.
    """
    if not teachers:
        raise ConfigError("distillation needs at least one teacher model")
    if not (isinstance(temperature, int | float) and 0 < temperature < float("inf")):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    keys: list[str] | None = None
    total: np.ndarray | None = None
    for teacher in teachers:
        model = (
            teacher
            if isinstance(teacher, AffectFPN)
            else AffectFPN.from_pretrained(os.fspath(teacher))
        )
        name = getattr(model, "name_or_path", None) or str(teacher)
        if "expression" not in model.config.tasks:
            raise ConfigError(f"teacher {name} has no expression head (tasks {model.config.tasks})")
        dataset = build_eval_dataset(data, model.config)
        these: list[str] = []
        probs: list[torch.Tensor] = []
        for batch, out in model_outputs(
            model,
            dataset,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
        ):
            these.extend(str(k) for k in batch["key"])
            assert out.expression is not None
            probs.append(torch.softmax(out.expression.float().cpu() / temperature, dim=1))
        if keys is None:
            keys = these
        elif these != keys:
            raise DatasetError(
                f"teacher {name} saw other keys in {os.fspath(data)} than the first teacher: "
                "give every teacher the same data (their input sizes may differ, the files not)"
            )
        p = torch.cat(probs).numpy().astype(np.float64)
        total = p if total is None else total + p
        logger.info("teacher %s: %d images", name, len(these))
    assert keys is not None
    assert total is not None
    mean = total / len(teachers)
    mean /= mean.sum(axis=1, keepdims=True)
    return LabelTable.from_teacher_outputs(
        keys, expression_logits=np.log(np.clip(mean, 1e-12, 1.0)), soft_expression=True
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m affectfpn.recipes.distill``: an alias of ``affectfpn distill`` (the command
    line lives in :mod:`affectfpn.cli`; this module does not import it)."""
    from affectfpn._alias import run_command

    return run_command("distill", argv)


if __name__ == "__main__":
    from affectfpn._alias import exec_command

    raise SystemExit(exec_command("distill"))
