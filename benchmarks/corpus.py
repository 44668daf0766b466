"""Corpus jobs: the same rows by every road, the job's overhead, Ray's cost, flat memory.

Builds a synthetic corpus from ../shared (photos: FER2013 and lfw-expressions train images,
linked or copied under new names, alternating; videos: copies of the sample videos), then:

1. throughput, side by side, rounds in rotating order: the plain single-process prediction
   (``Predictor.predict_iter`` over the photos, ``analyze_video`` per video, one Parquet table
   at the end: what ``affectfpn predict -o x.parquet`` does) against the corpus job
   (``run_corpus``: parts, ledger, fsync) and a Ray Data pipeline (``corpus_dataset`` +
   ``AffectPredictor`` + ``write_parquet``) on a local Ray of ``--threads`` CPUs, started
   (``ray.init``) and stopped in each of its rounds: the pipeline's time (actor start and model
   load included) and ``ray.init``'s are reported apart and together; floors: job >= 0.95x
   plain, Ray's pipeline >= 0.8x plain; the Ray rows equal the job's;
2. the rows of ``torchrun --nproc-per-node 2`` (timed, in its own processes) and of
   ``--kills`` runs each SIGKILLed at a random moment and resumed, equal as sets to the
   single-process job's rows (floats to 5 decimals);
3. peak memory (max RSS) of the job in a fresh process at each of ``--memory-sizes`` photos.

Run: ``python benchmarks/corpus.py --photos 2000 --memory-sizes 2000,20000``; Ray's floor at the
issue's scale: ``python benchmarks/corpus.py --photos 20000 --skip torchrun,kills,memory``.
The load average is printed with every round: on a shared machine, compare rounds side by side.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, SHARED, finish, load_average, make_parser, setup, verdict

VIDEOS = ("WolfgangLanger_Pexels.mp4", "face_noface.mov", "no_face.mp4")


def build(folder: Path, photos: int, videos: int) -> Path:
    """``photos`` photos and ``videos`` videos in ``folder`` (reused when already there)."""
    marker = folder / f".built-{photos}-{videos}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pools = [
        sorted((SHARED / "data" / "fer2013" / "train").rglob("*.jpg")),
        sorted((SHARED / "data" / "lfw-expressions" / "train").rglob("*.jpg")),
    ]
    for i in range(photos):
        pool = pools[i % 2]
        source = pool[(i // 2) % len(pool)]
        target = folder / f"p{i:06d}.jpg"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    for i in range(videos):
        name = VIDEOS[i % len(VIDEOS)]
        shutil.copyfile(SHARED / "data" / "samples" / name, folder / f"v{i:02d}{Path(name).suffix}")
    marker.touch()
    return folder


def rows_of(out: Path, *, ray: bool = False) -> set[tuple[object, ...]]:
    import math

    import pandas as pd

    from affectfpn.corpus import read_corpus

    if ray:
        table = pd.read_parquet(out)
        table = table[table["error"].isna()].drop(columns="error")
    else:
        table = read_corpus(out)

    def cell(value: object) -> object:
        if value is None or value is pd.NA:
            return None
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, 5)
        return value

    columns = sorted(table.columns)
    return {tuple(cell(v) for v in row) for row in table[columns].astype(object).itertuples(False)}


def plain(corpus: Path, model: Any, options: dict[str, Any], target: Path) -> int:
    """The single-process baseline: predict_iter over the photos, analyze_video per video."""
    import pandas as pd

    from affectfpn.inference.predictor import Predictor
    from affectfpn.inference.results import to_pandas
    from affectfpn.io import atomic_write
    from affectfpn.video import analyze_video

    files = sorted(str(p) for p in corpus.iterdir() if not p.name.startswith("."))
    photos = [f for f in files if f.endswith(".jpg")]
    videos = [f for f in files if not f.endswith(".jpg")]
    predictor = Predictor(model, on_error="skip", progress=False, batch_size=64)
    tables = [to_pandas(list(predictor.predict_iter(photos)))]
    for video in videos:
        tables.append(analyze_video(predictor, video, progress=False, **options).to_pandas())
    table = pd.concat(tables, ignore_index=True)
    atomic_write(target, lambda tmp: table.to_parquet(tmp, index=False))
    return len(photos) + len(videos)


JOB = (
    "import resource, sys, json\n"
    "from affectfpn.corpus import run_corpus\n"
    "s = run_corpus(sys.argv[1], sys.argv[2], model=sys.argv[3], resume=True, progress=False,"
    " every_n=int(sys.argv[4]))\n"
    "print(json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
    " 'seconds': s.seconds, 'processed': s.processed}))\n"
)


def ray_pipeline(corpus: Path, out: Path, args: Any) -> tuple[float, float]:
    """One Ray round: ``ray.init`` on ``--threads`` CPUs, the pipeline, ``ray.shutdown``.

    Returns the seconds of ``ray.init`` and of the pipeline (dataset, actor start and model
    load, prediction, Parquet written). The shape is the one docs/corpus.md recommends on a
    small machine: ``--ray-actors`` actors of ``--ray-actor-cpus`` CPUs, each with
    ``torch_threads=--threads``, reading the files themselves (``--ray-read paths``).
    """
    import ray

    from affectfpn.corpus.ray import AffectPredictor, corpus_dataset

    if args.ray_niceness != "ray":
        # Ray starts its workers at niceness 15 (RAY_worker_niceness); on a shared machine that
        # alone moves the figure (either way), so they get the plain run's priority by default.
        os.environ["RAY_worker_niceness"] = args.ray_niceness  # noqa: SIM112 (Ray's spelling)
    start = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    init_seconds = time.perf_counter() - start
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        start = time.perf_counter()
        corpus_dataset(corpus, read=args.ray_read).map_batches(
            AffectPredictor,
            fn_constructor_kwargs={
                "model": args.model,
                "every_n": args.every_n,
                "torch_threads": args.threads,
            },
            compute=ray.data.ActorPoolStrategy(size=args.ray_actors),
            num_cpus=args.ray_actor_cpus,
            batch_size=args.ray_batch,
        ).write_parquet(str(out))
        return init_seconds, time.perf_counter() - start
    finally:
        ray.shutdown()


#: A fresh process that does what ``plain`` does (imports, model load, prediction, one Parquet
#: file): the plain run as a user starts it, for the end-to-end comparison with Ray.
PLAIN_COLD = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[5])\n"
    "from pathlib import Path\n"
    "from corpus import plain\n"
    "from affectfpn.models import AffectFPN\n"
    "import torch\n"
    "torch.set_num_threads(int(sys.argv[6]))\n"
    "model = AffectFPN.from_pretrained(sys.argv[2]).eval()\n"
    "plain(Path(sys.argv[1]), model, {'every_n': int(sys.argv[3])}, Path(sys.argv[4]))\n"
)

#: A fresh process that runs ``ray_pipeline`` (``import ray``, ``ray.init``, the pipeline).
RAY_COLD = (
    "import sys, argparse\n"
    "sys.path.insert(0, sys.argv[3])\n"
    "from pathlib import Path\n"
    "from corpus import ray_pipeline\n"
    "args = argparse.Namespace(**__import__('json').loads(sys.argv[4]))\n"
    "ray_pipeline(Path(sys.argv[1]), Path(sys.argv[2]), args)\n"
)


def python(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--every-n", type=int, default=8, help="video frames: every n-th")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-sizes", default="2000,20000")
    parser.add_argument("--model", default="fer2013-fast-resnet18half")
    parser.add_argument("--work", type=Path, default=Path("/tmp/affectfpn-corpus-bench"))
    parser.add_argument("--skip", default="", help="comma-separated: job,torchrun,ray,kills,memory")
    parser.add_argument("--ray-read", default="paths", choices=("paths", "bytes"))
    parser.add_argument("--ray-actors", type=int, default=1)
    parser.add_argument("--ray-actor-cpus", type=float, default=1.0)
    parser.add_argument("--ray-batch", type=int, default=1024)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also time plain and Ray end to end, each in a fresh process (imports, model load)",
    )
    parser.add_argument(
        "--ray-niceness",
        default="0",
        help="Ray workers' niceness: default 0, this process's; 'ray': Ray's own default (15)",
    )
    args = parser.parse_args()
    if args.quick:
        args.photos, args.videos, args.kills, args.rounds = 40, 1, 1, 1
        args.memory_sizes, args.every_n = "20,40", 50
        args.skip = args.skip or "torchrun,ray"  # tests/test_corpus*.py run both
    setup(args)
    skip = set(filter(None, args.skip.split(",")))
    from affectfpn.corpus import run_corpus
    from affectfpn.models import AffectFPN

    work = args.work
    corpus = build(work / f"corpus-{args.photos}", args.photos, args.videos)
    print(f"corpus:   {args.photos} photos + {args.videos} videos (every {args.every_n}th frame)")
    print(f"model:    {args.model}")
    model = AffectFPN.from_pretrained(args.model).eval()
    video_options = {"every_n": args.every_n}
    inputs = args.photos + args.videos

    # 1. throughput, alternating order, after one pass that brings the files into the page cache
    for path in corpus.iterdir():
        path.read_bytes()
    names = ["plain"] + [name for name in ("job", "ray") if name not in skip]
    if args.cold and "ray" not in skip:
        names += ["plain-cold", "ray-cold"]
    times: dict[str, list[float]] = {name: [] for name in names}
    ray_init: list[float] = []
    reference = work / "job-ref"
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "job":
                shutil.rmtree(reference, ignore_errors=True)
            start = time.perf_counter()
            note = ""
            if name == "plain":
                plain(corpus, model, video_options, work / "out-plain.parquet")
            elif name == "plain-cold":
                done = python(
                    "-c", PLAIN_COLD, str(corpus), args.model, str(args.every_n),
                    str(work / "out-plain-cold.parquet"), str(ROOT / "benchmarks"),
                    str(args.threads),
                )  # fmt: skip
                if done.returncode:
                    raise SystemExit("plain-cold failed:\n" + done.stderr[-2000:])
            elif name == "ray-cold":
                shutil.rmtree(work / "out-ray-cold", ignore_errors=True)
                keys = ("threads", "model", "every_n", "ray_read", "ray_actors", "ray_actor_cpus",
                        "ray_batch", "ray_niceness")  # fmt: skip
                done = python(
                    "-c", RAY_COLD, str(corpus), str(work / "out-ray-cold"),
                    str(ROOT / "benchmarks"), json.dumps({k: getattr(args, k) for k in keys}),
                )  # fmt: skip
                if done.returncode:
                    raise SystemExit("ray-cold failed:\n" + done.stderr[-2000:])
            elif name == "job":
                run_corpus(corpus, reference, model=model, progress=False, **video_options)
            else:
                shutil.rmtree(work / "out-ray", ignore_errors=True)
                init_seconds, seconds = ray_pipeline(corpus, work / "out-ray", args)
                ray_init.append(init_seconds)
                total = seconds + init_seconds
                note = f" (with ray.init's {init_seconds:.1f} s: {inputs / total:.1f})"
            if name != "ray":
                seconds = time.perf_counter() - start
            times[name].append(seconds)
            print(f"  round {round_ + 1} {name:5s} {inputs / seconds:7.1f} inputs/s{note}; "
                  f"load average {load_average()}", flush=True)  # fmt: skip

    def ratio(name: str, extra: list[float] | None = None) -> float:
        """The median of the per-round ratios of ``name``'s rate to plain's."""
        added = extra or [0.0] * args.rounds
        pairs = zip(times["plain"], times[name], added, strict=True)
        return statistics.median(p / (t + e) for p, t, e in pairs)

    plain_rate = inputs / statistics.median(times["plain"])
    print(f"plain:    {plain_rate:.1f} inputs/s (median of {args.rounds})")
    expected: set[tuple[object, ...]] | None = None
    if "job" not in skip:
        print(f"job:      {inputs / statistics.median(times['job']):.1f} inputs/s")
        verdict("job / plain throughput (median of the rounds' ratios)", ratio("job"), 0.95)
        expected = rows_of(reference)
        print(f"rows:     {len(expected)} in the single-process job")
    if "ray" not in skip:
        ray_rate = inputs / statistics.median(times["ray"])
        with_init = [t + i for t, i in zip(times["ray"], ray_init, strict=True)]
        print(f"ray:      {ray_rate:.1f} inputs/s in the pipeline ({args.ray_actors} actor(s) of "
              f"{args.ray_actor_cpus:g} CPU, torch_threads={args.threads}, read={args.ray_read}, "
              f"batches of {args.ray_batch}, worker niceness {args.ray_niceness}); "
              f"ray.init {statistics.median(ray_init):.1f} s; "
              f"{inputs / statistics.median(with_init):.1f} inputs/s with it")  # fmt: skip
        verdict("ray pipeline / plain throughput", ratio("ray"), 0.8)
        print(f"ray:      with ray.init, {ratio('ray', ray_init):.3f}x plain")
        if args.cold:
            # End to end, both as a user starts them: a fresh process each, imports, model load
            # (Ray: import ray, ray.init, the actor's start) and the work, side by side.
            pairs = zip(times["plain-cold"], times["ray-cold"], strict=True)
            cold = statistics.median(p / r for p, r in pairs)
            plain_cold = inputs / statistics.median(times["plain-cold"])
            ray_cold = inputs / statistics.median(times["ray-cold"])
            print(f"cold:     plain in a fresh process {plain_cold:.1f} inputs/s, Ray in a fresh "
                  f"process {ray_cold:.1f}: {cold:.3f}x")  # fmt: skip
        if expected is not None:
            same = rows_of(work / "out-ray", ray=True) == expected
            print(f"ray:      rows equal to the job's: {same}")
        else:
            print("ray:      rows not checked (the job was skipped)")

    # 2. torchrun, kills
    if "torchrun" not in skip:
        out = work / "out-torchrun"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        done = python(
            "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "affectfpn", "corpus",
            str(corpus), "--out", str(out), "-m", args.model, "--device", "cpu", "-q",
            "--every-n", str(args.every_n),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        same = rows_of(out) == expected
        print(f"torchrun: 2 processes, {inputs / seconds:.1f} inputs/s with start-up "
              f"(rc {done.returncode}); rows equal: {same}")  # fmt: skip
    if "kills" not in skip:
        rng = random.Random(0)
        job_seconds = statistics.median(times["job"])
        for k in range(args.kills):
            out = work / f"out-kill{k}"
            shutil.rmtree(out, ignore_errors=True)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            argv = [str(corpus), str(out), args.model, str(args.every_n)]
            process = subprocess.Popen(
                [sys.executable, "-c", JOB, *argv], env=env, stdout=subprocess.DEVNULL
            )
            delay = rng.uniform(3.0, 3.0 + job_seconds)  # start-up is about 3 s
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            done = python("-c", JOB, *argv)
            result = json.loads(done.stdout.splitlines()[-1])
            same = rows_of(out) == expected
            print(f"kill {k + 1}:   SIGKILL after {delay:.1f} s, resume did "
                  f"{result['processed']} of {inputs} inputs; rows equal: {same}")  # fmt: skip

    # 3. memory
    if "memory" not in skip:
        for size in [int(s) for s in args.memory_sizes.split(",")]:
            folder = build(work / f"corpus-{size}-photos", size, 0)
            out = work / f"out-memory-{size}"
            shutil.rmtree(out, ignore_errors=True)
            done = python("-c", JOB, str(folder), str(out), args.model, str(args.every_n))
            result = json.loads(done.stdout.splitlines()[-1])
            print(f"memory:   {size} photos: peak RSS {result['rss_mb']:.0f} MB, "
                  f"{size / result['seconds']:.1f} photos/s")  # fmt: skip
    finish()


if __name__ == "__main__":
    main()
