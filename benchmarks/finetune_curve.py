"""Fine-tuning on a few hundred to a few thousand faces: what it gains, what it forgets.

Fine-tunes a start model (default: the embedded default) with ``recipes/finetune-custom.toml``
on random subsets of a labelled training folder (default: lfw-expressions train), validates on
that dataset's ``val`` split as a user would, and scores the chosen model (``best/``) on

* the new data's ``val`` and ``test`` splits (what the user wanted), and
* FER2013 ``val`` and ``test`` (what the start knew: forgetting).

Defaults are chosen on the two ``val`` splits only; the ``test`` figures are the report.

    python benchmarks/finetune_curve.py --sizes 250 1000 all --seeds 0 1 2 \\
        --out runs/finetune-curve/results.jsonl
    python benchmarks/finetune_curve.py --plot runs/finetune-curve/results.jsonl \\
        --tag replay-defaults --compare w1-kd1-a05 --name replay-defaults=defaults \\
        --name "w1-kd1-a05=before replay" --figure docs/img/finetune-curve.png
    # a variant: any recipe value, as with affectfpn train --set
    python benchmarks/finetune_curve.py --sizes 250 --seeds 0 --tag lr01 --set train.lr=0.01

Each result is one JSON line (size, seed, tag, overrides, wall time, and per split: accuracy,
macro F1, per-class recall). Runs already in the output file are skipped, so an interrupted
sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTFPN_SHARED", ROOT.parent / "shared"))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def make_subset(train: Path, val: Path, size: int | None, seed: int, dest: Path) -> Path:
    """``dest/train`` with ``size`` random images of ``train`` (all with None), ``dest/val``
    linking to ``val``; returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    files = _images(train)
    if size is not None and size < len(files):
        files = random.Random(seed).sample(files, size)
    for path in files:
        target = dest / "train" / path.relative_to(train)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (dest / "val").symlink_to(val.resolve(), target_is_directory=True)
    return dest


def scores(model: Any, folder: Path) -> dict[str, Any]:
    from affectfpn.evaluation import evaluate

    report = evaluate(model, folder, progress=False)
    expr = report.metrics["expression"]
    recall = dict(zip(expr["class_names"], expr["recall_per_class"], strict=True))
    support = dict(zip(expr["class_names"], expr["support_per_class"], strict=True))
    return {
        "accuracy": expr["accuracy"],
        "macro_f1": expr["macro_f1"],
        "recall": {k: v for k, v in recall.items() if support[k]},
        "samples": report.num_samples,
    }


def evaluate_all(model: Any, data: Path) -> dict[str, Any]:
    return {
        "new_val": scores(model, data / "val"),
        "new_test": scores(model, data / "test"),
        "fer_val": scores(model, SHARED / "data" / "fer2013" / "val"),
        "fer_test": scores(model, SHARED / "data" / "fer2013" / "test"),
    }


def run(args: argparse.Namespace) -> None:
    import torch

    from affectfpn import AffectFPN
    from affectfpn.recipes.recipe import load_recipe, run_recipe

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["tag"], row["size"], row["seed"]))
    data = Path(args.data)
    work = Path(args.work)
    if ("start", 0, 0) not in done:
        start = AffectFPN.from_pretrained(args.init) if args.init else AffectFPN.from_pretrained()
        row = {"tag": "start", "size": 0, "seed": 0, **evaluate_all(start, data)}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    for size_name in args.sizes:
        size = None if size_name == "all" else int(size_name)
        seeds = args.seeds if size is not None else args.seeds[:1]
        for seed in seeds:
            key = (args.tag, size_name, seed)
            if key in done:
                continue
            folder = make_subset(data / "train", data / "val", size, seed, work / "data")
            overrides = [
                f"output_dir={work / 'run'}",
                f"train.seed={seed}",
                "train.progress=false",
                *args.set,
            ]
            if args.init:
                overrides.append(f"model.init={args.init}")
            shutil.rmtree(work / "run", ignore_errors=True)
            os.environ["FINETUNE_DATA"] = str(folder)
            began = time.perf_counter()
            summary = run_recipe(load_recipe(ROOT / "recipes" / "finetune-custom.toml", overrides))
            seconds = time.perf_counter() - began
            model = AffectFPN.from_pretrained(work / "run" / "best")
            row = {
                "tag": args.tag,
                "size": size_name,
                "seed": seed,
                "overrides": args.set,
                "train_images": len(_images(folder / "train")),
                "seconds": round(seconds, 1),
                "best_epoch": summary["best_epoch"],
                **evaluate_all(model, data),
            }
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lines = [
        "| tag | size | seed | new val acc | new test acc | neutral recall | FER val | FER test "
        "| best epoch | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['tag']} | {r['size']} | {r['seed']} | {r['new_val']['accuracy']:.3f} | "
            f"{r['new_test']['accuracy']:.3f} | {r['new_test']['recall'].get('Neutral', 0):.2f} "
            f"| {r['fer_val']['accuracy']:.3f} | {r['fer_test']['accuracy']:.3f} | "
            f"{r.get('best_epoch', '-')} | {r.get('seconds', '-')} |"
        )
    return "\n".join(lines)


