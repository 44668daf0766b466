"""The per-face expression temperature (issue #25): its fit, the calibrator stored with the
weights, its reach (predict, evaluate, ONNX), its absence from training, and its bad inputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_data import write_image_folder

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.calibration import (
    AdaptiveTemperature,
    expected_calibration_error,
    fit_adaptive_temperature,
    fit_temperature,
)
from affectfpn.cli import main as cli_main
from affectfpn.errors import ConfigError, InputError, WeightsError
from affectfpn.evaluation import build_eval_dataset, calibrate, evaluate

SIZE = 32
DIM = 16


def _two_domains(n: int, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]:
    """Two sets whose labels were drawn at temperatures 0.5 and 2.0: one is overconfident where
    the other is underconfident, and feature 0 tells them apart (the other features are noise).
    """
    g = torch.Generator().manual_seed(seed)
    sets = []
    for domain, temperature in ((0, 0.5), (1, 2.0)):
        z = torch.randn(n, DIM, generator=g)
        z[:, 0] = domain * 2.0 - 1.0 + 0.1 * torch.randn(n, generator=g)
        logits = torch.randn(n, 7, generator=g) * 2.5
        labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=g).squeeze(1)
        sets.append((z, logits, labels))
    return tuple(sets)


def _ece(logits: torch.Tensor, labels: torch.Tensor, t: float | torch.Tensor) -> float:
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, 1)
    return expected_calibration_error((logits.double() / t).softmax(1), labels)


def test_a_per_face_temperature_calibrates_two_domains_one_temperature_cannot() -> None:
    train = _two_domains(4000, seed=0)
    test = _two_domains(4000, seed=1)
    single = fit_temperature([(x, y) for _, x, y in train])
    worst_single = max(_ece(x, y, single) for _, x, y in test)
    fit = fit_adaptive_temperature(list(train))
    worst_adaptive = max(_ece(x, y, fit(z)) for z, x, y in test)
    assert worst_single > 0.08, worst_single
    assert worst_adaptive < 0.03, worst_adaptive
    # each domain gets about its own temperature; the clamp spans what the fit gave its faces
    t0, t1 = (float(fit(z).median()) for z, _, _ in test)
    assert t0 == pytest.approx(0.5, rel=0.15)
    assert t1 == pytest.approx(2.0, rel=0.15)
    low, high = fit.temperature_range
    assert low < t0 < t1 < high
    assert fit.single_temperature == pytest.approx(single, rel=1e-6)


def test_each_set_weighs_the_same_whatever_its_size() -> None:
    (za, xa, ya), (zb, xb, yb) = _two_domains(3000, seed=2)
    # features that do not tell the sets apart: the fit must compromise between them
    g = torch.Generator().manual_seed(3)
    za[:, 0], zb[:, 0] = torch.randn(3000, generator=g), torch.randn(3000, generator=g)
    few = (zb[:300], xb[:300], yb[:300])
    fit = fit_adaptive_temperature([(za, xa, ya), few])
    pooled = fit_adaptive_temperature(
        [(torch.cat([za, few[0]]), torch.cat([xa, few[1]]), torch.cat([ya, few[2]]))]
    )
    # a pooled fit follows the large set (drawn at T = 0.5); equal weights meet in between
    assert float(pooled(za).median()) < 0.75
    assert float(fit(za).median()) > 1.0
    assert fit.single_temperature == pytest.approx(
        fit_temperature([(xa, ya), (few[1], few[2])]), rel=1e-6
    )


def _tiny(*, flip: bool = False, tasks: tuple[str, ...] = ("expression",)) -> AffectFPN:
    torch.manual_seed(0)
    model = AffectFPN(
        AffectFPNConfig(fpn_width=8, input_size=(SIZE, SIZE), tasks=tasks, test_time_flip=flip)
    )
    with torch.no_grad():  # confident logits, so that the temperature shows
        model.heads["expression"].weight.mul_(50)
    return model.eval()


def _spread_fit(model: AffectFPN, seed: int = 0) -> AdaptiveTemperature:
    """A calibrator whose temperatures differ much from face to face (log T about N(0, 0.8)
    on random faces, clamped to 0.3 to 3)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(model.config.feature_dim, generator=g, dtype=torch.float64)
    with torch.inference_mode():
        _, z = model.forward_features(_normalised(_faces(32, seed=99), model.config))
    s = z.double() @ weight
    scale = 0.8 / float(s.std())
    return AdaptiveTemperature(weight * scale, -float(s.mean()) * scale, (0.3, 3.0), 1.25)


