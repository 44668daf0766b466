"""GPU benchmark: inference and training images/s in bf16 autocast and float32, channels_last.

Run from the repository root on a machine with one CUDA GPU (a few minutes; ``--quick``: well
under one)::

    python benchmarks/gpu.py [--rounds 3] [--quick]

For two models, random weights, data generated on the GPU (no dataset needed):

* ``paper``: the paper's F3R, ``AffectFPNConfig.paper()`` (ResNet-50, FPN width 256, 128 x 128,
  frozen BatchNorm, 3 trainable stages), inference batch 256, training batch 128 with Adam
  (the paper's student settings, ``TrainSettings()``);
* ``fer``: the FER2013 recipe's model (ResNet-18 + FPN width 128, 48 x 48, expression only),
  inference batch 1024, training batch 64 with the recipe's SGD settings and augmentation.

and for each, alternating in rounds (median of rounds), channels_last everywhere:

* ``infer fp32`` / ``infer bf16``: forward passes in inference mode on a normalised batch,
  without / with ``torch.autocast(dtype=torch.bfloat16)``;
* ``train fp32`` / ``train bf16``: hand-written training steps as the Trainer does them (uint8
  batch on the GPU, ``/ 255``, ``BatchAugment``, normalisation, forward, loss, backward,
  optimiser step), without / with bf16 autocast;
* ``trainer bf16``: :meth:`Trainer.train_one_epoch` (``amp="bf16"``) on the same kind of data
  held in CPU memory as uint8 sample dicts (DataLoader in the main process, pinned memory):
  what the recipe Trainer reaches, input pipeline included.

"fp32" is PyTorch's default float32: cuDNN may use TF32 for convolutions
(``torch.backends.cudnn.allow_tf32``, recorded in the JSON). ``cudnn.benchmark`` is on, as in
the Trainer. The JSON summary (machine, versions, settings, images/s per round, median, peak
memory, ratios) is printed and written to ``$OUT/gpu_benchmark.json`` when ``OUT`` is set
(``--json PATH`` writes it elsewhere). Without CUDA the script says so, writes a JSON saying so
and exits 0; ``--device cpu`` runs the same code on the CPU to test the script itself (its
figures mean nothing).
"""

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import (
    FER_RECIPE,
    MemoryFaces,
    Timing,
    command_line,
    compare,
    describe_machine,
    epoch_runner,
    finish,
    hand_train_steps,
    machine,
    make_optimizer,
    make_parser,
    paired_ratio,
    versions,
)

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.recipes.augment import BatchAugment
from affectfpn.recipes.recipe import load_recipe, model_from_recipe
from affectfpn.recipes.trainer import Trainer, TrainSettings

JSON_NAME = "gpu_benchmark.json"


def model_specs(quick: bool, small: bool) -> dict[str, dict[str, Any]]:
    """The two models, with their batch sizes, optimiser settings and augmentation.

    ``quick``: batches of 8. ``small`` (the CPU self-test): batches of 2 and the paper's model
    at 64 px, since bfloat16 on a CPU without native support is very slow.
    """
    recipe = load_recipe(FER_RECIPE)
    fer_train = recipe.table("train")
    paper_size = (64, 64) if small else (128, 128)
    specs: dict[str, dict[str, Any]] = {
        "paper": {
            "description": f"AffectFPNConfig.paper(): ResNet-50 + FPN 256, {paper_size[0]} px, "
            "frozen BN, 3 trainable stages",
            "build": lambda: AffectFPN(AffectFPNConfig.paper(input_size=paper_size)),
            "infer_batch": 256,
            "train_batch": 128,
            "settings": {},
            "augment": BatchAugment(),
        },
        "fer": {
            "description": f"{FER_RECIPE.name}: ResNet-18 + FPN 128, 48 px, expression only",
            "build": lambda: model_from_recipe(recipe),
            "infer_batch": 1024,
            "train_batch": int(fer_train.get("batch_size", 64)),
            "settings": fer_train,
            "augment": BatchAugment(**recipe.table("augment")),
        },
    }
    if quick or small:
        for spec in specs.values():
            spec["infer_batch"] = spec["train_batch"] = 2 if small else 8
    return specs


