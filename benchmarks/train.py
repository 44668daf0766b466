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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    FER_RECIPE,
    SHARED,
    compare,
    finish,
    make_parser,
    paired_ratio,
    print_table,
    setup,
    verdict,
)
from PIL import Image
from torch.utils.data import Dataset

from affectfpn import AffectFPN
from affectfpn.inference._io import list_images
from affectfpn.labels import ACTION_UNITS
from affectfpn.preprocess import normalize, pil_to_tensor, resize_face
from affectfpn.recipes.augment import BatchAugment
from affectfpn.recipes.recipe import load_recipe, model_from_recipe
from affectfpn.recipes.trainer import Trainer, TrainSettings

FLOOR = 0.9


class MemoryFaces(Dataset[dict[str, Any]]):
    """Training samples (the recipe datasets' dict contract) from tensors in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index],
            "key": f"face{index}",
            "va": torch.zeros(2),
            "va_mask": torch.tensor(True),
            "expression": self.labels[index],
            "expression_mask": torch.tensor(True),
            "au": torch.zeros(len(ACTION_UNITS)),
            "au_mask": torch.ones(len(ACTION_UNITS), dtype=torch.bool),
        }


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


def make_optimizer(model: AffectFPN, s: TrainSettings) -> torch.optim.Optimizer:
    """The settings' optimiser over all trainable parameters (one group)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


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
        epoch = [0]

        def run_trainer() -> int:
            record = trainer.train_one_epoch(epoch[0])
            epoch[0] += 1
            return int(record["train_samples"])

        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        hand_model.to(memory_format=memory_format).train()
        optimizer = make_optimizer(hand_model, settings)
        generator = torch.Generator().manual_seed(0)
        weights = settings.task_weights

        def run_hand() -> int:
            order = torch.randperm(count, generator=generator)
            for step in range(args.steps):
                index = order[step * batch : (step + 1) * batch]
                x = images[index].float().div_(255.0)
                x = augment(x, generator)
                x = normalize(x, config).contiguous(memory_format=memory_format)
                out = hand_model(x)
                loss = torch.zeros(())
                if out.expression is not None:
                    loss = loss + weights.get("expression", 1.0) * F.cross_entropy(
                        out.expression, labels[index], label_smoothing=settings.label_smoothing
                    )
                if out.va is not None:
                    loss = loss + weights.get("va", 1.0) * F.mse_loss(
                        out.va, torch.zeros_like(out.va)
                    )
                if out.au is not None:
                    loss = loss + weights.get("au", 1.0) * F.binary_cross_entropy_with_logits(
                        out.au, torch.zeros_like(out.au)
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return count

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
