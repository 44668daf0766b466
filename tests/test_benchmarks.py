"""Every benchmark script still runs: each once with ``--quick`` (a smoke test, no figures).

Benchmarks are scripts, not tests, and nothing else runs them: without this a refactoring of the
library can break one unnoticed until somebody needs its figures (photos.py once wrapped a
function the Predictor no longer called).
"""

import os
from pathlib import Path

import pytest
from _warm import RUNNER

ROOT = Path(__file__).resolve().parents[1]

#: The scripts and what their quick run must print. fer_speed.py and fer_compare.py need the
#: ``fer`` package or trained runs, and are left out.
SCRIPTS = {
    "predict_files.py": "floor:",
    "photos.py": "faces per photo",
    "video.py": "end to end",
    "model.py": "ratio",
    "onnx_parity.py": "parity:",
    "detector.py": "faces",
    "train.py": "images/s",
    "framing.py": "margin",
    "robustness.py": "photo",
    "gpu.py": "cuda_available",
    "cli_startup.py": "floor:",
    "corpus.py": "job / plain throughput",
}


@pytest.mark.shared
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_runs_quick(script: str, shared_dir: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AFFECTFPN_SHARED": str(shared_dir),
        "AFFECTFPN_RUNS": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    done = RUNNER.run(ROOT / "benchmarks" / script, ["--quick"], cwd=tmp_path, env=env, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert SCRIPTS[script] in output, output[-3000:]
