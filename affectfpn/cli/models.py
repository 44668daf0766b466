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
        "List the registered models with their tasks, size, input, and the metrics measured "
        "on named data. The default model is marked with *.",
        ["affectfpn models", "affectfpn models --json"],
    )
    p.add_argument("--json", action="store_true", help="full entries as JSON")
    p.set_defaults(handler=run)


def _metrics_text(metrics: Any) -> str:
    parts = []
    for data, values in metrics.items():
        shown = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
        )
        parts.append(f"{data}: {shown}")
    return "; ".join(parts) or "-"


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
                info.source,
                _metrics_text(info.metrics),
            ]
        )
    header = ("name", "tasks", "architecture", "input", "params", "source", "metrics")
    sys.stdout.write(_format_table(header, rows, numeric={4}))
    return EXIT_OK
