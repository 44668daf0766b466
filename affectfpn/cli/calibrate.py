"""``affectfpn calibrate``: fit a model's expression temperature on validation data."""

import argparse
import json
from pathlib import Path

from affectfpn.cli._common import EXIT_OK, Command, _load_model, _positive_int
from affectfpn.config import stored_temperature
from affectfpn.errors import InputError


def add_parser(command: Command) -> None:
    """Add the subcommand to the parser (``command`` is :data:`affectfpn.cli._common.Command`)."""
    p = command(
        "calibrate",
        "fit a model's expression temperature on validation data",
        "Fit the temperature T of the expression probabilities, softmax(logits / T), that "
        "minimises the negative log-likelihood of the labels of one or more validation sets "
        "(each counting the same), print the expected calibration error (ECE, 15 bins) before "
        "and after, and save the model with T in its config.json. With --adaptive, fit a "
        "per-face temperature instead, read from the model's pooled features (for data on "
        "which one temperature cannot serve every kind of face, such as lab faces and news "
        "photos together): it is saved as the model's calibrator (model.safetensors) and "
        "switched on in config.json, with the single temperature beside it. The predicted "
        "expression never changes, only how confident the model says it is. Fit on "
        "validation data, never on the data you report.",
        [
            "affectfpn calibrate --val data/fer2013/val --val data/lfw-expressions/val "
            "--out calibrated/",
            "affectfpn calibrate --model runs/finetune-custom/best --val faces/val --out cal/",
            "affectfpn calibrate --adaptive --val data/fer2013/val "
            "--val data/lfw-expressions/val --out calibrated/",
        ],
        "model",
    )
    p.add_argument(
        "--val",
        action="append",
        required=True,
        metavar="DATA",
        help="labelled validation data (an image-class folder or a label .csv); repeat for more",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the calibrated model")
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="fit a per-face temperature from the model's features (stored with the weights)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="default: 64")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from affectfpn.evaluation import build_eval_dataset, calibrate

    paths = [Path(v).expanduser() for v in args.val]
    for path in paths:
        if not path.exists():
            raise InputError(f"--val {path}: no such folder or file")
    model = _load_model(args)
    datasets = {}
    for path in paths:
        name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        name = name if name not in datasets else str(path)
        datasets[name] = build_eval_dataset(path, model.config)
    result: dict[str, object]
    if args.adaptive:
        fit, report = calibrate(
            model, datasets, batch_size=args.batch_size, device=args.device, adaptive=True
        )
        model.set_calibrator(fit)
        temperature = fit.single_temperature
        low, high = model.config.adaptive_temperature_range
        result = {"temperature": temperature, "adaptive": True, "range": [low, high]}
        heading = (
            f"per-face temperature from {model.config.feature_dim} features, between "
            f"{low:.3f} and {high:.3f} (single temperature {temperature:.4f})"
        )
    else:
        temperature, report = calibrate(
            model, datasets, batch_size=args.batch_size, device=args.device
        )
        model.drop_calibrator()
        model.config = model.config.replace(expression_temperature=stored_temperature(temperature))
        result = {"temperature": temperature, "adaptive": False}
        heading = f"temperature {temperature:.4f}"
    folder = model.save_pretrained(Path(args.out).expanduser())
    if args.json:
        print(json.dumps({**result, "sets": report, "out": str(folder)}))
        return EXIT_OK
    print(heading)
    for name, r in report.items():
        single = f" (single temperature {r['ece_single']:.4f})" if "ece_single" in r else ""
        print(
            f"  {name}: {int(r['samples'])} faces, ECE {r['ece_before']:.4f} -> "
            f"{r['ece_after']:.4f}{single}, NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}"
        )
    print(f"saved   {folder}")
    return EXIT_OK
