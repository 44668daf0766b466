"""Calibrated expression probabilities: ECE and reliability bins, the temperature fit, the
temperature stored in the config and applied by predict and evaluate, ``affectfpn calibrate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_data import write_image_folder

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability,
)
from affectfpn.cli import main as cli_main
from affectfpn.errors import ConfigError, InputError
from affectfpn.evaluation import build_eval_dataset, calibrate, evaluate


def _sampled(n: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and labels drawn from softmax(logits / temperature): calibrated at that T."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 7, generator=g) * 3
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=g).squeeze(1)
    return logits, labels


def test_reliability_bins_by_hand() -> None:
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.25, 0.75]])
    labels = np.array([0, 1, 0, 1])
    r = reliability(probs, labels, bins=10)
    assert r.counts.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0, 2]
    assert r.accuracy[9] == pytest.approx(0.5)
    assert r.confidence[9] == pytest.approx(0.95)
    # |0.5-0.95|*2/4 + |1-0.55|/4 + |1-0.75|/4
    assert r.ece == pytest.approx(0.45 * 0.5 + 0.45 * 0.25 + 0.25 * 0.25)
    assert reliability(np.array([[1.0, 0.0]]), np.array([0]), bins=15).counts[-1] == 1


def test_ece_is_small_when_calibrated_and_large_when_overconfident() -> None:
    logits, labels = _sampled(20_000, 1.0)
    assert expected_calibration_error(logits.softmax(1), labels) < 0.015
    assert expected_calibration_error((logits * 3).softmax(1), labels) > 0.1


@pytest.mark.parametrize("true_t", [0.7, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_drew_the_labels(true_t: float) -> None:
    fitted = fit_temperature([_sampled(20_000, true_t, seed=1)])
    assert fitted == pytest.approx(true_t, rel=0.05)


def test_each_set_counts_the_same_whatever_its_size() -> None:
    big, small = _sampled(20_000, 1.0, seed=2), _sampled(2_000, 3.0, seed=3)
    both = fit_temperature([big, small])
    pooled = fit_temperature([(torch.cat([big[0], small[0]]), torch.cat([big[1], small[1]]))])
    assert 1.0 < pooled < both < 3.0  # the small set pulls the equal-weight fit further


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError):
        fit_temperature([])
    with pytest.raises(InputError):
        fit_temperature([(torch.zeros(0, 7), torch.zeros(0, dtype=torch.long))])
    with pytest.raises(InputError):
        reliability(np.zeros((3, 7)), np.zeros(2))
    with pytest.raises(ConfigError, match="expression_temperature"):
        AffectFPNConfig(expression_temperature=0.0)


def _tiny(temperature: float = 1.0) -> AffectFPN:
    torch.manual_seed(0)
    model = AffectFPN(
        AffectFPNConfig(
            fpn_width=8,
            input_size=(32, 32),
            tasks=("expression",),
            expression_temperature=temperature,
        )
    )
    with torch.no_grad():  # confident logits, so that the temperature shows
        model.heads["expression"].weight.mul_(50)
    return model.eval()


def test_predict_applies_the_config_temperature(tmp_path: Path) -> None:
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    plain = _tiny(1.0)
    hot = _tiny(2.0)
    p1 = plain.predict(image, faces="crop").faces[0].expression
    p2 = hot.predict(image, faces="crop").faces[0].expression
    assert p1 is not None
    assert p2 is not None
    assert p1.label == p2.label
    names = list(p1.probabilities)
    logits = torch.log(torch.tensor([p1.probabilities[k] for k in names], dtype=torch.float64))
    expected = (logits / 2).softmax(0).numpy()
    np.testing.assert_allclose([p2.probabilities[k] for k in names], expected, atol=2e-3)
    hot.save_pretrained(tmp_path / "hot")
    again = AffectFPN.from_pretrained(tmp_path / "hot")
    assert again.config.expression_temperature == 2.0
    p3 = again.predict(image, faces="crop").faces[0].expression
    assert p3 is not None
    np.testing.assert_allclose(
        [p3.probabilities[k] for k in names], [p2.probabilities[k] for k in names], atol=1e-3
    )


def test_evaluate_reports_ece_and_writes_a_reliability_diagram(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data", {"happy": 6, "sad": 6}, image_size=32)
    report = evaluate(_tiny(), tmp_path / "data", progress=False, reliability=tmp_path / "r.png")
    expr = report.metrics["expression"]
    assert 0 <= expr["ece"] <= 1
    assert expr["temperature"] == 1.0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hot = evaluate(_tiny(8.0), tmp_path / "data", progress=False)
    assert hot.metrics["expression"]["accuracy"] == expr["accuracy"]
    assert hot.metrics["expression"]["ece"] != expr["ece"]


def test_calibrate_lowers_the_nll_it_minimises(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "a", {"happy": 8, "sad": 8, "neutral": 8}, image_size=32)
    model = _tiny()
    data = {"a": build_eval_dataset(tmp_path / "a", model.config)}
    temperature, report = calibrate(model, data)
    assert temperature != pytest.approx(1.0)
    assert report["a"]["nll_after"] <= report["a"]["nll_before"]


def test_calibrate_command_saves_the_temperature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image_folder(tmp_path / "v", {"happy": 6, "angry": 6}, image_size=32)
    _tiny().save_pretrained(tmp_path / "m")
    code = cli_main(
        [
            "calibrate",
            "--model",
            str(tmp_path / "m"),
            "--val",
            str(tmp_path / "v"),
            "--out",
            str(tmp_path / "cal"),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "cal" / "config.json").read_text())
    assert saved["expression_temperature"] == pytest.approx(out["temperature"], abs=1e-4)
    assert cli_main(["calibrate", "--val", str(tmp_path / "missing"), "--out", "x"]) != 0
    assert "missing" in capsys.readouterr().err
