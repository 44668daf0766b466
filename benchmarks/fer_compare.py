"""The paper's three architectures on FER2013, trained under one budget: scores and speed.

Reads the ``best/`` model of each run folder (trained by ``recipes/fer2013.toml`` with the same
settings and epochs, only ``model.backbone`` / ``model.neck`` changed; see docs/models.md),
scores it on FER2013 ``test`` (all 3,589 faces, and without the files listed in
``overlap_with_train.txt``), sums the training time its ``metrics.jsonl`` recorded, and times
inference of the three side by side (batch 256 at the recipe's 48 x 48, channels_last,
``inference_mode``). Prints a Markdown table.

    python benchmarks/fer_compare.py RUN_F3R RUN_RESNET RUN_MOBILENET
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from _common import SHARED, compare, finish, make_parser, print_table, setup

from affectfpn import AffectFPN
from affectfpn.evaluation import evaluate


def describe(model: AffectFPN) -> str:
    c = model.config
    name = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2"}.get(c.backbone, c.backbone)
    return f"{name} + FPN ({c.fpn_width})" if c.neck == "fpn" else f"{name} (plain)"


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with best/)")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "fer2013")
    parser.add_argument("--rounds", type=int, default=6, help="alternating timing rounds")
    parser.add_argument("--batch", type=int, default=256, help="images per timed forward pass")
    args = parser.parse_args(argv)
    setup(args)

    rows = []
    models: dict[str, AffectFPN] = {}
    for run in args.runs:
        model = AffectFPN.from_pretrained(run / "best")
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        seconds = sum(float(r["train_seconds"]) for r in history if "train_seconds" in r)
        best = max(history, key=lambda r: r.get("val_score", float("-inf")))
        scores = {}
        for tag, exclude in (("all", None), ("clean", args.data / "overlap_with_train.txt")):
            report = evaluate(model, args.data / "test", exclude=exclude, progress=False)
            scores[tag] = report.metrics["expression"]
        name = describe(model)
        models[name] = model.to(memory_format=torch.channels_last)
        rows.append((name, model, scores, seconds, len(history), best))

    h, w = next(iter(models.values())).config.input_size
    x = torch.randn(args.batch, 3, h, w).contiguous(memory_format=torch.channels_last)

    def forward(model: AffectFPN) -> int:
        with torch.inference_mode():
            model(x)
        return args.batch

    timings = compare(
        {name: functools.partial(forward, m) for name, m in models.items()},
        rounds=args.rounds,
        min_seconds=1.0,
    )
    print(f"\ninference, batch {args.batch} at {h}x{w}, {args.threads} thread(s):")
    print_table(timings, baseline=rows[0][0])

    print(
        "\n| model | test acc. (all 3,589) | test acc. (3,301, no train overlap) | macro F1 | "
        "S_EXPR | val acc. (best epoch) | parameters | inference img/s | training time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, model, scores, seconds, epochs, best in rows:
        a, c = scores["all"], scores["clean"]
        val = best["val"]["expression"]["accuracy"]
        print(
            f"| {name} | {a['accuracy']:.3f} | {c['accuracy']:.3f} | {a['macro_f1']:.3f} | "
            f"{a['score']:.3f} | {val:.3f} (epoch {best['epoch']}) | "
            f"{model.num_params():,} | {timings[name].median:.0f} | "
            f"{seconds / 60:.0f} min ({epochs} epochs) |"
        )
    finish()


if __name__ == "__main__":
    main()
