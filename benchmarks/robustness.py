"""How stable are a model's expression predictions on real photos? A measurement, not a test.

Run from the repository root::

    python benchmarks/robustness.py [--model NAME] [--photos DIR] [--detector PATH]

For every face YuNet finds in the photos (default ``$AFFECTFPN_SHARED/data/samples``), the
aligned crop the Predictor would use is compared with small changes of it:

* ``grey``: the same crop converted to grey (FER2013, the training data, is grey);
* ``shift``: the crop moved by one pixel of the model's input (48 px) left, right, up, down;
* ``scale``: the crop 5% larger and 5% smaller around its centre;
* ``photo``: the whole photo moved by one pixel before detection (the detector's jitter).

Per face it prints the label, its probability, and for each change the largest difference of
any expression probability and whether the label changed. No floor: the figures go into
docs/models.md ("robustness on photos").
"""

from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_YUNET, SHARED, make_parser, setup

from affectfpn import AffectFPN
from affectfpn.inference import Detection, get_detector
from affectfpn.inference.align import align_face, alignment_scale, alignment_transform
from affectfpn.io import list_images, load_image
from affectfpn.preprocess import normalize

CHANGES = ("grey", "shift", "scale", "photo")


def _moved(detection: Detection, dx: float, dy: float, zoom: float = 1.0) -> Detection:
    """The detection with its landmarks (and box) moved by (dx, dy) and scaled about their mean."""
    assert detection.landmarks is not None
    points = detection.landmarks.astype(np.float64)
    centre = points.mean(axis=0)
    points = (points - centre) * zoom + centre + (dx, dy)
    x1, y1, x2, y2 = detection.box
    box = (x1 + dx, y1 + dy, x2 + dx, y2 + dy)
    return Detection(box=box, score=detection.score, landmarks=points)


def _probabilities(model: AffectFPN, crops: list[np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        out = model(normalize(batch, model.config))
    assert out.expression is not None
    return out.expression.float().softmax(1).numpy()


def main() -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="registered name or folder (default: the default model)")
    parser.add_argument("--photos", type=Path, default=SHARED / "data" / "samples")
    parser.add_argument("--detector", default=str(DEFAULT_YUNET))
    args = parser.parse_args()
    setup(args)
    model = AffectFPN.from_pretrained(args.model).eval()
    detector = get_detector(args.detector)
    size = model.config.input_size
    # the Predictor's framing of this model
    frame = {"margin": model.config.align_margin, "shift": model.config.align_shift}
    names = [n[:4] for n in model.config.expressions]
    print(f"model: {args.model or 'default'}; photos: {args.photos}")
    print(f"{'photo':28s} face  label  p     " + "  ".join(f"{c:>11s}" for c in CHANGES))
    worst = dict.fromkeys(CHANGES, 0.0)
    flips = dict.fromkeys(CHANGES, 0)
    faces = 0
    for path in list_images(args.photos)[: 3 if args.quick else None]:
        rgb = load_image(path).rgb
        shifted = np.ascontiguousarray(rgb[1:, 1:])  # the photo moved up and left by 1 px
        moved = sorted(detector.detect(shifted), key=lambda d: -d.score)
        for i, detection in enumerate(sorted(detector.detect(rgb), key=lambda d: -d.score)):
            if detection.landmarks is None:
                continue
            faces += 1
            # photo pixels per input pixel
            step = 1.0 / alignment_scale(alignment_transform(detection, size, **frame))
            crop = align_face(rgb, detection, size, **frame)
            grey = np.repeat(crop.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, 2)
            shifts = [
                align_face(rgb, _moved(detection, dx * step, dy * step), size, **frame)
                for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
            ]
            scales = [
                align_face(rgb, _moved(detection, 0, 0, z), size, **frame) for z in (1.05, 0.95)
            ]
            # the same face in the moved photo: the detection nearest to this one's centre
            cx = (detection.box[0] + detection.box[2]) / 2
            cy = (detection.box[1] + detection.box[3]) / 2
            photo = []
            if moved:
                near = min(
                    moved,
                    key=lambda d: (
                        abs((d.box[0] + d.box[2]) / 2 + 1 - cx)
                        + abs((d.box[1] + d.box[3]) / 2 + 1 - cy)
                    ),
                )
                photo = [align_face(shifted, near, size, **frame)]
            p = _probabilities(model, [crop, grey, *shifts, *scales, *photo])
            groups = {"grey": p[1:2], "shift": p[2:6], "scale": p[6:8], "photo": p[8:]}
            label = int(p[0].argmax())
            cells = []
            for change in CHANGES:
                q = groups[change]
                if len(q) == 0:
                    cells.append(f"{'-':>11s}")
                    continue
                deviation = float(np.abs(q - p[0]).max())
                flipped = int((q.argmax(axis=1) != label).sum())
                worst[change] = max(worst[change], deviation)
                flips[change] += int(flipped > 0)
                cells.append(f"{deviation:5.2f} {flipped}/{len(q)}  ")
            print(
                f"{path.name:28s} {i:4d}  {names[label]:5s} {p[0, label]:.2f}  " + "  ".join(cells)
            )
    print(f"\n{faces} faces; largest probability change, and faces whose label changed:")
    for change in CHANGES:
        print(f"  {change:6s} {worst[change]:.2f}  {flips[change]}/{faces}")


if __name__ == "__main__":
    main()
