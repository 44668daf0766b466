"""Damaged weights never become predictions: a saved file altered after saving is refused at
load, naming the file; non-finite weights are refused naming the tensor; a model that outputs
NaN raises InferenceError naming the input instead of reporting a label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from affectfpn import AffectFPN, AffectFPNConfig, InferenceError, WeightsError


def _tiny() -> AffectFPN:
    torch.manual_seed(0)
    return AffectFPN(AffectFPNConfig(fpn_width=8, input_size=(32, 32), tasks=("expression",)))


def _data_start(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[:8], "little")


def test_bytes_changed_inside_the_tensor_data_are_refused(tmp_path: Path) -> None:
    folder = _tiny().save_pretrained(tmp_path / "m")
    AffectFPN.from_pretrained(folder)  # intact: loads
    path = folder / "model.safetensors"
    blob = bytearray(path.read_bytes())
    start = _data_start(bytes(blob))
    # overwrite 10 kB in the middle of the tensor data (not the header) with finite floats
    middle = start + (len(blob) - start) // 2
    blob[middle : middle + 10_240] = np.full(2560, 0.5, np.float32).tobytes()
    path.write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="altered after it was saved"):
        AffectFPN.from_pretrained(folder)


def test_files_without_the_digest_still_load(tmp_path: Path) -> None:
    """Files written by other tools (or older affectfpn) carry no digest: no check, no error."""
    from safetensors.torch import save_file

    model = _tiny()
    folder = model.save_pretrained(tmp_path / "m")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    again = AffectFPN.from_pretrained(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    model = _tiny()
    with torch.no_grad():
        model.heads["expression"].bias[2] = float("nan")
    folder = model.save_pretrained(tmp_path / "m")
    with pytest.raises(WeightsError, match=r"heads\.expression\.bias"):
        AffectFPN.from_pretrained(folder)


def test_a_nan_output_is_an_error_not_a_label() -> None:
    model = _tiny()
    image = np.full((32, 32, 3), 128, np.uint8)
    assert model.predict(image, faces="crop").faces[0].expression is not None
    # a model broken after loading (e.g. by a training step that diverged)
    with torch.no_grad():
        model.heads["expression"].weight.fill_(float("inf"))
        model.heads["expression"].bias.fill_(-float("inf"))
    with pytest.raises(InferenceError, match="NaN or infinite"):
        model.predict(image, faces="crop")
