"""``affectfpn models``: the registry of pretrained models and their metrics."""

import argparse
import json
import sys
from typing import Any

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
    _format_table,
    _note,
)
from affectfpn.errors import WeightsError


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "models",
        "list the registered pretrained models",
        "List the registered models with their tasks, size, input, FER2013 test accuracy and "
        "compute per face (GFLOP, mirror averaging included), to pick one by accuracy and "
        "speed; --metrics adds every metric measured on named data. The default model is "
        "marked with *.",
        ["affectfpn models", "affectfpn models --metrics", "affectfpn models --json"],
    )
    p.add_argument("--json", action="store_true", help="full entries as JSON")
    p.add_argument("--metrics", action="store_true", help="add every measured metric")
    p.set_defaults(handler=run)


def _metrics_text(metrics: Any) -> str:
    parts = []
    for data, values in metrics.items():
        shown = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
        )
        parts.append(f"{data}: {shown}")
    return "; ".join(parts) or "-"


def _test_accuracy(metrics: Any) -> str:
    """FER2013 test accuracy (all of ``test``), the figure the zoo's models are compared on."""
    for data, values in metrics.items():
        name = data.lower()
        whole_test = "fer2013" in name and "test" in name
        if whole_test and "overlap" not in name and "teacher" not in name and "accuracy" in values:
            return f"{float(values['accuracy']):.3f}"
    return "-"


def _gflops(info: Any) -> str:
    """GFLOP per face: the figure publish recorded (no torch import), else counted from the
    embedded model's config (mirror averaging counts twice)."""
    recorded = (info.extra or {}).get("gflops_per_face")
    if isinstance(recorded, int | float):
        return f"{recorded:.3f}"
    if info.source != "package":
        return "-"
    from affectfpn.config import AffectFPNConfig
    from affectfpn.models.affectfpn import gflops_per_face
    from affectfpn.models.registry import package_weights_dir

    try:
        config = AffectFPNConfig.load(package_weights_dir(info) / "config.json")
    except Exception:  # a damaged entry shows no figure rather than failing the listing
        return "-"
    return f"{gflops_per_face(config):.3f}"


def run(args: argparse.Namespace) -> int:
    from affectfpn.models import registry

    infos = registry.list_models()
    try:
        default: str | None = registry.default_model_name()
    except WeightsError:
        default = None
    if args.json:
        entries = [dict(info.to_dict(), default=info.name == default) for info in infos]
        print(json.dumps(entries, indent=2))
        return EXIT_OK
    if not infos:
        _note(args, "no models are registered; pass --model with a folder or a Hub repo id")
        return EXIT_OK
    rows = []
    for info in infos:
        rows.append(
            [
                info.name + (" *" if info.name == default else ""),
                "+".join(info.tasks),
                f"{info.backbone}{'+fpn' if info.neck == 'fpn' else ''}",
                f"{info.input_size[0]}x{info.input_size[1]}",
                f"{info.num_params / 1e6:.1f}M",
                _test_accuracy(info.metrics),
                _gflops(info),
                info.source,
                *([_metrics_text(info.metrics)] if args.metrics else []),
            ]
        )
    header = ["name", "tasks", "architecture", "input", "params", "test acc", "GFLOP/face"]
    header += ["source", *(["metrics"] if args.metrics else [])]
    sys.stdout.write(_format_table(tuple(header), rows, numeric={4, 5, 6}))
    return EXIT_OK
