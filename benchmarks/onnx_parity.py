"""Benchmark ONNX export, and ONNX Runtime against PyTorch on the CPU.

Run from the repository root::

    python benchmarks/onnx_parity.py [--threads 2] [--batches 1,32] [--rounds 5] [--model NAME]

Exports the model with :func:`affectfpn.export.export_onnx` (dynamic batch axis; the time and
the file size are printed), then, where ``onnxruntime`` is installed, for each batch size of
``--batches`` (default 1 and 32):

* the largest absolute difference between ONNX Runtime's and PyTorch's outputs on the same
  normalised input (random normal values), per output; it must be <= 1e-4;
* the throughput, alternating in rounds, of ``pytorch``: the model in inference mode on a
  contiguous (NCHW) float32 batch, ``pytorch channels_last``: a copy of the model with
  channels_last weights and input (what the Predictor runs on the CPU), and ``onnxruntime``: an
  ``InferenceSession`` on the CPU execution provider with ``intra_op_num_threads`` = ``--threads``
  (and one inter-op thread), so that all use the same cores. The ratio is images/s over
  ``pytorch``'s; there is no floor on it.

``OnnxRunner`` (the library's ONNX Runtime wrapper) is checked to give the same outputs as the
session (built with ``num_threads=--threads``); the bare session is what is timed.

``--model`` as for ``predict_files.py``: the registered default model, else the FER2013 recipe's
architecture with random weights; ``paper`` takes the paper's F3R (ResNet-50, 128 px).
"""

import copy
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import compare, finish, load_bench_model, make_parser, print_table, setup
from _common import paired_ratio as ratio_of

from affectfpn.export import OUTPUT_NAMES, OnnxRunner, export_onnx

TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name, folder or Hub repo id; 'fer', 'paper'")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument(
        "--min-seconds", type=float, default=0.5, help="shortest timed sample per candidate"
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--exporter", default="auto", choices=("auto", "torchscript", "dynamo"))
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.quick:
        args.rounds, args.min_seconds = 2, 0.05
        batches = [min(b, 4) for b in batches]
    setup(args)

    if importlib.util.find_spec("onnx") is None:
        print("onnx is not installed (pip install 'affectfpn[onnx]'): nothing to measure")
        finish()
        return
    model, description = load_bench_model(args.model)
    config = model.config
    h, w = config.input_size
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    print(f"model:    {description}")

    with tempfile.TemporaryDirectory(prefix="affectfpn-bench-") as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, path, opset=args.opset, exporter=args.exporter)
        seconds = time.perf_counter() - start
        print(
            f"export:   {seconds:.2f} s ({args.exporter} exporter, opset {args.opset}, dynamic "
            f"batch), {path.stat().st_size / 2**20:.1f} MiB"
        )
        if importlib.util.find_spec("onnxruntime") is None:
            print("onnxruntime is not installed: only the export was measured")
            finish()
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        runner = OnnxRunner(path, num_threads=args.threads)
        names = [o.name for o in session.get_outputs()]
        tasks = [t for t in config.tasks if OUTPUT_NAMES[t] in names]
        print(f"session:  {ort.__version__}, outputs {names}, {args.threads} intra-op thread(s)")

        worst = 0.0
        rows = []
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, 3, h, w), dtype=np.float32)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                reference = model(xt)
            got = dict(
                zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True)
            )
            diffs = {}
            for task in tasks:
                expected = getattr(reference, task).numpy()
                diffs[OUTPUT_NAMES[task]] = float(np.abs(got[OUTPUT_NAMES[task]] - expected).max())
            worst = max(worst, *diffs.values())
            via_runner = runner.run(x)
            runner_diff = max(float(np.abs(via_runner[n] - got[n]).max()) for n in names)
            text = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
            print(
                f"\nbatch {batch}: max abs difference ONNX Runtime vs PyTorch: {text}; "
                f"OnnxRunner vs session {runner_diff:.1e}"
            )

            def run_torch(xt: torch.Tensor = xt, batch: int = batch) -> int:
                with torch.inference_mode():
                    model(xt)
                return batch

            xcl = xt.contiguous(memory_format=torch.channels_last)

            def run_torch_cl(xcl: torch.Tensor = xcl, batch: int = batch) -> int:
                with torch.inference_mode():
                    model_cl(xcl)
                return batch

            def run_ort(x: np.ndarray = x, batch: int = batch) -> int:
                session.run(None, {"input": x})
                return batch

            timings = compare(
                {
                    "pytorch": run_torch,
                    "pytorch channels_last": run_torch_cl,
                    "onnxruntime": run_ort,
                },
                rounds=args.rounds,
                min_seconds=args.min_seconds,
            )
            print_table(timings, baseline="pytorch")
            rows.append((batch, timings))

    print(f"\nsummary, {args.threads} thread(s):")
    print(
        f"  {'batch':>5s} {'pytorch img/s':>14s} {'channels_last':>14s} {'onnxruntime':>12s} "
        f"{'ort/pytorch':>12s} {'ort/channels_last':>18s}"
    )
    for batch, timings in rows:
        print(
            f"  {batch:5d} {timings['pytorch'].median:14.1f} "
            f"{timings['pytorch channels_last'].median:14.1f} "
            f"{timings['onnxruntime'].median:12.1f} "
            f"{ratio_of(timings, 'onnxruntime', 'pytorch'):12.3f} "
            f"{ratio_of(timings, 'onnxruntime', 'pytorch channels_last'):18.3f}"
        )
    ok = worst <= TOLERANCE
    print(
        f"\nparity:   largest abs difference {worst:.2e}, must be <= {TOLERANCE}: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    finish()


if __name__ == "__main__":
    main()
