"""``affectfpn export``: an ONNX file and/or a Hub-ready folder."""

import argparse
from pathlib import Path
from typing import Any

from affectfpn.cli._common import (
    EXIT_OK,
    Command,
    _load_model,
    _positive_int,
    _UsageError,
)


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "export",
        "export a model to ONNX and/or a Hub-ready folder",
        "Export a model: --onnx writes an ONNX file that takes the normalised N x 3 x H x W "
        "float input and returns va, expression_logits and au_logits (the model's tasks), with "
        "the preprocessing (input size, mean, std, labels) in its metadata; --folder writes "
        "config.json, model.safetensors and a model card, ready for push_to_hub.",
        [
            "affectfpn export --model user/affect-model --onnx affect.onnx",
            "affectfpn export --onnx affect.onnx --opset 18 --static-batch",
            "affectfpn export --model runs/fer2013/best --folder hub-ready/",
        ],
        "model",
    )
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX file")
    p.add_argument(
        "--opset", type=_positive_int, default=17, metavar="N", help="ONNX opset (default: 17)"
    )
    p.add_argument(
        "--static-batch",
        action="store_true",
        help="fix the batch size at 1 (default: a dynamic batch axis)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the onnx.checker validation")
    p.add_argument("--folder", metavar="DIR", help="save a Hub-ready copy (save_pretrained)")
    p.set_defaults(handler=run)


def _card_for(model: Any) -> dict[str, Any] | None:
    """Model-card metadata of a registered model (``None`` for other models)."""
    from affectfpn.models import registry

    name = getattr(model, "name_or_path", None)
    if not isinstance(name, str) or name not in registry.model_names():
        return None
    info = registry.get_model_info(name)
    return {
        "name": info.name,
        "description": info.description,
        "metrics": {k: dict(v) for k, v in info.metrics.items()},
        "license": info.license,
        "datasets": list(info.datasets),
        "recipe": info.recipe,
    }


def run(args: argparse.Namespace) -> int:
    if not args.onnx and not args.folder:
        raise _UsageError("give --onnx FILE and/or --folder DIR", "export")
    if args.onnx:
        from affectfpn.errors import require_extra

        require_extra("onnx", "onnx")  # before the (slow) model load
    model = _load_model(args)
    if args.folder:
        folder = model.save_pretrained(Path(args.folder).expanduser(), model_card=_card_for(model))
        print(f"folder  {folder}")
    if args.onnx:
        from affectfpn.export import export_onnx

        path = export_onnx(
            model,
            Path(args.onnx).expanduser(),
            opset=args.opset,
            dynamic_batch=not args.static_batch,
            check=not args.no_check,
        )
        print(f"onnx    {path}")
    return EXIT_OK
