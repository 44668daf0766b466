"""The default path with no network: the embedded model and the embedded YuNet detector."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from affectfpn.errors import WeightsError
from affectfpn.inference import detectors
from affectfpn.inference.detectors import (
    EMBEDDED_YUNET_SHA256,
    YUNET_ENV,
    YuNetDetector,
    embedded_yunet,
    get_detector,
)


def _run(code: str, env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AFFECTFPN_YUNET"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.shared
def test_three_lines_find_five_faces_offline_with_an_empty_cache(
    samples_dir: Path, tmp_path: Path
) -> None:
    """HF_HUB_OFFLINE=1, no AFFECTFPN_YUNET, an empty Hugging Face cache: faces all the same."""
    code = f"""
        from affectfpn import AffectFPN

        model = AffectFPN.from_pretrained()
        result = model.predict({str(samples_dir / "multi_face.jpg")!r})
        print("faces", len(result.faces))
        print("labels", *[face.expression.label for face in result.faces])
    """
    home = tmp_path / "hf"
    done = _run(code, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "faces 5" in done.stdout
    assert not any(home.rglob("*.onnx"))  # nothing was fetched or cached
    # OpenCV 5 warns on each YuNet load that it ignores the compute target: not shown to users
    assert "setPreferableTarget" not in done.stderr
    assert "WARN" not in done.stderr


def test_default_detector_is_the_embedded_yunet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(YUNET_ENV, raising=False)
    path = embedded_yunet()
    assert path.is_file()
    assert path.parent.name == "yunet"
    assert (path.parent / "LICENSE").read_text().startswith("MIT License")
    for spec in ("auto", "yunet"):
        detector = get_detector(spec)
        assert isinstance(detector, YuNetDetector)
        assert detector.model_path == path
    assert YuNetDetector().detect(np.zeros((64, 64, 3), np.uint8)) == []


def test_embedded_yunet_checksum_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(YUNET_ENV, raising=False)
    monkeypatch.setattr(detectors, "_verified_downloads", set())
    monkeypatch.setattr(detectors, "EMBEDDED_YUNET_SHA256", "0" * 64)
    with pytest.raises(WeightsError, match=r"embedded YuNet .* SHA-256 .* reinstall affectfpn"):
        YuNetDetector()
    monkeypatch.setattr(detectors, "EMBEDDED_YUNET_SHA256", EMBEDDED_YUNET_SHA256)
    assert YuNetDetector().model_path == embedded_yunet()


def test_hub_yunet_is_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    fake = tmp_path / "hub.onnx"
    fake.write_bytes(embedded_yunet().read_bytes())

    def download() -> Path:
        calls.append("download")
        return fake

    monkeypatch.delenv(YUNET_ENV, raising=False)
    monkeypatch.setattr(detectors, "download_yunet", download)
    get_detector("auto")
    get_detector("yunet")
    assert calls == []  # the defaults never touch the Hub
    detector = get_detector("yunet-hub")
    assert calls == ["download"]
    assert isinstance(detector, YuNetDetector)
    assert detector.model_path == fake
