"""ONNX export (:func:`affectfpn.export.export_onnx`) and the ONNX Runtime wrapper.

The parity test runs on a tiny model so that it stays in the default (CI) selection.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from affectfpn import (
    AffectFPN,
    AffectFPNConfig,
    ConfigError,
    InputError,
    MissingExtraError,
    WeightsError,
)
from affectfpn.export import OUTPUT_NAMES, OnnxRunner, export_onnx
from affectfpn.preprocess import normalize, resize_face


@pytest.fixture(scope="module")
def model() -> AffectFPN:
    """A tiny three-task model with non-default normalisation, in eval mode."""
    torch.manual_seed(0)
    config = AffectFPNConfig(
        backbone="resnet18",
        fpn_width=16,
        input_size=(64, 48),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )
    return AffectFPN(config).eval()


@pytest.fixture(scope="module")
def exported(model: AffectFPN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _faces(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size[0], size[1], 3), dtype=np.uint8)


def _torch_outputs(model: AffectFPN, faces: np.ndarray) -> dict[str, np.ndarray]:
    batch = torch.from_numpy(faces).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(normalize(batch, model.config))
    return {
        OUTPUT_NAMES[task]: getattr(out, task).numpy()
        for task in ("va", "expression", "au")
        if getattr(out, task) is not None
    }


def test_graph_has_named_outputs_and_a_dynamic_batch(exported: Path) -> None:
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    (graph_input,) = proto.graph.input
    assert graph_input.name == "input"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 64, 48]
    outputs = {o.name: o.type.tensor_type.shape.dim for o in proto.graph.output}
    assert list(outputs) == ["va", "expression_logits", "au_logits"]
    for name, width in (("va", 2), ("expression_logits", 7), ("au_logits", 12)):
        assert outputs[name][0].dim_param == "batch"
        assert outputs[name][1].dim_value == width


def test_metadata_describes_the_preprocessing(model: AffectFPN, exported: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert AffectFPNConfig.from_dict(json.loads(meta["config"])) == model.config
    assert json.loads(meta["input_size"]) == [64, 48]
    assert json.loads(meta["mean"]) == pytest.approx([0.5, 0.4, 0.3])
    assert json.loads(meta["std"]) == pytest.approx([0.2, 0.25, 0.3])
    assert json.loads(meta["expressions"]) == list(model.config.expressions)
    assert json.loads(meta["action_units"]) == list(model.config.action_units)
    assert json.loads(meta["outputs"]) == ["va", "expression_logits", "au_logits"]
    assert meta["input_name"] == "input"
    assert "mean" in meta["preprocessing"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnxruntime_matches_pytorch(model: AffectFPN, exported: Path, batch_size: int) -> None:
    runner = OnnxRunner(exported, num_threads=1 if batch_size == 1 else None)
    faces = _faces(batch_size, (64, 48), seed=batch_size)
    expected = _torch_outputs(model, faces)
    got = runner(faces)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=0)
    # The runner's preprocessing is the library's normalize(), to float rounding.
    batch = torch.from_numpy(faces).permute(0, 3, 1, 2)
    np.testing.assert_allclose(
        runner.preprocess(faces), normalize(batch, model.config).numpy(), atol=1e-6, rtol=0
    )


def test_runner_resizes_crops_as_in_training(model: AffectFPN, exported: Path) -> None:
    runner = OnnxRunner(exported)
    crops = [Image.fromarray(face) for face in _faces(2, (90, 70), seed=5)]
    resized = np.stack([np.asarray(resize_face(c, (64, 48))) for c in crops])
    expected = _torch_outputs(model, resized)
    got = runner(crops)
    np.testing.assert_allclose(got["va"], expected["va"], atol=1e-4, rtol=0)
    with pytest.raises(InputError, match=r"faces\[0\]"):
        runner([np.zeros((64, 48, 3), dtype=np.float32)])
    with pytest.raises(InputError, match="normalised"):
        runner.run(np.zeros((1, 3, 32, 32), dtype=np.float32))


def test_only_the_model_tasks_are_exported_and_a_fixed_batch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = AffectFPN(
        AffectFPNConfig(backbone="resnet18", fpn_width=8, input_size=(32, 32), tasks=("va", "au"))
    )
    model.train()
    path = export_onnx(model, tmp_path / "va_au.onnx", dynamic_batch=False, opset=18)
    assert model.training  # the caller's mode is restored
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["va", "au_logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    runner = OnnxRunner(path)
    assert runner.output_names == ("va", "au_logits")
    faces = _faces(1, (32, 32))
    expected = _torch_outputs(model.eval(), faces)
    for name, value in runner(faces).items():
        np.testing.assert_allclose(value, expected[name], atol=1e-4, rtol=0)


def test_runner_refuses_a_file_without_affectfpn_metadata(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(WeightsError, match="no affectfpn metadata"):
        OnnxRunner(path)
    with pytest.raises(WeightsError, match="no such ONNX file"):
        OnnxRunner(tmp_path / "missing.onnx")


def test_export_rejects_bad_arguments(model: AffectFPN, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AffectFPN"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", opset=3)
    with pytest.raises(ConfigError, match="exporter"):
        export_onnx(model, tmp_path / "x.onnx", exporter="jit")  # type: ignore[arg-type]
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("onnxscript") is not None, reason="onnxscript is installed"
)
def test_dynamo_exporter_names_its_missing_dependency(model: AffectFPN, tmp_path: Path) -> None:
    with pytest.raises(MissingExtraError, match="onnxscript"):
        export_onnx(model, tmp_path / "x.onnx", exporter="dynamo")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_onnx_runner_refuses_a_bad_thread_count(exported: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="num_threads must be a positive integer"):
        OnnxRunner(exported, num_threads=bad)  # type: ignore[arg-type]
