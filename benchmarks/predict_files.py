"""Benchmark ``predict`` end to end on JPEG face crops against the model on decoded tensors.

Run from the repository root::

    python benchmarks/predict_files.py [--threads 2] [--count 512] [--rounds 7] [--model NAME]

Writes ``--count`` (512) face crops, resized to the model's input size, as JPEG files (RGB,
quality 95) into a temporary folder: FER2013 test faces from ``--data`` (default
``$AFFECTFPN_SHARED/data/fer2013/test``), taken evenly across its class folders. Then it times,
alternating in rounds in one process:

* ``predict (files)``: ``affectfpn.predict(model, folder, faces="crop", batch_size=32)``: list
  the folder, read and decode each file, resize (a no-op at the input size), batch, normalise,
  run the model and build the typed results; the loader threads are the Predictor's default
  (``--num-workers`` overrides);
* ``tensor (normalise + model)``: the same images already decoded into one ``N x 3 x H x W``
  ``uint8`` tensor, cut into the same batches, normalised and run through the model in inference
  mode, as the Predictor does on the CPU (channels_last input and weights, float32, BatchNorm
  folded into the convolutions by ``AffectFPN.fuse_batchnorm``), nothing else;
* ``decode only``: reading and decoding the files (``load_image``) one by one, for scale.

Floor: ``predict`` reaches at least 0.95x the tensor path's images/s. The files are in the page
cache after the first round, so disk reads cost little: this measures decoding and the
pipeline's overhead, not the disk.

``--model``: a registered name, a folder or a Hub repo id; default: the package's default model,
or, when none is registered, the FER2013 recipe's architecture (ResNet-18 + FPN width 128, 48 x
48, expression only) with random weights (the output says which); ``fer`` or ``paper`` force
those architectures.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import SHARED, compare, finish, load_bench_model, make_parser, print_table, setup
from _common import paired_ratio as ratio_of
from _common import verdict as floor_verdict
from PIL import Image

from affectfpn import predict
from affectfpn.inference.predictor import Predictor
from affectfpn.io import list_images, load_image
from affectfpn.preprocess import normalize, resize_face

FLOOR = 0.95


def pick_images(root: Path, count: int) -> list[Path]:
    """``count`` image files taken evenly from the (sorted, recursive) listing of ``root``."""
    files = list_images(root, recursive=True)
    if not files:
        raise SystemExit(f"no images under {root}; pass --data (or set AFFECTFPN_SHARED)")
    step = len(files) / count
    return [files[int(i * step) % len(files)] for i in range(count)]


def write_crops(sources: list[Path], folder: Path, size: tuple[int, int]) -> list[Path]:
    """Save each source as an RGB JPEG at ``size`` (H, W) in ``folder``; returns the paths."""
    paths = []
    for i, source in enumerate(sources):
        with Image.open(source) as image:
            face = resize_face(image.convert("RGB"), size)
        path = folder / f"face_{i:05d}.jpg"
        face.save(path, quality=95)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name, folder or Hub repo id; 'fer', 'paper'")
    parser.add_argument(
        "--data", type=Path, default=SHARED / "data" / "fer2013" / "test", help="face crops"
    )
    parser.add_argument("--count", type=int, default=512, help="number of JPEG files")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    parser.add_argument("--num-workers", type=int, help="Predictor loader threads")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.rounds = 64, 2
    if not args.data.is_dir():
        parser.error(f"no folder {args.data}; pass --data (or set AFFECTFPN_SHARED)")
    setup(args)

    model, description = load_bench_model(args.model)
    config = model.config
    size = config.input_size
    workers = Predictor(model, faces="crop").num_workers
    workers = workers if args.num_workers is None else args.num_workers
    print(f"model:    {description}")
    print(
        f"setting:  {args.count} JPEG crops at {size[0]}x{size[1]}, batch {args.batch_size}, "
        f"predict with {workers} loader thread(s), {args.rounds} rounds"
    )

    folder = Path(tempfile.mkdtemp(prefix="affectfpn-bench-"))
    try:
        paths = write_crops(pick_images(args.data, args.count), folder, size)
        total_bytes = sum(p.stat().st_size for p in paths)
        print(
            f"data:     {len(paths)} files from {args.data} in {folder} "
            f"({total_bytes / len(paths) / 1024:.1f} KiB each on average)"
        )
        # Decoded with the library's own reader: the tensor path sees the very same pixels.
        stacked = np.stack([load_image(p).rgb for p in paths])  # N x H x W x 3
        # channels_last input and weights, as the Predictor runs on the CPU: the ratio is then
        # the cost of reading the files and batching, not of a memory layout.
        images = torch.from_numpy(stacked).permute(0, 3, 1, 2)
        images = images.contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)
        # The model as the Predictor runs it: with BatchNorm folded into the convolutions.
        runs = model.fuse_batchnorm() if hasattr(model, "fuse_batchnorm") else model
        runs.to(memory_format=torch.channels_last)
        chunks = list(torch.split(images, args.batch_size))

        def run_predict() -> int:
            results = predict(
                model,
                folder,
                faces="crop",
                batch_size=args.batch_size,
                progress=False,
                num_workers=workers,
            )
            assert isinstance(results, list)
            assert len(results) == len(paths)
            return len(results)

        def run_tensor() -> int:
            with torch.inference_mode():
                for chunk in chunks:
                    runs(normalize(chunk, config))
            return len(paths)

        def run_decode() -> int:
            for p in paths:
                load_image(p)
            return len(paths)

        # Both paths compute the same thing: check it once before timing.
        results = predict(model, folder, faces="crop", batch_size=args.batch_size, progress=False)
        assert isinstance(results, list)
        with torch.inference_mode():
            out = model(normalize(images, config))
        if out.expression is not None:
            direct = out.expression.softmax(1).numpy()
            via = np.array(
                [
                    list(getattr(r.faces[0].expression, "probabilities", {}).values())
                    for r in results
                ]
            )
            print(
                f"check:    expression probabilities, predict vs tensor path: max abs diff "
                f"{np.abs(direct - via).max():.2e}"
            )

        print(f"\ntiming ({args.rounds} rounds, order rotated each round):")
        timings = compare(
            {
                "predict (files)": run_predict,
                "tensor (normalise + model)": run_tensor,
                "decode only": run_decode,
            },
            rounds=args.rounds,
            min_seconds=0.0,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"\nthroughput (median of rounds), {args.threads} thread(s):")
    print_table(timings, baseline="tensor (normalise + model)")
    model_s = 1 / timings["tensor (normalise + model)"].median
    predict_s = 1 / timings["predict (files)"].median
    decode_s = 1 / timings["decode only"].median
    print(
        f"\nper image: predict {1000 * predict_s:.2f} ms = model {1000 * model_s:.2f} ms + "
        f"{1000 * (predict_s - model_s):.2f} ms more, of which decoding alone takes "
        f"{1000 * decode_s:.2f} ms when done in the calling thread"
    )
    print()
    floor_verdict(
        "predict / tensor throughput",
        ratio_of(timings, "predict (files)", "tensor (normalise + model)"),
        FLOOR,
    )
    finish()


if __name__ == "__main__":
    main()