def bench_model(name: str, spec: dict[str, Any], device: torch.device, args: Any) -> dict[str, Any]:
    """All modes of one model; returns its part of the JSON summary."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    infer_model: AffectFPN = spec["build"]().to(device).eval()
    infer_model.to(memory_format=torch.channels_last)
    config = infer_model.config
    h, w = config.input_size
    ib, tb = spec["infer_batch"], spec["train_batch"]
    steps = args.steps
    table = {**spec["settings"], "batch_size": tb}
    table.update(device=device.type, progress=False, num_workers=0, num_threads=None)
    table.update(amp="bf16", channels_last=True, epochs=1000, max_steps_per_epoch=steps)
    table.update(schedule="constant", warmup_epochs=0)  # the speed does not depend on the rate
    table.pop("cycles", None)
    settings = TrainSettings.from_dict(table, source=f"{name} settings")
    augment: BatchAugment = spec["augment"]

    x = torch.randn(ib, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
    count = tb * steps
    g = torch.Generator().manual_seed(0)
    images_cpu = torch.randint(0, 256, (count, 3, h, w), dtype=torch.uint8, generator=g)
    labels_cpu = torch.randint(0, len(config.expressions), (count,), generator=g)
    images, labels = images_cpu.to(device), labels_cpu.to(device)

    torch.manual_seed(0)
    train_model: AffectFPN = spec["build"]().to(device).train()
    train_model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(train_model, settings)
    aug_generator = torch.Generator().manual_seed(1)

    def infer(dtype: torch.dtype | None) -> int:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None),
        ):
            infer_model(x)
        sync()
        return ib

    def train(dtype: torch.dtype | None) -> int:
        seen = hand_train_steps(
            train_model,
            optimizer,
            images,
            labels,
            batch=tb,
            steps=steps,
            augment=augment,
            generator=aug_generator,
            settings=settings,
            autocast_dtype=dtype,
        )
        sync()
        return seen

    torch.manual_seed(0)
    trainer_model: AffectFPN = spec["build"]()
    output_dir = tempfile.mkdtemp(prefix="affectfpn-gpu-bench-")
    trainer = Trainer(
        trainer_model,
        MemoryFaces(images_cpu, labels_cpu),
        settings=settings,
        output_dir=output_dir,
        augment=augment,
    )
    run_trainer = epoch_runner(trainer, after=sync)

    candidates = {
        "infer fp32": lambda: infer(None),
        "infer bf16": lambda: infer(torch.bfloat16),
        "train fp32": lambda: train(None),
        "train bf16": lambda: train(torch.bfloat16),
        "trainer bf16": run_trainer,
    }
    print(
        f"\n{name}: {spec['description']}; inference batch {ib}, training batch {tb} "
        f"({settings.optimizer}), training steps per timed call: {steps}"
    )
    timings: dict[str, Timing] = compare(
        candidates, rounds=args.rounds, min_seconds=args.min_seconds, warmup=1 if args.quick else 2
    )
    modes: dict[str, Any] = {}
    for mode, fn in candidates.items():
        peak = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            peak = torch.cuda.max_memory_allocated(device) / 2**30
        t = timings[mode]
        modes[mode] = {
            "images_per_s": t.median,
            "rounds": t.rates,
            "spread": t.spread,
            "calls_per_sample": t.calls,
            "peak_memory_gib": peak,
        }
        shown = "" if peak is None else f", peak memory {peak:.2f} GiB"
        print(f"  {mode:13s} {t.median:10.1f} images/s (spread {100 * t.spread:.1f}%){shown}")
    ratios = {
        "infer bf16 / fp32": paired_ratio(timings, "infer bf16", "infer fp32"),
        "train bf16 / fp32": paired_ratio(timings, "train bf16", "train fp32"),
        "trainer bf16 / hand-written train bf16": paired_ratio(
            timings, "trainer bf16", "train bf16"
        ),
    }
    for key, value in ratios.items():
        print(f"  {key}: {value:.3f}")
    shutil.rmtree(output_dir, ignore_errors=True)
    return {
        "description": spec["description"],
        "config": config.to_dict(),
        "inference_batch": ib,
        "training_batch": tb,
        "training_steps_per_sample": steps,
        "optimizer": settings.optimizer,
        "modes": modes,
        "ratios": ratios,
    }


def write_json(summary: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(summary, indent=2, default=str)
    print("\nJSON summary:")
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        print(f"written to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N; cpu: self-test")
    parser.add_argument("--models", default="paper,fer", help="comma-separated: paper, fer")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    parser.add_argument(
        "--min-seconds", type=float, default=0.5, help="shortest timed sample per candidate"
    )
    parser.add_argument(
        "--json", type=Path, help=f"where to write the JSON (default $OUT/{JSON_NAME})"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.min_seconds = 1, 1, 0.0
    out_dir = os.environ.get("OUT")
    json_path = args.json or (Path(out_dir) / JSON_NAME if out_dir else None)
    torch.set_num_threads(args.threads)
    print(f"command:  {command_line()}")
    describe_machine()
    summary: dict[str, Any] = {
        "command": command_line(),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions(),
    }
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        message = (
            f"CUDA is not available (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}): nothing measured. Run this on a machine with a CUDA GPU."
        )
        print(message)
        write_json({**summary, "cuda_available": False, "message": message}, json_path)
        return
    if args.quick:
        print("QUICK RUN: reduced sizes and rounds; the figures below are NOT representative")
    if device.type != "cuda":
        print(
            f"SELF-TEST on {device}: the code paths run at tiny sizes (batch 2, the paper's "
            "model at 64 px); the figures mean nothing"
        )
    torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        summary["cuda"] = {
            "device": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
        print(f"GPU:      {json.dumps(summary['cuda'])}")
    summary["settings"] = {
        "device": str(device),
        "channels_last": True,
        "cudnn_benchmark": True,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "rounds": args.rounds,
        "min_seconds": args.min_seconds,
        "trainer_num_workers": 0,
    }
    specs = model_specs(args.quick, small=device.type != "cuda")
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in specs:
            parser.error(f"unknown model {name!r}; choose from {sorted(specs)}")
        results[name] = bench_model(name, specs[name], device, args)
    summary["results"] = results
    summary["cuda_available"] = device.type == "cuda"
    finite = all(
        math.isfinite(mode["images_per_s"])
        for result in results.values()
        for mode in result["modes"].values()
    )
    summary["ok"] = finite
    write_json(summary, json_path)
    finish()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
