"""Turn a trained model folder into a published model: measured, carded, registered.

:func:`publish` is what ``affectfpn publish RUN/best --name NAME --eval LABEL=PATH[::EXCLUDE] ...``
runs (``python -m affectfpn.recipes.publish`` is the same command, kept for existing scripts):

1. evaluates the model on each named dataset (the figures go into the card and the registry);
2. optionally stores the weights in half precision, after checking on the first dataset that the
   accuracy (or ABAW2 score) moves by less than ``max_half_drop``;
3. measures inference images/s on this machine (model only, batch 64);
4. writes ``config.json``, ``model.safetensors``, ``README.md`` (the card) and
   ``model_info.json`` (the registry entry, with the weights' sha256) into ``out/name``:
   ``affectfpn/weights`` of a source checkout for a model embedded in the package, any folder
   for one that goes to the Hub with ``push_to_hub``.
"""

import hashlib
import json
import logging
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from affectfpn.errors import ConfigError
from affectfpn.models.affectfpn import AffectFPN, gflops_per_face
from affectfpn.models.hub import WEIGHTS_NAME
from affectfpn.models.registry import INFO_NAME

logger = logging.getLogger(__name__)


#: The headline figures of each task: (key in the evaluation report, name in the registry).
HEADLINE = {
    "expression": (
        ("accuracy", "accuracy"),
        ("macro_f1", "macro_f1"),
        ("score", "s_expr"),
        ("ece", "ece"),
    ),
    "va": (("ccc_valence", "ccc_valence"), ("ccc_arousal", "ccc_arousal"), ("score", "s_va")),
    "au": (("mean_f1", "au_mean_f1"), ("accuracy", "au_accuracy"), ("score", "s_au")),
}


