"""Which alignment framing lets a model read a detected face as it read its training faces?

Run from the repository root::

    python benchmarks/framing.py [--model NAME] [--data DIR] [--per-class N] [--write FOLDER]

A model trained on pre-cropped faces (FER2013: 48 x 48 crops made by the dataset's authors)
learnt their framing: how much of the head a crop shows and where the face sits. At inference
the Predictor frames a detected face itself, by warping its five landmarks onto a template
(:func:`affectfpn.inference.align.face_template`: ``margin`` zooms, ``shift`` moves the face up
or down). This script finds the framing under which the model, reading its *own dataset's*
faces again through detection and alignment, scores best:

1. every image of ``--data`` (default: FER2013 PublicTest, ``val``) is enlarged 4x and padded by
   replicating its border (YuNet needs the context), and YuNet finds its face;
2. the face is aligned at the model's input size under each ``(margin, shift)`` of a grid;
3. the model's expression accuracy is computed per framing, beside its accuracy on the
   original crops.

Choose on ``val`` only. ``--write FOLDER`` stores the best pair as ``align_margin`` /
``align_shift`` in ``FOLDER/config.json`` (a model folder), which the Predictor then uses.
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import DEFAULT_YUNET, SHARED, make_parser, setup

from affectfpn import AffectFPN
from affectfpn.data import expression_from_name
from affectfpn.inference import get_detector
from affectfpn.inference.align import align_face
from affectfpn.io import list_images, load_image
from affectfpn.preprocess import normalize

MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.1)
SHIFTS = (-0.15, -0.12, -0.09, -0.06, -0.03, 0.0)
UPSCALE = 4


def _accuracy(model: AffectFPN, crops: list[np.ndarray], labels: np.ndarray) -> float:
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(crops), 256):
            batch = torch.from_numpy(np.stack(crops[start : start + 256])).permute(0, 3, 1, 2)
            out = model(normalize(batch, model.config)).expression
            assert out is not None
            predicted.append(out.argmax(1).numpy())
    return float((np.concatenate(predicted) == labels).mean())


def main() -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="registered name or folder (default: the default model)")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "fer2013" / "val")
    parser.add_argument("--per-class", type=int, default=0, help="images per class (0: all)")
    parser.add_argument("--detector", default=str(DEFAULT_YUNET))
    parser.add_argument("--write", type=Path, help="model folder whose config.json gets the best")
    args = parser.parse_args()
    if args.quick:
        args.per_class = args.per_class or 4
    setup(args)
    model = AffectFPN.from_pretrained(args.model).eval()
    size = tuple(model.config.input_size)
    detector = get_detector(args.detector, min_face=None)
    grid = [(m, s) for m in MARGINS for s in SHIFTS]
    originals: list[np.ndarray] = []
    crops: dict[tuple[float, float], list[np.ndarray]] = {g: [] for g in grid}
    labels: list[int] = []
    images = 0
    for folder in sorted(p for p in args.data.iterdir() if p.is_dir()):
        label = expression_from_name(folder.name)
        paths = list_images(folder)
        for path in paths[: args.per_class or None]:
            images += 1
            rgb = load_image(path).rgb
            big = cv2.resize(
                rgb, (rgb.shape[1] * UPSCALE, rgb.shape[0] * UPSCALE), interpolation=cv2.INTER_CUBIC
            )
            pad = big.shape[0] // 2
            padded = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            found = detector.detect(padded)
            if not found or found[0].landmarks is None:
                continue
            originals.append(cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA))
            labels.append(label)
            for margin, shift in grid:  # the Predictor's own alignment
                crops[(margin, shift)].append(
                    align_face(padded, found[0], size, margin=margin, shift=shift)
                )
    truth = np.array(labels)
    print(f"model: {args.model or 'default'}; data: {args.data}")
    print(f"{images} images, a face found in {len(labels)}")
    print(f"accuracy on the original crops: {_accuracy(model, originals, truth):.4f}")
    print("accuracy after detection and alignment (rows: margin, columns: shift):")
    print("margin  " + "".join(f"{s:>8.2f}" for s in SHIFTS))
    scores = {g: _accuracy(model, crops[g], truth) for g in grid}
    for margin in MARGINS:
        print(f"{margin:6.2f}  " + "".join(f"{scores[(margin, s)]:8.4f}" for s in SHIFTS))
    best = max(grid, key=lambda g: scores[g])
    default = scores[(0.1, 0.0)]
    print(
        f"best: margin {best[0]}, shift {best[1]}: {scores[best]:.4f} (margin 0.1, shift 0: "
        f"{default:.4f})"
    )
    if args.write is not None:
        path = args.write / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["align_margin"], config["align_shift"] = best
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        print(f"wrote align_margin {best[0]}, align_shift {best[1]} into {path}")


if __name__ == "__main__":
    main()
