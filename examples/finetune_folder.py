"""Fine-tune a pretrained model on your own labelled faces (or photos), with the measured defaults.

Run it from the repository root::

    python examples/finetune_folder.py --data my-faces/              # folders of face crops
    python examples/finetune_folder.py --photos my-photos/           # photos: faces cut first
    python examples/finetune_folder.py --model user/affect-model --data my-faces/ --epochs 3

``--data`` holds face crops sorted into one folder per expression, for training and
(optionally) validation::

    my-faces/train/happy/0001.jpg       class folders: neutral, anger (angry), disgust, fear,
    my-faces/train/sad/0002.jpg         happiness (happy), sadness (sad), surprise
    my-faces/val/happy/0100.jpg         (optional, strongly recommended: without val/ there is
                                        no validation and nothing guards against a worse model)

``--photos`` holds whole photos in the same layout: their faces are cut out first as
``predict`` cuts them (``affectfpn.recipes.crops.crop_faces``, the ``affectfpn crops`` command),
into ``<output>/faces``.

The run is :func:`affectfpn.recipes.finetune.finetune` (``affectfpn finetune`` on the command
line): the start is scored on the validation faces as epoch 0 and kept if no epoch beats it,
its heads for tasks your folders do not label (the default's action units) are kept and held
to it, and so is what it knew about faces unlike yours (128 images inverted from the start,
made once: minutes on a CPU; ``--replay 0`` turns that off). ``--epochs`` and ``--steps``
(batches per epoch) shorten a trial run. The best model is saved to ``<output>/best``, which
``AffectFPN.from_pretrained`` and ``push_to_hub`` take; running again with the same output
folder resumes (a finished run returns at once).
"""

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from affectfpn import AffectFPN
from affectfpn.recipes.crops import crop_faces
from affectfpn.recipes.finetune import FINETUNE_TRAIN, finetune


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="registered name, model folder or Hub repo id to start from "
        "(default: the embedded default model)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a folder with train/<class>/ (and val/<class>/) faces")
    source.add_argument("--photos", help="the same layout with whole photos: faces cut first")
    parser.add_argument("--output", default="runs/finetune-example", help="the run's folder")
    parser.add_argument(
        "--epochs", type=int, default=FINETUNE_TRAIN["epochs"], help="epochs (default: 10)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=FINETUNE_TRAIN["max_steps_per_epoch"],
        help="batches per epoch at most (default: 40)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=FINETUNE_TRAIN["batch_size"], help="default: 32"
    )
    parser.add_argument(
        "--replay",
        type=int,
        default=FINETUNE_TRAIN["replay_synthetic"],
        help="images inverted from the start to replay (default: 128; 0: none)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    output = Path(args.output)
    if args.photos:  # cut as the start model's predict cuts faces: its input size and framing
        report = crop_faces(args.photos, output / "faces", model=args.model)
        print(report.summary())
        data = output / "faces"
    else:
        data = Path(args.data)
    val = data / "val" if (data / "val").is_dir() else None

    summary = finetune(
        data / "train",
        val,
        init=args.model,  # None: the embedded default
        output_dir=output,
        epochs=args.epochs,
        max_steps_per_epoch=args.steps,
        batch_size=args.batch_size,
        replay_synthetic=args.replay,
        num_workers=0,
        progress=False,
    )

    history = summary["history"]
    trained = [r for r in history if r.get("epoch", 0) > 0]  # epoch 0: the start, scored
    faces = trained[-1]["train_samples"] if trained else 0
    print(f"trained {len(trained)} epoch(s), {faces} faces")
    if val is not None:
        print(f"validation score of the start: {history[0]['val_score']:.4f}")
        print(f"validation score of the best epoch: {summary['best_score']:.4f}")
    best = output / "best"
    print(f"fine-tuned model: {best}")

    tuned = AffectFPN.from_pretrained(best)  # what a user of the result does
    print(f"reloaded: tasks {list(tuned.tasks)}, {tuned.num_params() / 1e6:.1f}M parameters")
    print(json.dumps({"best_epoch": summary["best_epoch"], "finished": summary["finished"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
