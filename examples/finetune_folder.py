"""Fine-tune a pretrained model on a small folder of labelled faces, with the recipes library.

Run it from the repository root::

    python examples/finetune_folder.py --data my-faces/ --steps 50 --epochs 3
    python examples/finetune_folder.py --model user/affect-model --data my-faces/

``--data`` holds face crops sorted into one folder per expression, for training and
(optionally) validation -- the layout of ``recipes/finetune-custom.toml``::

    my-faces/train/happy/0001.jpg       class folders: neutral, anger (angry), disgust, fear,
    my-faces/train/sad/0002.jpg         happiness (happy), sadness (sad), surprise
    my-faces/val/happy/0100.jpg         (optional: without val/ there is no validation)

The script builds the same recipe as that file, in Python: ``[model] init`` is the pretrained
model (its backbone, pyramid and expression head are kept; heads of other tasks are dropped),
``[data]`` the two folders, ``[train]`` a short run. Each epoch stops after ``--steps`` batches.
The best epoch is saved to ``<output>/best`` (a folder that ``AffectFPN.from_pretrained`` and
``push_to_hub`` take), with ``last.pt`` (resumable) and ``metrics.csv`` beside it. Running the
script again with the same output folder resumes (a finished run returns at once).

Defaults: the embedded default model, the shared FER2013 folders (``data/fer2013`` under
``$AFFECTFPN_SHARED``, else ``../shared`` next to the repository; its 3,589 validation faces are
cut to ``--val-limit``), 2 steps of 16 faces, ``runs/finetune-example``.
"""

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Subset

from affectfpn import AffectFPN
from affectfpn.preprocess import eval_transform
from affectfpn.recipes.recipe import (
    build_datasets,
    model_from_recipe,
    recipe_from_dict,
    train_from_recipe,
)
from affectfpn.registry import default_model_name

SHARED = Path(os.environ.get("AFFECTFPN_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered name, model folder or Hub repo id to start from "
        "(default: the embedded default model)",
    )
    parser.add_argument(
        "--data",
        default=str(SHARED / "data" / "fer2013"),
        help="a folder with train/<class>/ (and val/<class>/) face crops "
        "(default: the shared FER2013)",
    )
    parser.add_argument("--output", default="runs/finetune-example", help="the run's folder")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default: 1)")
    parser.add_argument("--steps", type=int, default=2, help="batches per epoch (default: 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per batch (default: 16)")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (default: 3e-4)")
    parser.add_argument(
        "--val-limit",
        type=int,
        default=256,
        help="validate on at most this many faces (0: all; default: 256)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    data = Path(args.data)
    splits = {"train": [{"type": "imagefolder", "root": str(data / "train")}]}
    if (data / "val").is_dir():
        splits["val"] = [{"type": "imagefolder", "root": str(data / "val")}]

    # The recipe of recipes/finetune-custom.toml, as a dict (load_recipe reads the same from TOML).
    recipe = recipe_from_dict(
        {
            "name": "finetune-example",
            "output_dir": args.output,
            "model": {
                "init": args.model or default_model_name(),
                "tasks": ["expression"],  # a folder of class folders labels expressions only
            },
            "data": splits,
            "augment": {"scale": [0.8, 1.0], "rotation": 10.0, "flip": True},
            "train": {
                "epochs": args.epochs,
                "max_steps_per_epoch": args.steps,
                "batch_size": args.batch_size,
                "optimizer": "adamw",
                "lr": args.lr,
                "weight_decay": 0.05,
                "schedule": "cosine",
                "num_workers": 0,
                "progress": False,
                "select_metric": "expression/accuracy",
            },
            "card": {
                "description": "An affectfpn model fine-tuned on a folder of labelled faces.",
                "license": "other",
            },
        }
    )

    # The pretrained model with the recipe's changes, and the data at its input size.
    model = model_from_recipe(recipe)
    transform = eval_transform(model.config)
    train_set = build_datasets(splits["train"], transform=transform, source="train")
    val_set = None
    if "val" in splits:
        val_set = build_datasets(splits["val"], transform=transform, source="val")
        if args.val_limit and len(val_set) > args.val_limit:  # type: ignore[arg-type]
            step = len(val_set) // args.val_limit  # type: ignore[arg-type]
            val_set = Subset(val_set, range(0, step * args.val_limit, step))

    summary = train_from_recipe(recipe, model=model, train_set=train_set, val_set=val_set)

    best = Path(summary["output_dir"]) / "best"
    last = summary["history"][-1] if summary["history"] else {}
    trained = [r for r in summary["history"] if not r.get("start")]  # epoch 0: the start
    print(f"trained {len(trained)} epoch(s), {last.get('train_samples', 0)} faces")
    print(f"last train loss: {last.get('train_loss', float('nan')):.4f}")
    if val_set is not None:
        print(f"validation accuracy of the best epoch: {summary['best_score']:.4f}")
    print(f"fine-tuned model: {best}")

    tuned = AffectFPN.from_pretrained(best)  # what a user of the result does
    print(f"reloaded: tasks {list(tuned.tasks)}, {tuned.num_params() / 1e6:.1f}M parameters")
    print(json.dumps({"best_epoch": summary["best_epoch"], "finished": summary["finished"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
