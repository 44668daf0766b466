"""Fixtures shared by the whole test suite.

- ``shared_dir``: the read-only ``../shared`` folder (real photos, videos, FER2013, YuNet), taken
  from the environment variable ``AFFECTFPN_SHARED`` (default: ``<repo>/../shared``); tests that
  use it skip with a clear reason when it is absent, and are marked ``@pytest.mark.shared``.
- ``samples_dir`` / ``yunet_path``: paths inside it.
- ``tiny_config``: a small, fast :class:`~affectfpn.AffectFPNConfig` (ResNet-18, width 32, 64 px).
- ``local_hub``: a started in-memory Hugging Face Hub (``tests/hubserver.py``) that
  huggingface_hub is pointed at, with an isolated cache under ``tmp_path``.

Markers (declared in pyproject.toml): ``shared`` (above) and ``slow``, for the few tests that take
about 10 s or more each on a small 2-core machine (the distributed training test, the every-frame
and long-video checks). ``python -m pytest -m "not slow"`` (the README's command and CI's)
leaves them out and stays under ten minutes on the 2-core CI machine (the smoke tests of the
examples and benchmarks fork their scripts from one warm interpreter: tests/_warm.py);
``python -m pytest -m slow`` runs only them, and a plain ``python -m pytest`` runs everything.

Every test starts from ``torch.manual_seed(0)``. The suite runs torch on one thread (override with
the environment variable ``AFFECTFPN_TEST_THREADS``): the test machines are small and shared, and
several busy-waiting OpenMP threads per process made the tiny models here several times slower.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hubserver import LocalHub, hub_env

from affectfpn import AffectFPNConfig

#: Default location of the shared folder: a sibling of the repository root.
DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared"

torch.set_num_threads(int(os.environ.get("AFFECTFPN_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Make every test start from the same random state."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _replay_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-tuning's replay images are cached in the session's temporary folder, never in the
    user's cache (``AFFECTFPN_CACHE``)."""
    monkeypatch.setenv("AFFECTFPN_CACHE", str(tmp_path_factory.getbasetemp() / "affectfpn-cache"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``../shared`` folder (env ``AFFECTFPN_SHARED``); skips the test when it is absent."""
    path = Path(os.environ.get("AFFECTFPN_SHARED", str(DEFAULT_SHARED))).expanduser()
    if not path.is_dir():
        pytest.skip(
            f"../shared not found: set AFFECTFPN_SHARED to the shared data folder (tried {path})"
        )
    return path


@pytest.fixture(scope="session")
def samples_dir(shared_dir: Path) -> Path:
    """``shared/data/samples``: real photos and videos."""
    path = shared_dir / "data" / "samples"
    if not path.is_dir():
        pytest.skip(f"sample photos not found at {path}")
    return path


@pytest.fixture(scope="session")
def yunet_path(shared_dir: Path) -> Path:
    """``shared/models/yunet/face_detection_yunet.onnx``: a local YuNet face detector."""
    path = shared_dir / "models" / "yunet" / "face_detection_yunet.onnx"
    if not path.is_file():
        pytest.skip(f"YuNet model not found at {path}")
    return path


@pytest.fixture
def tiny_config() -> AffectFPNConfig:
    """A small, fast configuration: ResNet-18, FPN width 32, 64x64 input, all three tasks."""
    return AffectFPNConfig(backbone="resnet18", fpn_width=32, input_size=(64, 64))


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """A started local Hub that huggingface_hub talks to, with its cache in ``tmp_path``.

    Offline mode is off; switch it with ``hubserver.set_hf_offline(monkeypatch, True)``.
    """
    yield from hub_env(monkeypatch, tmp_path)