def _calibrated(flip: bool = False) -> AffectFPN:
    model = _tiny(flip=flip)
    model.set_calibrator(_spread_fit(model))
    return model


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _normalised(faces: np.ndarray, config: AffectFPNConfig) -> torch.Tensor:
    from affectfpn.preprocess import normalize

    return normalize(torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous(), config)


def test_the_temperature_is_an_extra_output_and_the_logits_stay_raw() -> None:
    plain = _tiny()
    model = _calibrated()
    x = _normalised(_faces(6), model.config)
    with torch.inference_mode():
        out, features = model.forward_features(x)
        raw = plain(x)
    assert raw.expression_temperature is None
    assert out.expression is not None
    assert raw.expression is not None
    torch.testing.assert_close(out.expression, raw.expression)
    t = out.expression_temperature
    assert t is not None
    assert t.shape == (6, 1)
    fit = _spread_fit(model)
    torch.testing.assert_close(t.reshape(-1).double(), fit(features), rtol=1e-5, atol=1e-6)
    assert float(t.max() / t.min()) > 1.5, "the faces get different temperatures"
    # a positive temperature per face never changes the winning expression
    probs = (out.expression / t).softmax(1)
    assert torch.equal(probs.argmax(1), out.expression.argmax(1))


def test_under_test_time_flip_the_temperature_reads_the_mean_of_both_features() -> None:
    model = _calibrated(flip=True)
    x = _normalised(_faces(4), model.config)
    with torch.inference_mode():
        out = model(x)
        mean = (model.features(x) + model.features(x.flip(3))) / 2
        single = model.features(x)
    fit = _spread_fit(model)
    assert out.expression_temperature is not None
    got = out.expression_temperature.reshape(-1).double()
    torch.testing.assert_close(got, fit(mean), rtol=1e-5, atol=1e-6)
    assert (got - fit(single)).abs().max() > 1e-3, "not the unflipped face's alone"


def test_the_temperature_is_clamped_to_the_stored_range() -> None:
    model = _tiny()
    weight = torch.ones(model.config.feature_dim, dtype=torch.float64) * 100
    model.set_calibrator(AdaptiveTemperature(weight, 0.0, (0.8, 1.25), 1.0))
    x = _normalised(_faces(8), model.config)
    with torch.inference_mode():
        t = model(x).expression_temperature
    assert t is not None
    assert float(t.min()) >= 0.8 - 1e-6
    assert float(t.max()) <= 1.25 + 1e-6
    assert float(t.max()) == pytest.approx(1.25, rel=1e-5)


def test_save_and_load_keep_the_calibrator(tmp_path: Path) -> None:
    model = _calibrated()
    model.save_pretrained(tmp_path / "m", dtype=torch.float16)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["adaptive_temperature"] is True
    assert config["adaptive_temperature_range"] == [0.3, 3.0]
    assert config["expression_temperature"] == 1.25
    again = AffectFPN.from_pretrained(tmp_path / "m")
    assert again.calibrator is not None
    assert not any(p.requires_grad for p in again.calibrator.parameters())
    x = _normalised(_faces(5), model.config)
    with torch.inference_mode():
        a, b = model(x).expression_temperature, again(x).expression_temperature
    assert a is not None
    assert b is not None
    torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4)  # float16 storage
    # weights with a calibrator do not load into a config without one (strict loading)
    config["adaptive_temperature"] = False
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="calibrator"):
        AffectFPN.from_pretrained(tmp_path / "m")


def test_predict_applies_each_face_its_own_temperature() -> None:
    model = _calibrated()
    faces = _faces(5, seed=3)
    predictions = model.predict(list(faces), faces="crop")
    assert isinstance(predictions, list)
    x = _normalised(faces, model.config)
    with torch.inference_mode():
        out = model(x)
    assert out.expression is not None
    assert out.expression_temperature is not None
    expected = (out.expression / out.expression_temperature).softmax(1).numpy()
    names = model.config.expressions
    got = np.array(
        [[p.faces[0].expression.probabilities[k] for k in names] for p in predictions]  # type: ignore[union-attr]
    )
    np.testing.assert_allclose(got, expected, atol=2e-4)
    # not the config's single temperature
    single = (out.expression / model.config.expression_temperature).softmax(1).numpy()
    assert np.abs(got - single).max() > 0.01


