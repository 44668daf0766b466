"""Benchmark video prediction: speed per stage, and peak memory against video length.

Run from the repository root::

    python benchmarks/video.py [--model NAME_OR_PATH] [--video PATH] [--repeat 10] [--every-n 1]

It reports, for ``affectfpn.video.predict_video`` on one video:

1. frames per second, broken down into decode (OpenCV grab + retrieve), detect (+ align) and
   model (the forward pass), measured in one sequential pass (no loader threads, so the stages
   do not overlap and add up to the total), plus the end-to-end rate with the default loader
   threads (stages overlap);
2. peak memory while streaming the video once and ``--repeat`` times (default 10) in a row:
   the Python heap (``tracemalloc``) and the resident set size (``VmHWM`` from
   ``/proc/self/status``, reset before the run through ``/proc/self/clear_refs``; psutil is not
   needed). The repeated video is the same file read ``--repeat`` times through a looping
   capture, without storing anything, with timestamps continuing across loops. Each memory run
   is a fresh process. Streaming passes when the peak RSS of the long run is within 10% of the
   short one.

``--model``: a registered name, a folder or a Hub repo id; default: the package's default
model, or, when none is registered, a tiny random-weight model (ResNet-18, FPN width 16,
64 x 64 input) whose speed is not that of a real model (the output says so). ``tiny`` forces
the tiny model.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

import affectfpn
from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.errors import WeightsError
from affectfpn.inference import Predictor, get_detector
from affectfpn.registry import default_model_name
from affectfpn.video import FramePrediction, predict_video

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AFFECTFPN_SHARED", str(ROOT.parent / "shared")))
DEFAULT_VIDEO = SHARED / "data" / "samples" / "WolfgangLanger_Pexels.mp4"
DEFAULT_YUNET = SHARED / "models" / "yunet" / "face_detection_yunet.onnx"
TINY = "tiny"


# --------------------------------------------------------------------------- helpers


class LoopedCapture:
    """A ``cv2.VideoCapture`` look-alike that plays a file ``repeat`` times and times decoding.

    Nothing is stored: at the end of the file it is reopened. Timestamps and the frame count
    continue across loops, as for one long video.
    """

    def __init__(self, path: Path, repeat: int = 1) -> None:
        self.path = str(path)
        self.repeat = repeat
        self.loop = 0
        self.capture = cv2.VideoCapture(self.path)
        self.decode_s = 0.0
        self._offset_ms = 0.0
        self._last_ms = 0.0
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self._period_ms = 1000.0 / fps if fps > 0 else 40.0

    def isOpened(self) -> bool:  # OpenCV's name
        return bool(self.capture.isOpened())

    def grab(self) -> bool:
        start = time.perf_counter()
        ok = bool(self.capture.grab())
        if not ok and self.loop + 1 < self.repeat:
            self.capture.release()
            self.capture = cv2.VideoCapture(self.path)
            self.loop += 1
            self._offset_ms = self._last_ms + self._period_ms
            ok = bool(self.capture.grab())
        self.decode_s += time.perf_counter() - start
        return ok

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        start = time.perf_counter()
        ok, image = self.capture.retrieve()
        self.decode_s += time.perf_counter() - start
        return ok, image

    def get(self, prop: int) -> float:
        value = float(self.capture.get(prop))
        if prop == cv2.CAP_PROP_POS_MSEC:
            self._last_ms = value + self._offset_ms
            return self._last_ms
        if prop == cv2.CAP_PROP_FRAME_COUNT and value > 0:
            return value * self.repeat
        return value

    def release(self) -> None:
        self.capture.release()


class TimedDetector:
    """Wraps a face detector and adds up the time spent in ``detect``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def detect(self, rgb: np.ndarray) -> Any:
        start = time.perf_counter()
        try:
            return self.inner.detect(rgb)
        finally:
            self.seconds += time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_model(model: torch.nn.Module, device: torch.device) -> dict[str, float]:
    """Forward hooks that add up the model's forward time."""
    state = {"seconds": 0.0, "start": 0.0}

    def before(*_: object) -> None:
        _sync(device)
        state["start"] = time.perf_counter()

    def after(*_: object) -> None:
        _sync(device)
        state["seconds"] += time.perf_counter() - state["start"]

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after)
    return state


def _time_align() -> dict[str, float]:
    """Time face alignment by wrapping the predictor module's ``align_face`` (benchmark only)."""
    import affectfpn.inference.predictor as predictor_module

    state = {"seconds": 0.0}
    inner = getattr(predictor_module, "align_face", None)
    if inner is None:
        return state

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            state["seconds"] += time.perf_counter() - start

    predictor_module.align_face = timed
    return state


