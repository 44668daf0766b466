"""How well a student's AU outputs agree with its teacher's pseudo labels.

A model trained on an external teacher's AU tables (:mod:`affectfpn.recipes.teachers`) is
measured against the teacher's answers on a split it never trained on:
:func:`student_agreement` runs the model over the split through the evaluation path
(:func:`affectfpn.evaluation.build_eval_dataset` reads the images,
:func:`affectfpn.evaluation.model_outputs` runs the model: the package's device choice, AMP
vocabulary and batching), joins its outputs to the teacher's table by key, and gives per unit
the ROC AUC and the agreement of the two decisions, each unit's active share per expression,
and the expression scores on the same faces. :func:`format_agreement` prints the result as
Markdown tables; :func:`agreement_to_json` writes it as strict JSON.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectfpn.data.pseudo import LabelTable
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.recipes.teachers.calibration import roc_auc

if TYPE_CHECKING:
    import torch

    from affectfpn.models.affectfpn import AffectFPN

__all__ = ["agreement_to_json", "format_agreement", "student_agreement"]


def student_agreement(
    model: AffectFPN,
    root: str | os.PathLike[str],
    table: LabelTable | str | os.PathLike[str],
    *,
    exclude: str | os.PathLike[str] | Iterable[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: str = "auto",
    num_workers: int = 0,
    threshold: float = 0.5,
    progress: bool = False,
) -> dict[str, Any]:
    """How well a student's AU outputs agree with the teacher's pseudo labels on an image folder.

    The images of ``root`` (class folders such as FER2013's ``test``, or anything else
    :func:`~affectfpn.evaluation.build_eval_dataset` reads) go through the model's own
    evaluation transform (the face crop resized to ``config.input_size``) and the model in
    eval mode (:func:`~affectfpn.evaluation.model_outputs`), so a ``config.test_time_flip``
    model averages each face with its mirror image as it does at inference. The student's AU
    probability is the sigmoid of its logit; a unit is **active** where it is
    ``>= threshold``, and so is the teacher's.

    Args:
        model: an :class:`~affectfpn.AffectFPN` with an ``"au"`` head.
        root: the image folder; its keys (``"happy/PrivateTest_123.jpg"``) are the table's.
        table: the teacher's :class:`LabelTable` (or its ``.csv`` / ``.json``), joined by key;
            a masked cell (the teacher found no face, or does not measure the unit) and a key
            that is not in the table are left out of that unit's agreement.
        exclude: relative paths (or a text file of them, e.g. FER2013's
            ``overlap_with_train.txt``) to leave out, relative to ``root`` or to its parent.
        batch_size: images per forward pass.
        device: where the model runs: ``"auto"`` / ``None`` (CUDA, then MPS, then the CPU),
            ``"cpu"``, ``"cuda:1"``, ...; the model goes back to its device and mode afterwards.
        amp: mixed precision, in the package's one vocabulary (``"auto"``: bfloat16 or float16
            on CUDA, none on the CPU; ``"on"``, ``"off"``, ``"bf16"``, ``"fp16"``).
        num_workers: DataLoader worker processes reading the images.
        threshold: the probability at which a unit counts as active, for both.
        progress: show a progress bar on stderr.

    Returns:
        A dict of plain numbers (NaN where undefined; :func:`agreement_to_json` writes null)::

            {"root", "num_faces", "excluded", "in_table", "threshold", "test_time_flip",
             "units": [AUs the model predicts],
             "expression_counts": {expression: faces},
             "au": {AU: {"n", "teacher_positive", "teacher_positive_rate",
                         "student_positive_rate", "auc", "agreement"}},   # teacher-labelled units
             "student_active": {AU: {expression: share of all its faces with p >= threshold}},
             "teacher_active": {AU: {expression: share of its teacher-labelled faces}},
             "expression": {"accuracy", "macro_f1", "score", "n"},   # S_EXPR = score
             "seconds"}

        ``expression`` is scored as ``affectfpn evaluate`` scores it, against the folder's
        labels, on the same faces; it is ``None`` for a model without an expression head or
        whose classes are not the seven EXPRESSIONS.

        ``au[...]["auc"]``: ROC AUC (:func:`~affectfpn.recipes.teachers.calibration.roc_auc`)
        of the student's probability against the teacher's decision, NaN when the teacher's
        decisions are all one way; ``agreement``: the share of those faces where both
        decisions match. Units the teacher never labels here have no ``au`` entry. Shares of a
        class without faces are NaN.

    Raises:
        ConfigError: a model without an AU head, or a bad argument (``device`` included).
        DatasetError: no image left, or a table that shares no key with the folder (check
            ``--key-prefix``).
    """
    from torch.utils.data import Subset

    from affectfpn.evaluation import build_eval_dataset, model_outputs

    config = model.config
    if "au" not in config.tasks:
        raise ConfigError(f"the model has no AU head (tasks {list(config.tasks)})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if not isinstance(threshold, int | float) or not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
    teacher = table if isinstance(table, LabelTable) else LabelTable.load(table)
    data = build_eval_dataset(root, config, exclude=exclude)
    if isinstance(data, Subset):
        excluded = len(data.dataset) - len(data)  # type: ignore[arg-type]
    else:
        excluded = int(getattr(data, "n_excluded", 0))

    units = list(config.action_units)
    model_cols = [j for j, u in enumerate(units) if u in ACTION_UNITS]
    units = [units[j] for j in model_cols]
    table_cols = [ACTION_UNITS.index(u) for u in units]
    expr_order: list[int] | None = None
    if "expression" in config.tasks and set(config.expressions) == set(EXPRESSIONS):
        expr_order = [config.expressions.index(n) for n in EXPRESSIONS]

    keys: list[str] = []
    logits: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    true_expression: list[np.ndarray] = []
    has_label: list[np.ndarray] = []
    start = time.perf_counter()
    for batch, out in model_outputs(
        model,
        data,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        progress=progress,
        amp=amp,
    ):
        assert out.au is not None
        logits.append(out.au.float()[:, model_cols].cpu().numpy())
        if expr_order is not None and out.expression is not None:
            expr_logits = out.expression.float()[:, expr_order]
            predicted.append(expr_logits.argmax(dim=1).cpu().numpy())
        n_batch = len(batch["key"])
        keys.extend(str(k) for k in batch["key"])
        if "expression" in batch and "expression_mask" in batch:
            true_expression.append(np.asarray(batch["expression"], np.int64).reshape(n_batch))
            has_label.append(np.asarray(batch["expression_mask"], bool).reshape(n_batch))
        else:
            true_expression.append(np.zeros(n_batch, np.int64))
            has_label.append(np.zeros(n_batch, bool))
    seconds = time.perf_counter() - start

    n = len(keys)
    if n == 0:
        raise DatasetError(f"no image of {os.fspath(root)!r} is left to measure (see exclude)")
    # the AUC ranks the logits: the same order as the probabilities, without float32's ties
    # at 0 and 1 (a sigmoid saturates beyond |logit| ~ 17)
    logit = np.concatenate(logits).astype(np.float64).reshape(n, len(units))
    student = 1 / (1 + np.exp(-np.clip(logit, -500, 500)))
    expression = np.concatenate(true_expression)
    has_expression = np.concatenate(has_label)
    t_rows = [teacher.position(k) for k in keys]
    in_table = np.array([r is not None for r in t_rows], bool)
    if not in_table.any():
        raise DatasetError(
            f"none of the {n} keys of {os.fspath(root)!r} (e.g. {keys[0]!r}) is in the label "
            f"table (e.g. {teacher.key_list[:1]!r}); were the keys written with a prefix?"
        )
    t_index = np.array([-1 if r is None else r for r in t_rows], np.int64)
    t_au = np.zeros((n, len(units)), np.float64)
    t_mask = np.zeros((n, len(units)), bool)
    found = t_index >= 0
    t_au[found] = teacher.labels.au[t_index[found]][:, table_cols]
    t_mask[found] = teacher.labels.au_mask[t_index[found]][:, table_cols]

    cut = float(threshold)
    s_on, t_on = student >= cut, t_au >= cut
    classes = {name: has_expression & (expression == c) for c, name in enumerate(EXPRESSIONS)}

    def share(on: np.ndarray, where: np.ndarray) -> float:
        return float(on[where].mean()) if where.any() else math.nan

    au: dict[str, dict[str, float]] = {}
    student_active: dict[str, dict[str, float]] = {}
    teacher_active: dict[str, dict[str, float]] = {}
    for j, unit in enumerate(units):
        m = t_mask[:, j]
        student_active[unit] = {e: share(s_on[:, j], rows_) for e, rows_ in classes.items()}
        if not m.any():
            continue
        teacher_active[unit] = {e: share(t_on[:, j], rows_ & m) for e, rows_ in classes.items()}
        au[unit] = {
            "n": int(m.sum()),
            "teacher_positive": int(t_on[m, j].sum()),
            "teacher_positive_rate": share(t_on[:, j], m),
            "student_positive_rate": share(s_on[:, j], m),
            "auc": roc_auc(logit[m, j], t_on[m, j]),
            "agreement": share(s_on[:, j] == t_on[:, j], m),
        }

    expression_result: dict[str, float] | None = None
    if predicted:
        from affectfpn.metrics import ExpressionMeter

        meter = ExpressionMeter()
        meter.update(np.concatenate(predicted), expression, has_expression)
        scores = meter.compute()
        expression_result = {
            name: float(value)
            for name in ("accuracy", "macro_f1", "score")
            if isinstance(value := scores[name], float | int)
        }
        expression_result["n"] = int(has_expression.sum())
    return {
        "root": os.fspath(root),
        "num_faces": n,
        "excluded": excluded,
        "in_table": int(in_table.sum()),
        "threshold": cut,
        "test_time_flip": bool(config.test_time_flip),
        "units": units,
        "expression_counts": {e: int(rows_.sum()) for e, rows_ in classes.items()},
        "au": au,
        "student_active": student_active,
        "teacher_active": teacher_active,
        "expression": expression_result,
        "seconds": seconds,
    }


def format_agreement(result: Mapping[str, Any]) -> str:
    """Markdown tables of :func:`student_agreement`'s result."""
    lines = [
        f"{result['num_faces']} faces ({result['excluded']} excluded), "
        f"{result['in_table']} in the teacher's table; active: p >= {result['threshold']}"
        + (", test-time flip" if result["test_time_flip"] else ""),
        "",
        "| AU | faces labelled | teacher positive | student positive | AUC | agreement |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for unit, r in result["au"].items():
        lines.append(
            f"| {unit} | {r['n']} | {r['teacher_positive_rate']:.3f} | "
            f"{r['student_positive_rate']:.3f} | {r['auc']:.3f} | {r['agreement']:.3f} |"
        )
    counts = result["expression_counts"]
    lines += [
        "",
        "Student AU active (p >= threshold) per expression, share of all faces "
        "(teacher's share of the faces it labelled in brackets):",
        "",
        "| AU | " + " | ".join(f"{e} ({counts[e]})" for e in EXPRESSIONS) + " |",
        "| --- |" + " --- |" * len(EXPRESSIONS),
    ]
    for unit, per_class in result["student_active"].items():
        teacher = result["teacher_active"].get(unit, {})
        cells = [
            f"{per_class[e]:.2f}" + (f" ({teacher[e]:.2f})" if e in teacher else "")
            for e in EXPRESSIONS
        ]
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    expr = result["expression"]
    if expr is not None:
        lines += [
            "",
            f"Expression accuracy {expr['accuracy']:.4f}, macro F1 {expr['macro_f1']:.4f}, "
            f"S_EXPR {expr['score']:.4f} ({expr['n']} faces)",
        ]
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)


def _json_ready(value: Any) -> Any:
    """``value`` with NaN floats as ``None`` (strict JSON)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def agreement_to_json(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`student_agreement`'s result to ``path`` as strict JSON (NaN as null), whole
    or not at all; returns the path."""
    from affectfpn.io import atomic_open

    text = json.dumps(_json_ready(result), indent=2, allow_nan=False) + "\n"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)