def test_evaluate_measures_the_ece_at_the_per_face_temperatures(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data", {"happy": 8, "sad": 8, "angry": 8}, image_size=SIZE)
    model = _calibrated()
    report = evaluate(model, tmp_path / "data", progress=False)
    expr = report.metrics["expression"]
    assert expr["temperature_per_face"] is True
    data = build_eval_dataset(tmp_path / "data", model.config)
    from affectfpn.evaluation import calibration_data

    d = calibration_data(model, data)
    assert expr["ece"] == pytest.approx(_ece(d.logits, d.labels, d.temperatures), abs=1e-6)
    assert expr["ece"] != pytest.approx(_ece(d.logits, d.labels, 1.25), abs=1e-6)
    assert expr["temperature"] == pytest.approx(float(d.temperatures.mean()), rel=1e-5)


def test_calibrate_adaptive_fits_and_the_command_saves_the_calibrator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image_folder(tmp_path / "a", {"happy": 8, "sad": 8, "neutral": 8}, image_size=SIZE)
    write_image_folder(tmp_path / "b", {"happy": 6, "angry": 6}, image_size=SIZE)
    model = _tiny(flip=True)
    data = {n: build_eval_dataset(tmp_path / n, model.config) for n in ("a", "b")}
    fit, report = calibrate(model, data, adaptive=True)
    assert isinstance(fit, AdaptiveTemperature)
    for r in report.values():
        assert r["nll_after"] < r["nll_before"]
        assert {"ece_single", "nll_single"} <= set(r)
    model.save_pretrained(tmp_path / "m")
    code = cli_main(
        [
            "calibrate",
            "--model",
            str(tmp_path / "m"),
            "--adaptive",
            "--json",
            "--val",
            str(tmp_path / "a"),
            "--val",
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "cal"),
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adaptive"] is True
    saved = AffectFPN.from_pretrained(tmp_path / "cal")
    assert saved.calibrator is not None
    assert saved.config.adaptive_temperature_range == pytest.approx(tuple(out["range"]))
    assert saved.config.expression_temperature == pytest.approx(out["temperature"], abs=1e-4)
    # calibrating it again without --adaptive gives a model with one temperature only
    assert (
        cli_main(
            [
                "calibrate",
                "--model",
                str(tmp_path / "cal"),
                "--val",
                str(tmp_path / "a"),
                "--out",
                str(tmp_path / "single"),
            ]
        )
        == 0
    )
    assert AffectFPN.from_pretrained(tmp_path / "single").calibrator is None


def test_onnx_export_carries_the_per_face_temperature(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from affectfpn.export import TEMPERATURE_OUTPUT, OnnxRunner, export_onnx

    model = _calibrated(flip=True)
    runner = OnnxRunner(export_onnx(model, tmp_path / "m.onnx"), num_threads=1)
    assert runner.output_names == ("expression_logits", TEMPERATURE_OUTPUT)
    assert json.loads(runner.metadata["outputs"]) == list(runner.output_names)
    faces = _faces(3, seed=5)
    got = runner(faces)
    with torch.inference_mode():
        out = model(torch.from_numpy(runner.preprocess(faces)))
    assert out.expression_temperature is not None
    assert out.expression is not None
    np.testing.assert_allclose(
        got[TEMPERATURE_OUTPUT], out.expression_temperature.numpy(), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(got["expression_logits"], out.expression.numpy(), atol=1e-4)
    plain = OnnxRunner(export_onnx(_tiny(), tmp_path / "plain.onnx"), num_threads=1)
    assert plain.output_names == ("expression_logits",)


def test_the_calibrator_takes_no_part_in_training() -> None:
    model = _calibrated().train()
    before = model.calibrator.weight.detach().clone()  # type: ignore[union-attr]
    assert model.calibrator is not None
    assert not any(p.requires_grad for p in model.calibrator.parameters())
    assert all("calibrator" not in n for n, p in model.named_parameters() if p.requires_grad)
    x = _normalised(_faces(4), model.config)
    out = model(x)
    assert out.expression_temperature is not None
    assert not out.expression_temperature.requires_grad, "no gradient flows through it"
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    assert out.expression is not None
    out.expression.logsumexp(1).mean().backward()
    optimiser.step()
    assert torch.equal(model.calibrator.weight, before)


def test_a_recipe_started_from_a_calibrated_model_drops_the_calibrator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from affectfpn.recipes.recipe import load_recipe
    from affectfpn.recipes.stage import model_from_recipe

    _calibrated().save_pretrained(tmp_path / "start")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "r"\noutput_dir = "{tmp_path / "runs"}"\n\n[model]\n'
        f'init = "{tmp_path / "start"}"\n\n[data]\n'
        f'train = [{{ type = "imagefolder", root = "{tmp_path / "faces"}" }}]\n'
    )
    for overrides in ([], ["model.head_dropout=0.1"]):
        with caplog.at_level(logging.INFO, logger="affectfpn.recipes.recipe"):
            model = model_from_recipe(load_recipe(recipe, overrides))
        assert model.calibrator is None
        assert model.config.adaptive_temperature is False
        assert not any(k.startswith("calibrator.") for k in model.state_dict())
        assert "affectfpn calibrate" in caplog.text
        caplog.clear()


def test_bad_input_is_a_clear_error() -> None:
    (z, x, y), _ = _two_domains(50, seed=4)
    with pytest.raises(InputError, match="at least one"):
        fit_adaptive_temperature([])
    with pytest.raises(InputError, match="set 0"):
        fit_adaptive_temperature([(z, x[:10], y)])
    with pytest.raises(InputError, match="pooled features"):
        fit_adaptive_temperature([(z, x, y), (z[:, :3], x, y)])
    with pytest.raises(InputError, match="NaN"):
        fit_adaptive_temperature([(torch.full_like(z, math.nan), x, y)])
    with pytest.raises(InputError, match="class indices"):
        fit_adaptive_temperature([(z, x, y + 7)])
    with pytest.raises(InputError, match="l2"):
        fit_adaptive_temperature([(z, x, y)], l2=-1.0)
    fit = fit_adaptive_temperature([(z, x, y)])
    with pytest.raises(InputError, match="pooled features"):
        fit(torch.zeros(2, DIM + 1))
    model = _tiny()
    with pytest.raises(InputError, match="forward_features"):
        model.set_calibrator(fit)  # fitted on 16 features, the model has 32
    with pytest.raises(ConfigError, match="adaptive_temperature"):
        AffectFPNConfig(tasks=("va",), adaptive_temperature=True)
    with pytest.raises(ConfigError, match="adaptive_temperature_range"):
        AffectFPNConfig(adaptive_temperature_range=(2.0, 1.0))
    with pytest.raises(ConfigError, match="adaptive_temperature_range"):
        AffectFPNConfig(adaptive_temperature_range=(0.01, 1.0))
    with pytest.raises(InputError, match="at least one"):
        calibrate(model, {}, adaptive=True)
    # a model with a calibrator still builds from its config alone, at T = 1 until fitted
    fresh = AffectFPN(dataclasses.replace(model.config, adaptive_temperature=True)).eval()
    with torch.inference_mode():
        t = fresh(_normalised(_faces(2), fresh.config)).expression_temperature
    assert t is not None
    assert torch.equal(t, torch.ones(2, 1))


def test_too_few_faces_per_feature_warn_of_overfitting(caplog: pytest.LogCaptureFixture) -> None:
    from affectfpn.calibration import ADAPTIVE_MIN_FACES_PER_FEATURE

    a, b = _two_domains(4000, seed=5)
    with caplog.at_level(logging.WARNING, logger="affectfpn.calibration"):
        fit_adaptive_temperature([a, b])
    assert not [r for r in caplog.records if "overfit" in r.getMessage()]
    few = ADAPTIVE_MIN_FACES_PER_FEATURE * DIM // 2 - 1
    small = [tuple(t[:few] for t in a), tuple(t[:few] for t in b)]
    with caplog.at_level(logging.WARNING, logger="affectfpn.calibration"):
        fit_adaptive_temperature(small)
    (record,) = [r for r in caplog.records if "overfit" in r.getMessage()]
    assert f"on only {2 * few} labelled faces" in record.getMessage()
    assert "without --adaptive" in record.getMessage()
