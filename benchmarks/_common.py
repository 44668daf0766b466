"""Shared helpers of the benchmark scripts (not part of the library).

* :func:`make_parser` and :func:`setup`: the options every script has (``--threads``, default 2,
  and ``--quick``), the thread settings of torch and OpenCV, and a banner with the command line
  that reproduces the run, the machine and the library versions.
* :func:`compare`: times several candidates side by side in one process. Each round runs every
  candidate once, in an order that rotates from round to round, so a slow drift of the machine
  (another job starting, the CPU clock changing) hits all of them alike; a candidate's figure is
  the median of its rounds, and a ratio is the median of the per-round ratios.
* :func:`load_bench_model`: the model a benchmark runs when none is named.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTFPN_SHARED", str(ROOT.parent / "shared")))
DEFAULT_YUNET = SHARED / "models" / "yunet" / "face_detection_yunet.onnx"
FER_RECIPE = ROOT / "recipes" / "fer2013.toml"
if str(ROOT) not in sys.path:
    # The repository's affectfpn, also where it is not installed (e.g. on a GPU machine that
    # only has a copy of the working tree); after the script's own folder.
    sys.path.insert(1, str(ROOT))

_START = time.perf_counter()


# --------------------------------------------------------------------------- options, banner


def make_parser(description: str) -> ArgumentParser:
    """An argument parser with the options every benchmark has."""
    parser = ArgumentParser(description=description)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch (and OpenCV) threads; default 2, the issue's setting",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and few rounds: a smoke test of the script, not a measurement",
    )
    return parser


def setup(args: Namespace) -> None:
    """Apply ``--threads`` and print the reproducing command line and the machine."""
    if args.threads < 1:
        sys.exit(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    print(f"command:  {command_line()}")
    describe_machine()
    if args.threads > usable_cores():
        print(
            f"WARNING:  {args.threads} threads on {usable_cores()} usable core(s): threads "
            "compete for cores and the figures suffer"
        )
    if getattr(args, "quick", False):
        print("QUICK RUN: reduced sizes and rounds; the figures below are NOT representative")
    print()


def command_line() -> str:
    """The command that reproduces this run, from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), else all cores."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of the libraries whose speed the benchmarks measure (``None``: not installed)."""
    import numpy
    import torchvision

    import affectfpn

    try:
        import cv2

        opencv: str | None = cv2.__version__
    except ImportError:
        opencv = None
    try:
        import onnxruntime

        ort: str | None = onnxruntime.__version__
    except ImportError:
        ort = None
    return {
        "affectfpn": affectfpn.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": ort,
        "onnx": _package_version("onnx"),
        "opencv": opencv,
        "numpy": numpy.__version__,
        "pillow": _package_version("pillow"),
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    """The machine, as a dict (what :func:`describe_machine` prints)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores_usable": usable_cores(),
        "cores_total": os.cpu_count(),
        "load_average": load_average(),
        "torch_threads": torch.get_num_threads(),
        "torch_parallel": _parallel_summary(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _parallel_summary() -> str:
    """torch's parallel backend and its oneDNN / MKL versions, in a few words."""
    info = torch.__config__.parallel_info()
    parts = []
    backend = re.search(r"ATen parallel backend: (.+)", info)
    if backend:
        parts.append(backend.group(1).strip())
    onednn = re.search(r"MKL-DNN (v[\d.]+)", info)
    if onednn:
        parts.append(f"oneDNN {onednn.group(1)}")
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", info)
    if mkl:
        parts.append(f"MKL {mkl.group(1)}")
    return ", ".join(parts) or "?"


def describe_machine() -> None:
    """Print the CPU, cores, load, threads and library versions."""
    m = machine()
    print(f"machine:  {m['platform']}")
    print(
        f"          CPU {m['cpu']}, {m['cores_usable']} usable core(s) of {m['cores_total']}, "
        f"load average {m['load_average']}"
    )
    print(
        f"          torch threads {m['torch_threads']} ({m['torch_parallel']}; CPU capability "
        f"{m['cpu_capability']})" + (f", CUDA {m['cuda_device']}" if "cuda_device" in m else "")
    )
    text = ", ".join(f"{k} {v}" for k, v in versions().items() if v is not None)
    missing = [k for k, v in versions().items() if v is None]
    print(f"versions: {text}" + (f" (not installed: {', '.join(missing)})" if missing else ""))


def finish() -> None:
    """Print the load average after the run and the wall time (the run's noise context)."""
    elapsed = time.perf_counter() - _START
    print(f"\ndone in {elapsed:.1f} s; load average now {load_average()}")


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """One candidate's measurement: items per second in every round."""

    name: str
    rates: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    calls: int = 1  #: calls per timed sample (chosen so that a sample lasts ``min_seconds``)

    @property
    def median(self) -> float:
        """Median items per second over the rounds."""
        return statistics.median(self.rates)

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-round rates: how noisy the rounds were."""
        return (max(self.rates) - min(self.rates)) / self.median if self.rates else math.nan


def compare(
    candidates: Mapping[str, Callable[[], int]],
    *,
    rounds: int,
    min_seconds: float = 0.5,
    warmup: int = 1,
    verbose: bool = True,
) -> dict[str, Timing]:
    """Time ``candidates`` alternately, ``rounds`` times each; returns a :class:`Timing` each.

    Each candidate is a callable that does one unit of work and returns how many items (images,
    FLOPs...) it processed. After ``warmup`` untimed calls, each candidate gets as many calls per
    timed sample as make the sample last at least ``min_seconds`` (measured on the last warm-up
    call). Round ``r`` runs the candidates in the order rotated by ``r`` (A B C, B C A, C A B,
    ...), so that none is always first or always after the same neighbour.
    """
    names = list(candidates)
    timings = {name: Timing(name) for name in names}
    for name in names:
        elapsed = 0.0
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            candidates[name]()
            elapsed = time.perf_counter() - start
        timings[name].calls = max(1, math.ceil(min_seconds / max(elapsed, 1e-9)))
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            calls = timings[name].calls
            gc.collect()
            start = time.perf_counter()
            items = 0
            for _ in range(calls):
                items += fn()
            elapsed = time.perf_counter() - start
            timings[name].rates.append(items / elapsed)
            timings[name].seconds.append(elapsed)
        if verbose:
            line = ", ".join(f"{n} {timings[n].rates[-1]:.4g}/s" for n in names)
            print(f"  round {r + 1}/{rounds}: {line}", flush=True)
    return timings


def paired_ratio(timings: Mapping[str, Timing], name: str, baseline: str) -> float:
    """Median over the rounds of ``name``'s rate divided by ``baseline``'s in the same round."""
    a, b = timings[name].rates, timings[baseline].rates
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def print_table(
    timings: Mapping[str, Timing],
    *,
    baseline: str | None = None,
    unit: str = "images/s",
    names: list[str] | None = None,
) -> None:
    """One row per candidate: median rate, spread over rounds, ratio to ``baseline``."""
    rows = names if names is not None else list(timings)
    width = max(len(n) for n in rows)
    header = f"  {'candidate':{width}s} {unit:>12s} {'spread':>7s} {'rounds':>6s}"
    if baseline is not None:
        header += f" {'ratio':>7s}"
    print(header)
    for name in rows:
        t = timings[name]
        line = f"  {name:{width}s} {t.median:12.4g} {100 * t.spread:6.1f}% {len(t.rates):6d}"
        if baseline is not None:
            ratio = paired_ratio(timings, name, baseline)
            line += f" {ratio:7.3f}"
        print(line)
    if baseline is not None:
        print(f"  (ratio: median over rounds of the rate / {baseline}'s rate in the same round)")


def verdict(what: str, value: float, floor: float) -> bool:
    """Print ``PASS``/``FAIL`` for a figure that must be at least ``floor``; returns the pass."""
    ok = value >= floor
    print(f"floor:    {what} = {value:.3f}, must be >= {floor}: {'PASS' if ok else 'FAIL'}")
    return ok


# --------------------------------------------------------------------------- models


def load_bench_model(spec: str | None) -> tuple[Any, str]:
    """The model a benchmark runs, in eval mode on the CPU, and a line describing it.

    ``spec``: ``None`` takes the package's registered default model, or when there is none the
    FER2013 recipe's architecture with random weights; ``"fer"`` forces the latter; ``"paper"``
    is the paper's F3R (``AffectFPNConfig.paper()``) with random weights; anything else is
    passed to ``AffectFPN.from_pretrained`` (a registered name, a folder, a Hub repo id).
    """
    from affectfpn import AffectFPN, AffectFPNConfig
    from affectfpn.errors import WeightsError
    from affectfpn.registry import default_model_name

    note = ""
    if spec is None:
        try:
            spec = default_model_name()
        except WeightsError:
            spec = "fer"
            note = "no trained default model is registered: "
    torch.manual_seed(0)
    if spec == "fer":
        from affectfpn.recipes.recipe import load_recipe, model_from_recipe

        model = model_from_recipe(load_recipe(FER_RECIPE)).eval()
        what = f"the FER2013 recipe's architecture ({FER_RECIPE.name}) with random weights"
    elif spec == "paper":
        model = AffectFPN(AffectFPNConfig.paper()).eval()
        what = "the paper's F3R (AffectFPNConfig.paper()) with random weights"
    else:
        model = AffectFPN.from_pretrained(spec, device="cpu")
        what = f"trained model {spec!r}"
    c = model.config
    return model, (
        f"{note}{what}: {c.backbone}, neck {c.neck}, FPN width {c.fpn_width}, input "
        f"{c.input_size[0]}x{c.input_size[1]}, tasks {', '.join(c.tasks)}, "
        f"{model.num_params() / 1e6:.1f} M parameters"
    )


# --------------------------------------------------------------------------- training


class MemoryFaces(torch.utils.data.Dataset[dict[str, Any]]):
    """Training samples (the recipe datasets' dict contract) from uint8 tensors in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from affectfpn.labels import ACTION_UNITS

        self.images = images
        self.labels = labels
        self.num_aus = len(ACTION_UNITS)

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
            "au": torch.zeros(self.num_aus),
            "au_mask": torch.ones(self.num_aus, dtype=torch.bool),
        }


def make_optimizer(model: torch.nn.Module, s: Any) -> torch.optim.Optimizer:
    """The optimiser of TrainSettings ``s`` over all trainable parameters (one group)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


def task_loss(
    out: Any, labels: torch.Tensor, smoothing: float, weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """Plain losses of the model's tasks (targets: the labels, zeros for VA and AUs)."""
    import torch.nn.functional as F

    w = weights or {}
    total = torch.zeros((), device=labels.device)
    if out.expression is not None:
        total = total + w.get("expression", 1.0) * F.cross_entropy(
            out.expression.float(), labels, label_smoothing=smoothing
        )
    if out.va is not None:
        va = out.va.float()
        total = total + w.get("va", 1.0) * F.mse_loss(va, torch.zeros_like(va))
    if out.au is not None:
        au = out.au.float()
        total = total + w.get("au", 1.0) * F.binary_cross_entropy_with_logits(
            au, torch.zeros_like(au)
        )
    return total


def hand_train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch: int,
    steps: int,
    augment: Any,
    generator: torch.Generator,
    settings: Any,
    autocast_dtype: torch.dtype | None = None,
) -> int:
    """A minimal hand-written training loop over uint8 ``images``: returns the images seen.

    Each step: a random batch, float in [0, 1], the recipe's batch augmentation, normalisation,
    channels_last when ``settings.channels_last``, forward (under autocast with
    ``autocast_dtype``), loss, backward, optimiser step.
    """
    from affectfpn.preprocess import normalize

    config = model.config  # type: ignore[union-attr]
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    device = images.device
    order = torch.randperm(images.shape[0], generator=generator).to(device)
    for step in range(steps):
        index = order[step * batch : (step + 1) * batch]
        x = images[index].float().div_(255.0)
        x = augment(x, generator)
        x = normalize(x, config).contiguous(memory_format=memory_format)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            out = model(x)
        loss = task_loss(out, labels[index], settings.label_smoothing, settings.task_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps


def epoch_runner(trainer: Any, after: Callable[[], None] | None = None) -> Callable[[], int]:
    """A ``compare`` candidate: one ``trainer.train_one_epoch`` per call (epochs counted up),
    then ``after`` (e.g. a device synchronisation); returns the samples trained."""
    epoch = [0]

    def run() -> int:
        record = trainer.train_one_epoch(epoch[0])
        epoch[0] += 1
        if after is not None:
            after()
        return int(record["train_samples"])

    return run