def load_model(name: str | None, device: str) -> tuple[AffectFPN, str]:
    """The model to benchmark and a line describing it."""
    if name is None:
        try:
            name = default_model_name()
        except WeightsError:
            name = TINY
            note = "no trained default model is registered: "
        else:
            note = ""
    else:
        note = ""
    if name == TINY:
        torch.manual_seed(0)
        config = AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64))
        model = AffectFPN(config).eval().to(device)
        return model, (
            f"{note}tiny random-weight model (ResNet-18, FPN width 16, 64x64 input); its speed "
            "is not that of a trained model"
        )
    model = AffectFPN.from_pretrained(name, device=device)
    config = model.config
    return model, (
        f"{name} ({config.backbone}, FPN width {config.fpn_width}, input {config.input_size})"
    )


def _detector_arg(value: str | None) -> str:
    if value is not None:
        return value
    return str(DEFAULT_YUNET) if DEFAULT_YUNET.is_file() else "auto"


def _memory_status() -> dict[str, int]:
    """VmRSS and VmHWM in bytes (Linux), else the maximum RSS from ``resource``."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024
        out = {"VmRSS": peak * scale, "VmHWM": peak * scale}
    return out


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


# --------------------------------------------------------------------------- measurements


def speed(args: argparse.Namespace) -> None:
    """The per-stage breakdown (sequential) and the pipelined end-to-end rate."""
    model, description = load_model(args.model, args.device)
    device = next(model.parameters()).device
    print(f"model:    {description}")
    print(f"video:    {args.video}")
    probe = cv2.VideoCapture(str(args.video))
    print(
        f"          {int(probe.get(cv2.CAP_PROP_FRAME_WIDTH))}x"
        f"{int(probe.get(cv2.CAP_PROP_FRAME_HEIGHT))}, "
        f"{probe.get(cv2.CAP_PROP_FPS):.2f} fps, {int(probe.get(cv2.CAP_PROP_FRAME_COUNT))} frames "
        f"declared; every_n={args.every_n}, batch_size={args.batch_size}"
    )
    probe.release()

    detector = TimedDetector(get_detector(_detector_arg(args.detector)))
    print(f"detector: {type(detector.inner).__name__}")
    model_time = _time_model(model, device)
    align_time = _time_align()
    predictor = Predictor(
        model, detector=detector, batch_size=args.batch_size, num_workers=0, progress=False
    )
    # Warm-up (first forward passes, detector resize) outside the measurement.
    for _ in predict_video(predictor, LoopedCapture(args.video), end=min(8, args.batch_size)):
        pass
    detector.seconds = model_time["seconds"] = align_time["seconds"] = 0.0

    capture = LoopedCapture(args.video)
    start = time.perf_counter()
    frames = faces = 0
    for frame in predict_video(predictor, capture, every_n=args.every_n):
        frames += 1
        faces += len(frame)
    total = time.perf_counter() - start
    capture.release()
    stages = [
        ("decode (grab+retrieve)", capture.decode_s),
        ("detect", detector.seconds),
        ("align", align_time["seconds"]),
        ("model (forward)", model_time["seconds"]),
    ]
    other = total - sum(seconds for _, seconds in stages)
    print(
        f"\nsequential pass (num_workers=0): {frames} frames processed "
        f"({capture.loop + 1} loop, {faces} faces), {total:.2f} s, {frames / total:.1f} fps"
    )
    print(f"  {'stage':32s} {'seconds':>8s} {'ms/frame':>9s} {'fps':>9s}")
    for name, seconds in [
        *stages,
        ("detect + align", detector.seconds + align_time["seconds"]),
        ("other (colour, tracking, results)", other),
        ("total", total),
    ]:
        rate = frames / seconds if seconds > 0 else float("inf")
        print(f"  {name:32s} {seconds:8.2f} {1000 * seconds / frames:9.2f} {rate:9.1f}")
    if args.every_n > 1:
        print(f"  (decode covers every frame read, {args.every_n}x the frames processed)")

    pipelined = Predictor(model, detector=detector.inner, batch_size=args.batch_size)
    start = time.perf_counter()
    count = sum(1 for _ in predict_video(pipelined, args.video, every_n=args.every_n))
    elapsed = time.perf_counter() - start
    print(
        f"\nend to end with {pipelined.num_workers} loader thread(s): {count} frames, "
        f"{elapsed:.2f} s, {count / elapsed:.1f} fps"
    )


def memory_child(args: argparse.Namespace) -> None:
    """One memory measurement, in its own process; prints one JSON line."""
    model, _ = load_model(args.model, args.device)
    predictor = Predictor(model, detector=_detector_arg(args.detector), batch_size=args.batch_size)
    for _ in predict_video(predictor, LoopedCapture(args.video), end=min(8, args.batch_size)):
        pass
    baseline = _memory_status()
    reset = _reset_peak_rss()
    tracemalloc.start()
    start = time.perf_counter()
    capture = LoopedCapture(args.video, repeat=args.child_repeat)
    frames = 0
    last: FramePrediction | None = None
    for frame in predict_video(predictor, capture, every_n=args.every_n):
        frames += 1
        last = frame
    elapsed = time.perf_counter() - start
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    after = _memory_status()
    print(
        json.dumps(
            {
                "repeat": args.child_repeat,
                "frames": frames,
                "frames_read": None if last is None else last.index + 1,
                "seconds": elapsed,
                "heap_peak": heap_peak,
                "rss_baseline": baseline["VmRSS"],
                "rss_peak": after["VmHWM"],
                "peak_reset": reset,
            }
        )
    )


def memory(args: argparse.Namespace) -> None:
    """Run the short and the long memory measurement in fresh processes, then compare."""
    results = []
    for repeat in (1, args.repeat):
        command = [sys.executable, __file__, "--child-repeat", str(repeat)]
        for flag, value in (
            ("--model", args.model),
            ("--video", str(args.video)),
            ("--detector", args.detector),
            ("--device", args.device),
            ("--every-n", str(args.every_n)),
            ("--batch-size", str(args.batch_size)),
            ("--threads", str(torch.get_num_threads())),
        ):
            if value is not None:
                command += [flag, value]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"memory run x{repeat} failed:\n{done.stderr[-4000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    short, long = results
    print("\npeak memory while streaming (fresh process each; tracemalloc on, so slower):")
    print(
        f"  {'run':>6s} {'frames':>7s} {'read':>6s} {'seconds':>8s} {'heap peak':>13s} "
        f"{'RSS before':>13s} {'RSS peak':>13s} {'RSS growth':>13s}"
    )
    for r in results:
        print(
            f"  {'x' + str(r['repeat']):>6s} {r['frames']:7d} {r['frames_read'] or 0:6d} "
            f"{r['seconds']:8.1f} {_mib(r['heap_peak']):>13s} {_mib(r['rss_baseline']):>13s} "
            f"{_mib(r['rss_peak']):>13s} {_mib(r['rss_peak'] - r['rss_baseline']):>13s}"
        )
    rss_ratio = long["rss_peak"] / short["rss_peak"]
    heap_ratio = long["heap_peak"] / short["heap_peak"]
    growth_short = max(short["rss_peak"] - short["rss_baseline"], 1)
    growth_long = long["rss_peak"] - long["rss_baseline"]
    print(f"  ratio x{args.repeat} / x1: RSS peak {rss_ratio:.3f}, heap peak {heap_ratio:.3f}")
    print(
        f"  RSS growth over the baseline: {_mib(growth_short).strip()} -> "
        f"{_mib(growth_long).strip()} ({growth_long / growth_short:.2f}x)"
    )
    if not short["peak_reset"]:
        print("  (VmHWM could not be reset: peaks include loading the model, in both runs)")
    verdict = "PASS" if rss_ratio <= 1.10 else "FAIL"
    print(f"  streaming: {verdict} (peak RSS within 10% for a {args.repeat}x longer video)")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def describe_machine() -> None:
    cores = _usable_cores()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    print(f"machine:  {platform.platform()}, {cpu}")
    print(
        f"          {cores} usable core(s) of {os.cpu_count()}, load average {load}, "
        f"torch threads {torch.get_num_threads()}"
        + (f", CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(
        f"versions: affectfpn {affectfpn.__version__}, torch {torch.__version__}, "
        f"opencv {cv2.__version__}, numpy {np.__version__}, python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name, folder or Hub repo id; 'tiny': random")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video file")
    parser.add_argument("--detector", help="'yunet', 'haar', or a YuNet .onnx path")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--repeat", type=int, default=10, help="length of the long memory run")
    parser.add_argument("--every-n", type=int, default=1, help="process every n-th frame")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: usable cores)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="only the speed part")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every 8th frame, no memory run: a smoke test of the script, not a measurement",
    )
    parser.add_argument("--child-repeat", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.every_n, args.skip_memory = max(args.every_n, 8), True
        print("QUICK RUN: every 8th frame, no memory run; the figures are NOT representative")
    # More torch threads than usable cores make OpenMP threads spin against each other.
    torch.set_num_threads(args.threads or _usable_cores())
    if not args.video.is_file():
        parser.error(f"no video at {args.video}; pass --video (or set AFFECTFPN_SHARED)")
    if args.child_repeat is not None:
        memory_child(args)
        return
    describe_machine()
    speed(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