def headline(report_metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The scalar headline figures of an evaluation (see :data:`HEADLINE`), rounded to 1e-5."""
    out: dict[str, float] = {}
    for task, values in report_metrics.items():
        for key, name in HEADLINE.get(task, ()):
            if isinstance(values.get(key), int | float):
                out[name] = round(float(values[key]), 5)
    return out


def measure_throughput(
    model: AffectFPN, *, batch_size: int = 64, seconds: float = 10.0
) -> dict[str, Any]:
    """Model-only inference images/s on this machine (CPU, channels_last, inference mode)."""
    model = model.eval()
    h, w = model.config.input_size
    x = torch.randn(batch_size, 3, h, w).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            done += batch_size
        elapsed = time.perf_counter() - start
    return {
        "images_per_second": round(done / elapsed, 1),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
    }


def publish(
    source: str | Path,
    *,
    name: str,
    out: str | Path,
    evals: Sequence[tuple[str, str, str | None]],
    half: bool = True,
    max_half_drop: float = 0.001,
    default: bool = False,
    card: dict[str, Any] | None = None,
    batch_size: int = 64,
    throughput_seconds: float = 10.0,
    au_teachers: Sequence[tuple[str, str, str, str | None]] = (),
) -> dict[str, Any]:
    """Evaluate, card and register the model in ``source``; returns the ``model_info`` dict.

    Args:
        source: A folder with ``config.json`` and ``model.safetensors`` (a recipe's ``best/``).
        name: Registry name of the published model.
        out: Parent folder; the model is written to ``out/name``.
        evals: ``(label, dataset path, exclude file or None)`` for each evaluation.
        half: Store the weights in float16 (checked against ``max_half_drop``).
        max_half_drop: Largest drop of the first evaluation's headline figure that half
            precision may cause (0.001 = 0.1 percentage point).
        default: Mark the model as the default of ``AffectFPN.from_pretrained()``.
        card: Model-card metadata: ``description``, ``license``, ``datasets``, ``recipe``,
            ``training``, ``limitations``.
        au_teachers: ``(label, image folder, teacher table, exclude file or None)``: the AU
            outputs scored against an external teacher's pseudo-label table
            (:func:`~affectfpn.recipes.agreement.student_agreement`): per unit the ROC
            AUC and the agreement go into the registry entry; the whole report (with each
            unit's active share per expression) into ``evaluation.json``.
    """
    from affectfpn.evaluation import evaluate

    if not evals:
        raise ConfigError(
            "is empty: publish needs at least one evaluation, a model is shipped with figures",
            option="evals",
        )
    card = dict(card or {})
    model = AffectFPN.from_pretrained(source)
    metrics: dict[str, dict[str, float]] = {}
    samples: dict[str, int] = {}
    reports: dict[str, Any] = {}
    for label, path, exclude in evals:
        report = evaluate(
            model, path, exclude=exclude, batch_size=batch_size, progress=False, model_name=name
        )
        metrics[label] = headline(report.metrics)
        samples[label] = report.num_samples
        reports[label] = report.to_dict()
        logger.info("%s: %s", label, metrics[label])
    for label, root, table, exclude in au_teachers:
        from affectfpn.recipes.agreement import student_agreement

        agreement = student_agreement(model, root, table, exclude=exclude, batch_size=batch_size)
        figures: dict[str, float] = {}
        for unit, values in agreement["au"].items():
            for key in ("auc", "agreement"):
                value = values.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    figures[f"{unit}_{key}_vs_teacher"] = round(float(value), 5)
        metrics[label] = figures
        samples[label] = int(agreement["num_faces"])
        reports[label] = agreement
        logger.info("%s: %s", label, figures)
    dtype = None
    if half:
        first_label, first_path, first_exclude = evals[0]
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, dtype=torch.float16)
            halved = AffectFPN.from_pretrained(tmp)
            report = evaluate(
                halved, first_path, exclude=first_exclude, batch_size=batch_size, progress=False
            )
        full = _first_figure(metrics[first_label])
        half_value = _first_figure(headline(report.metrics))
        drop = full - half_value
        logger.info("half precision on %s: %.5f vs %.5f", first_label, half_value, full)
        if drop > max_half_drop:
            logger.warning("half precision costs %.4f > %.4f: keeping float32", drop, max_half_drop)
        else:
            dtype = torch.float16
            card.setdefault(
                "precision_note",
                f"float16 weights; on {first_label} the headline "
                f"figure moved by {-drop:+.5f} against float32",
            )
    speed = measure_throughput(model, seconds=throughput_seconds)
    folder = Path(out) / name
    card_info = {
        "name": name,
        "metrics": metrics,
        **{k: v for k, v in card.items() if k != "precision_note"},
    }
    training = card_info.get("training", "")
    notes = [training] if training else []
    if "precision_note" in card:
        notes.append(card["precision_note"] + ".")
    notes.append(
        f"Inference on the machine that published it: {speed['images_per_second']} images/s "
        f"(model only, batch {speed['batch_size']}, {speed['threads']} CPU threads, "
        f"torch {speed['torch']})."
    )
    card_info["training"] = "\n\n".join(notes)
    model.save_pretrained(folder, model_card=card_info, dtype=dtype)
    digest = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    config = model.config
    info = {
        "name": name,
        "description": card.get("description", ""),
        "source": "package",
        "location": name,
        "sha256": digest,
        "tasks": list(config.tasks),
        "backbone": config.backbone,
        "neck": config.neck,
        "input_size": list(config.input_size),
        "mean": list(config.mean),
        "std": list(config.std),
        "expressions": list(config.expressions),
        "action_units": list(config.action_units),
        "num_params": model.num_params(),
        "metrics": metrics,
        "license": card.get("license_note", card.get("license", "")),
        "datasets": list(card.get("datasets", [])),
        "recipe": card.get("recipe", ""),
        "extra": {
            "precision": "float16" if dtype else "float32",
            "eval_samples": samples,
            "throughput": speed,
            "gflops_per_face": round(gflops_per_face(config), 4),
        },
        "default": default,
    }
    (folder / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (folder / "evaluation.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return info


def _first_figure(values: dict[str, float]) -> float:
    for key in ("accuracy", "s_va", "s_au"):
        if key in values:
            return values[key]
    raise ConfigError(f"no headline figure among {sorted(values)}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m affectfpn.recipes.publish SOURCE [options]``: an alias of
    ``affectfpn publish SOURCE [options]`` (kept for existing scripts; the command line lives in
    :mod:`affectfpn.cli`, which this module does not import)."""
    from affectfpn._alias import run_command

    return run_command("publish", argv)


if __name__ == "__main__":
    from affectfpn._alias import exec_command

    raise SystemExit(exec_command("publish"))
