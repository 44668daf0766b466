"""Benchmark the recipe Trainer against a minimal hand-written PyTorch training loop.

Run from the repository root::

    python benchmarks/train.py [--threads 2] [--recipe recipes/fer2013.toml] [--steps 8]
                               [--rounds 4]

Both train the model of ``--recipe`` (default: the FER2013 recipe: ResNet-18 + FPN of width 128
at 48 x 48, expression only, batch 64, SGD with Nesterov momentum, weight decay, label smoothing
0.1, the recipe's ``[augment]``), from the same random initialisation, on the same faces held in
memory as ``uint8`` tensors (FER2013 training faces from ``--data``, default
``$AFFECTFPN_SHARED/data/fer2013/train``), alternating in rounds of ``--steps`` steps each:

* ``trainer``: :meth:`affectfpn.recipes.trainer.Trainer.train_one_epoch` on a dataset of
  training-sample dicts (the contract of the recipe datasets) whose epoch is ``--steps``
  batches: the DataLoader with the recipe's ``num_workers`` and ``default_collate``, the
  conversion to float, ``BatchAugment``, normalisation, channels_last, the masked multi-task
  loss, the optimiser with its parameter groups, the learning-rate schedule, the loss checks
  and the running sums. ``fit`` adds a checkpoint and log files per epoch, not measured here;
* ``hand-written``: a loop over random index batches of the ``uint8`` tensor: ``/ 255``, the
  same ``BatchAugment``, the same normalisation and channels_last, forward, the plain (unmasked)
  losses of the model's tasks, ``zero_grad``, ``backward`` and the same optimiser (one
  parameter group).

Both use ``--lr`` (0.001) instead of the recipe's learning rate: with epochs of a few steps the
recipe's warm-up is over at once, and its rate of 0.05 on random labels diverges within a few
dozen steps (the Trainer then stops with an error). Speed does not depend on the rate.

Floor: the Trainer reaches at least 0.9x the hand-written loop's images/s.
"""

import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import (
    FER_RECIPE,
    SHARED,
    MemoryFaces,
    compare,
    epoch_runner,
    finish,
    hand_train_steps,
    make_optimizer,
    make_parser,
    paired_ratio,
    print_table,
    setup,
    verdict,
)
from PIL import Image

from affectfpn.io import list_images
from affectfpn.preprocess import pil_to_tensor, resize_face
from affectfpn.recipes.augment import BatchAugment
from affectfpn.recipes.recipe import load_recipe, model_from_recipe
from affectfpn.recipes.trainer import Trainer, TrainSettings

FLOOR = 0.9


def load_faces(root: Path, count: int, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """``count`` faces from ``root`` as an ``N x 3 x H x W`` uint8 tensor, and their origin."""
    files = list_images(root, recursive=True) if root.is_dir() else []
    if not files:
        g = torch.Generator().manual_seed(0)
        noise = torch.randint(0, 256, (count, 3, *size), dtype=torch.uint8, generator=g)
        return noise, f"random pixels ({root} has no images)"
    step = len(files) / count
    picked = [files[int(i * step) % len(files)] for i in range(count)]
    tensors = []
    for path in picked:
        with Image.open(path) as image:
            tensors.append(pil_to_tensor(resize_face(image.convert("RGB"), size)))
    return torch.stack(tensors), f"{count} faces from {root}"


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=FER_RECIPE, help="a kind='train' recipe")
    parser.add_argument(
        "--data", type=Path, default=SHARED / "data" / "fer2013" / "train", help="face images"
    )
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate of both (default 0.001: the speed does not depend on it, and a "
        "recipe's rate without its long warm-up can diverge within a few dozen steps)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 2, 2
        args.batch_size = args.batch_size or 16
    setup(args)

    recipe = load_recipe(args.recipe)
    table = recipe.table("train")
    table.update(device="cpu", progress=False, num_threads=None, epochs=1000)
    table.update(schedule="constant", warmup_epochs=0)  # the speed does not depend on the rate
    table.pop("cycles", None)
    if args.batch_size is not None:
        table["batch_size"] = args.batch_size
    table["max_steps_per_epoch"] = args.steps
    table["lr"] = args.lr
    settings = TrainSettings.from_dict(table, source=str(args.recipe))
    augment = BatchAugment(**recipe.table("augment"))
    batch = settings.batch_size

    torch.manual_seed(0)
    trainer_model = model_from_recipe(recipe)
    torch.manual_seed(0)
    hand_model = model_from_recipe(recipe)
    config = trainer_model.config
    count = batch * args.steps
    images, origin = load_faces(args.data, count, config.input_size)
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 7, count)).long()
    print(f"recipe:   {args.recipe} ({recipe.name})")
    print(
        f"model:    {config.backbone}, neck {config.neck}, FPN width {config.fpn_width}, input "
        f"{config.input_size[0]}x{config.input_size[1]}, tasks {', '.join(config.tasks)}, "
        f"random initialisation"
    )
    print(
        f"setting:  batch {batch}, {settings.optimizer} lr {settings.lr}, channels_last "
        f"{settings.channels_last}, loader workers {settings.num_workers}, amp {settings.amp}; "
        f"{args.steps} steps per round, {args.rounds} rounds"
    )
    print(f"data:     {origin}, in memory as uint8 {tuple(images.shape)}")

    with tempfile.TemporaryDirectory(prefix="affectfpn-bench-") as output_dir:
        trainer = Trainer(
            trainer_model,
            MemoryFaces(images, labels),
            settings=settings,
            output_dir=output_dir,
            augment=augment,
        )
        run_trainer = epoch_runner(trainer)

        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        hand_model.to(memory_format=memory_format).train()
        optimizer = make_optimizer(hand_model, settings)
        generator = torch.Generator().manual_seed(0)

        def run_hand() -> int:
            return hand_train_steps(
                hand_model,
                optimizer,
                images,
                labels,
                batch=batch,
                steps=args.steps,
                augment=augment,
                generator=generator,
                settings=settings,
            )

        print(f"\ntiming ({args.rounds} rounds, order rotated each round):")
        timings = compare(
            {"trainer": run_trainer, "hand-written": run_hand},
            rounds=args.rounds,
            min_seconds=0.0,
        )
    print(f"\ntraining throughput (median of rounds), {args.threads} thread(s):")
    print_table(timings, baseline="hand-written")
    print()
    verdict(
        "trainer / hand-written throughput", paired_ratio(timings, "trainer", "hand-written"), FLOOR
    )
    finish()


if __name__ == "__main__":
    main()
