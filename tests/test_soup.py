"""Tests of affectfpn.recipes.soup: weight averages, BatchNorm statistics, logit offsets, CLI."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.cli import main as cli_main
from affectfpn.errors import ConfigError
from affectfpn.preprocess import normalize
from affectfpn.recipes import soup
from affectfpn.recipes.trainer import CHECKPOINT_FORMAT


def _config(**changes: Any) -> AffectFPNConfig:
    base = {
        "backbone": "resnet18",
        "fpn_width": 16,
        "input_size": (32, 32),
        "tasks": ("expression", "au"),
        "test_time_flip": True,
    }
    return AffectFPNConfig(**{**base, **changes})


def _model(seed: int, **changes: Any) -> AffectFPN:
    torch.manual_seed(seed)
    model = AffectFPN(_config(**changes))
    with torch.no_grad():  # statistics of no one in particular, unlike a fresh model's 0 and 1
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.5, 2)
    return model.eval()


class _Faces(Dataset[dict[str, Any]]):
    """uint8 faces as build_eval_dataset yields them."""

    def __init__(self, count: int, size: int = 32, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = torch.from_numpy(rng.integers(0, 256, (count, 3, size, size), np.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index]}


def test_average_is_the_mean_of_every_floating_tensor() -> None:
    a, b, c = _model(0), _model(1), _model(2)
    mean = soup.average_models([a, b, c])
    weighted = soup.average_models([a, b], weights=[3, 1])
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for key, value in mean.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (sa[key] + sb[key] + sc[key]) / 3)
            torch.testing.assert_close(weighted.state_dict()[key], 0.75 * sa[key] + 0.25 * sb[key])
        else:
            assert torch.equal(value, sa[key])
    assert mean is not a
    assert not mean.training
    # the inputs are left as they were
    torch.testing.assert_close(
        a.state_dict()["heads.expression.weight"], sa["heads.expression.weight"]
    )


def test_average_refuses_other_architectures_and_bad_weights() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        soup.average_models([])
    with pytest.raises(ConfigError, match="fpn_width"):
        soup.average_models([_model(0), _model(1, fpn_width=32)])
    other_names = _model(1, expressions=("a", "b", "c", "d", "e", "f", "g"))
    with pytest.raises(ConfigError, match="expressions"):
        soup.average_models([_model(0), other_names])
    with pytest.raises(ConfigError, match="positive"):
        soup.average_models([_model(0), _model(1)], weights=[1, 0])
    # inference settings may differ: the first model's are kept
    mixed = soup.average_models([_model(0), _model(1, test_time_flip=False)])
    assert mixed.config.test_time_flip is True


def test_batchnorm_statistics_are_the_exact_mean_over_the_faces() -> None:
    model = _model(0)
    faces = _Faces(40)
    seen = soup.recalibrate_batchnorm(model, faces, samples=None, batch_size=8)  # equal batches
    assert seen == 40
    assert not model.training
    assert all(not m.training for m in model.modules())
    # the first BatchNorm's input is the stem convolution's output, over every face and (with
    # test_time_flip) its mirror image: its mean per channel is the running mean
    images = normalize(faces.images, model.config)
    with torch.no_grad():
        stem = model.backbone.stages[0][0](torch.cat([images, images.flip(3)]))
    first = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    torch.testing.assert_close(first.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.1  # restored


def test_batchnorm_samples_are_drawn_and_bad_input_refused() -> None:
    model = _model(0)
    assert soup.recalibrate_batchnorm(model, _Faces(30), samples=12, batch_size=5) == 12
    with pytest.raises(ConfigError, match="empty"):
        soup.recalibrate_batchnorm(model, _Faces(0))
    frozen = AffectFPN(_config(frozen_bn=True))
    with pytest.raises(ConfigError, match="no BatchNorm"):
        soup.recalibrate_batchnorm(frozen, _Faces(4))


def test_logit_offsets_change_only_the_named_expressions() -> None:
    model = _model(0)
    x = normalize(_Faces(6).images, model.config)
    with torch.no_grad():
        before = model(x)
    soup.offset_expression_logits(model, {"fear": 0.5, "Disgust": -1.0})
    with torch.no_grad():
        after = model(x)
    assert before.expression is not None
    assert after.expression is not None
    shift = after.expression - before.expression
    names = list(model.config.expressions)
    expected = torch.zeros(len(names))
    expected[names.index("Fear")] = 0.5
    expected[names.index("Disgust")] = -1.0
    torch.testing.assert_close(shift, expected.expand_as(shift), rtol=0, atol=1e-5)
    assert before.au is not None
    assert after.au is not None
    torch.testing.assert_close(after.au, before.au)
    with pytest.raises(ConfigError, match="unknown expression 'joy'"):
        soup.offset_expression_logits(model, {"joy": 1.0})
    with pytest.raises(ConfigError, match="expression head"):
        soup.offset_expression_logits(_model(0, tasks=("au",)), {"Fear": 1.0})


def _face_folder(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for name in ("happy", "sad"):
        (root / name).mkdir(parents=True)
        for i in range(count // 2):
            pixels = rng.integers(0, 256, (48, 48), np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_command_line_builds_and_saves_the_soup(tmp_path: Path) -> None:
    a, b = _model(0), _model(1)
    a.save_pretrained(tmp_path / "a")
    # b as a Trainer checkpoint: config as JSON text, weights under "model"
    config = json.dumps(b.config.to_dict())
    checkpoint = {"format": CHECKPOINT_FORMAT, "model": b.state_dict(), "config": config}
    torch.save(checkpoint, tmp_path / "last.pt")
    data = _face_folder(tmp_path / "faces")
    code = cli_main(
        [
            "soup",
            str(tmp_path / "a"),
            str(tmp_path / "last.pt"),
            "--out",
            str(tmp_path / "out"),
            "--bn-data",
            str(data),
            "--offset",
            "Fear=0.25",
        ]
    )
    assert code == 0
    result = AffectFPN.from_pretrained(tmp_path / "out")
    expected = soup.average_models([a, b])
    key = "heads.expression.weight"
    torch.testing.assert_close(result.state_dict()[key], expected.state_dict()[key])
    fear = list(result.config.expressions).index("Fear")
    bias = (
        result.state_dict()["heads.expression.bias"]
        - expected.state_dict()["heads.expression.bias"]
    )
    assert abs(float(bias[fear]) - 0.25) < 1e-6
    assert float(bias.abs().sum()) == pytest.approx(0.25, abs=1e-5)
    # the statistics came from the faces, not from either model
    mean_key = next(k for k in result.state_dict() if k.endswith("running_mean"))
    assert not torch.allclose(result.state_dict()[mean_key], expected.state_dict()[mean_key])


def test_command_line_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _model(0).save_pretrained(tmp_path / "a")
    _model(1, fpn_width=32).save_pretrained(tmp_path / "b")
    code = cli_main(
        ["soup", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]
    )
    assert code == 1
    assert "fpn_width" in capsys.readouterr().err
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="checkpoint format None not understood"):
        soup.load_model_or_checkpoint(str(tmp_path / "other.pt"))
    assert (
        cli_main(["soup", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--offset", "Fear"])
        == 2
    )