#: The figure's curves: (result split, legend label, colour).
_CURVES = (
    ("new_test", "lfw-expressions test", "tab:blue"),
    ("fer_test", "FER2013 test", "tab:red"),
)


def plot(
    path: Path, figure: Path, tag: str, compare: str = "", names: dict[str, str] | None = None
) -> None:
    """The figure of docs/training.md: test accuracy on the new data and on FER2013 against the
    number of fine-tuning faces, for ``tag`` (mean, and the range over seeds) and, dotted,
    ``compare`` (another configuration, e.g. the previous defaults)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    start = next(r for r in rows if r["tag"] == "start")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sizes: list[int] = []
    for name, style, band in ((tag, "o-", True), (compare, "s:", False)):
        runs = [r for r in rows if name and r["tag"] == name]
        if not runs:
            continue
        sizes = sorted({r["train_images"] for r in runs}) if band else sizes
        for split, label, colour in _CURVES:
            ns = sorted({r["train_images"] for r in runs})
            means, lows, highs = [], [], []
            for n in ns:
                values = [r[split]["accuracy"] for r in runs if r["train_images"] == n]
                means.append(sum(values) / len(values))
                lows.append(min(values))
                highs.append(max(values))
            ax.plot(
                ns,
                means,
                style,
                color=colour,
                alpha=1.0 if band else 0.6,
                label=f"{label} ({(names or {}).get(name, name)})",
            )
            if band:
                ax.fill_between(ns, lows, highs, color=colour, alpha=0.2)
    for split, label, colour in _CURVES:
        ax.axhline(start[split]["accuracy"], color=colour, ls="--", lw=1, label=f"{label} (start)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("fine-tuning images (lfw-expressions train)")
    ax.set_ylabel("accuracy")
    ax.set_title("Fine-tuning a FER2013 model on news photos: gain and forgetting", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "lfw-expressions"))
    parser.add_argument(
        "--init",
        default="fer2013-multitask-resnet18-fpn",
        help="start model (default: the FER2013 default the measurements of docs/training.md "
        "started from; it has not seen lfw-expressions)",
    )
    parser.add_argument("--sizes", nargs="+", default=["250", "1000", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--tag", default="default")
    parser.add_argument("--set", action="append", default=[], help="recipe override")
    parser.add_argument("--out", default="runs/finetune-curve/results.jsonl")
    parser.add_argument("--work", default="runs/finetune-curve/work")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the results as a table")
    parser.add_argument("--plot", default="", help="results file to plot")
    parser.add_argument("--figure", default="docs/img/finetune-curve.png")
    parser.add_argument("--compare", default="", help="a second tag to plot, dotted")
    parser.add_argument(
        "--name", action="append", default=[], metavar="TAG=LABEL", help="a tag's legend label"
    )
    args = parser.parse_args(argv)
    if args.plot:
        names = dict(item.split("=", 1) for item in args.name)
        plot(Path(args.plot), Path(args.figure), args.tag, args.compare, names)
        return 0
    if args.table:
        print(table(Path(args.out)))
        return 0
    if not (Path(args.data) / "train").is_dir():
        print(f"no training folder under {args.data}: pass --data", file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
