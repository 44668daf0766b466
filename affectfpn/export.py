"""Export a model to ONNX, and run the exported file with ONNX Runtime.

:func:`export_onnx` writes a graph whose one input, ``input``, is the **normalised** float32 batch
``N x 3 x H x W`` (RGB, scaled to [0, 1], then ``(x - mean) / std``: exactly what
:class:`~affectfpn.AffectFPN` takes) and whose outputs are named per task, only for the tasks the
model has, in this order:

=====================  =======================================================================
Output                 Meaning
=====================  =======================================================================
``va``                 ``N x 2`` valence and arousal, already in [-1, 1] (tanh inside the graph).
``expression_logits``  ``N x 7`` expression logits (softmax gives probabilities).
``au_logits``          ``N x 12`` action-unit logits (sigmoid gives occurrence probabilities).
=====================  =======================================================================

A model with a calibrator (``config.adaptive_temperature``) has one more output, last:
``expression_temperature``, ``N x 1`` per-face temperatures, so that the calibrated
probabilities are ``softmax(expression_logits / expression_temperature)``. Without it, divide
by the config's ``expression_temperature`` (in the ``config`` metadata). The logits stay raw
either way.

The batch axis is dynamic by default (named ``batch``); height and width are fixed at the
model's ``config.input_size``. Everything a consumer needs to prepare faces is written into the
file's ``metadata_props`` (all values are strings; lists and dicts are JSON):

``affectfpn_version``, ``model_type`` (``"affectfpn"``), ``config`` (the full ``config.json``),
``tasks``, ``outputs`` (output names in order), ``input_name``, ``input_size`` (``[H, W]``),
``mean``, ``std`` (RGB, 0..1 scale), ``expressions``, ``action_units``, ``preprocessing`` (the
recipe in words), and ``name_or_path`` / ``revision`` when the model was loaded from somewhere.

:class:`OnnxRunner` reads that metadata and applies the same preprocessing as
:func:`affectfpn.preprocess.normalize`, so ``OnnxRunner(path)(faces)`` equals the PyTorch
model's outputs on the same face crops.

Both need the optional extra ``onnx`` (``pip install 'affectfpn[onnx]'``: ``onnx`` and
``onnxruntime``).

Exporter: torch offers two. The TorchScript-based one (``torch.onnx.export(..., dynamo=False)``)
still ships with torch 2.14 (deprecated since 2.9) and needs no extra package; the ``torch.export``
-based one (``dynamo=True``, torch's default) needs the ``onnxscript`` package. ``exporter="auto"``
(the default) takes the TorchScript exporter while torch still has it, else the dynamo one.

Example:
    >>> from affectfpn import AffectFPN
    >>> from affectfpn.export import OnnxRunner, export_onnx
    >>> model = AffectFPN.from_pretrained("some-model")               # doctest: +SKIP
    >>> path = export_onnx(model, "affect.onnx")                      # doctest: +SKIP
    >>> runner = OnnxRunner(path)                                     # doctest: +SKIP
    >>> runner(face_crops)["expression_logits"].shape                 # doctest: +SKIP
    (4, 7)
"""

import importlib.util
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from affectfpn._version import __version__
from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError, InputError, WeightsError, require_extra
from affectfpn.io import atomic_write
from affectfpn.labels import TASKS

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "TEMPERATURE_OUTPUT",
    "OnnxRunner",
    "export_onnx",
    "onnx_metadata",
]

logger = logging.getLogger(__name__)

#: Name of the graph's input.
INPUT_NAME = "input"
#: Name of the graph output of each task.
OUTPUT_NAMES: Mapping[str, str] = {
    "va": "va",
    "expression": "expression_logits",
    "au": "au_logits",
}
#: Name of the output of per-face expression temperatures (models with a calibrator only).
TEMPERATURE_OUTPUT = "expression_temperature"
#: Name of the dynamic batch axis.
BATCH_AXIS = "batch"

_TORCHSCRIPT_MODULE = "torch.onnx._internal.torchscript_exporter"
_PREPROCESSING = (
    "RGB face crop resized to input_size (H, W) with bilinear interpolation; float32 in [0, 1] "
    "(uint8 / 255); then (x - mean) / std per channel; layout N x 3 x H x W"
)


class _OnnxWrapper(nn.Module):
    """Turns :class:`~affectfpn.AffectFPNOutput` into a plain tuple of the model's outputs
    (``fields``: its task outputs, then the per-face temperature where it has one)."""

    def __init__(self, model: nn.Module, fields: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.fields = tuple(fields)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        values = []
        for name in self.fields:
            value = getattr(out, name)
            if value is None:  # pragma: no cover - guarded by the config check in export_onnx
                raise ConfigError(f"the model returned no output {name!r}")
            values.append(value)
        return tuple(values)


def _model_config(model: nn.Module) -> AffectFPNConfig:
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, AffectFPNConfig):
        raise ConfigError(
            f"export_onnx needs an AffectFPN model (an nn.Module with an AffectFPNConfig as "
            f".config), got {type(model).__name__}; load one with AffectFPN.from_pretrained()"
        )
    return config


def onnx_metadata(model: nn.Module) -> dict[str, str]:
    """The ``metadata_props`` that :func:`export_onnx` writes for ``model`` (all strings)."""
    config = _model_config(model)
    tasks = [t for t in TASKS if t in config.tasks]
    meta = {
        "affectfpn_version": __version__,
        "model_type": config.model_type,
        "config": json.dumps(config.to_dict()),
        "tasks": json.dumps(tasks),
        "outputs": json.dumps(_output_fields(config)[1]),
        "input_name": INPUT_NAME,
        "input_size": json.dumps(list(config.input_size)),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "expressions": json.dumps(list(config.expressions)),
        "action_units": json.dumps(list(config.action_units)),
        "preprocessing": _PREPROCESSING,
    }
    name = getattr(model, "name_or_path", None)
    if isinstance(name, str) and name:
        meta["name_or_path"] = name
    revision = getattr(model, "revision", None)
    if isinstance(revision, str) and revision:
        meta["revision"] = revision
    return meta


def _output_fields(config: AffectFPNConfig) -> tuple[list[str], list[str]]:
    """The model outputs the graph returns, and their names in the graph."""
    tasks = [t for t in TASKS if t in config.tasks]
    fields, names = list(tasks), [OUTPUT_NAMES[t] for t in tasks]
    if config.adaptive_temperature:
        fields.append("expression_temperature")
        names.append(TEMPERATURE_OUTPUT)
    return fields, names


def _pick_exporter(exporter: str) -> str:
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ConfigError(
            f"exporter={exporter!r} is not valid; use 'auto', 'torchscript' or 'dynamo'"
        )
    has_torchscript = importlib.util.find_spec(_TORCHSCRIPT_MODULE) is not None
    if exporter == "auto":
        exporter = "torchscript" if has_torchscript else "dynamo"
    if exporter == "torchscript" and not has_torchscript:
        raise ConfigError(
            f"torch {torch.__version__} no longer has the TorchScript ONNX exporter; use "
            "exporter='dynamo' (needs the onnxscript package)"
        )
    if exporter == "dynamo":
        require_extra("onnxscript", "onnx")
    return exporter


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    check: bool = True,
    exporter: Literal["auto", "torchscript", "dynamo"] = "auto",
) -> Path:
    """Export ``model`` to an ONNX file with named per-task outputs and preprocessing metadata.

    The graph takes the normalised float32 batch ``input`` (``N x 3 x H x W``) and returns
    ``va``, ``expression_logits`` and ``au_logits`` (only the model's tasks), and
    ``expression_temperature`` for a model with a calibrator; see the module docstring for
    their meaning and for the metadata written into the file. The model is traced in eval mode
    on its own device and left as it was.

    Args:
        model: An :class:`~affectfpn.AffectFPN`.
        path: The ``.onnx`` file to write (folders are created; an existing file is replaced
            only once the new one is complete).
        opset: ONNX opset version.
        dynamic_batch: Make the batch axis dynamic (named ``batch``); ``False`` fixes it at 1.
        check: Validate the written model with ``onnx.checker`` (full check, with shape
            inference).
        exporter: ``"auto"`` (default: the TorchScript exporter while torch has it, else the
            dynamo one), ``"torchscript"`` (``torch.onnx.export(dynamo=False)``, no extra
            package) or ``"dynamo"`` (``dynamo=True``, needs ``onnxscript``).

    Returns:
        The path of the written file.

    Raises:
        MissingExtraError: ``onnx`` (or, for the dynamo exporter, ``onnxscript``) is missing.
        ConfigError: ``model`` is not an AffectFPN, or a bad option.
        WeightsError: the export or the check failed (the message says why).
    """
    require_extra("onnx", "onnx")
    import onnx

    config = _model_config(model)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= 25:
        raise ConfigError(
            f"must be an integer ONNX opset version (e.g. 17), got {opset!r}", option="opset"
        )
    chosen = _pick_exporter(exporter)
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)

    fields, output_names = _output_fields(config)
    wrapper = _OnnxWrapper(model, fields)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    h, w = config.input_size
    # Batch 2 for a dynamic axis: a traced batch of 1 can get folded into constants.
    dummy = torch.zeros(2 if dynamic_batch else 1, 3, h, w, device=device)
    dynamic_axes = (
        {name: {0: BATCH_AXIS} for name in (INPUT_NAME, *output_names)} if dynamic_batch else None
    )

    was_training = model.training

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated, and the tracer that the
            # input-shape check in AffectFPN.forward becomes a constant: both expected here.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            try:
                torch.onnx.export(
                    wrapper,
                    (dummy,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=output_names,
                    opset_version=opset,
                    dynamic_axes=dynamic_axes,
                    dynamo=chosen == "dynamo",
                    external_data=False,  # one self-contained file (dynamo exporter only)
                )
            except Exception as err:  # the exporters raise many kinds of errors
                raise WeightsError(
                    f"ONNX export ({chosen} exporter, opset {opset}) of the model failed: "
                    f"{type(err).__name__}: {err}"
                ) from err
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in onnx_metadata(model).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = (
            "affectfpn facial affect model: input = normalised RGB faces N x 3 x H x W; "
            f"outputs = {', '.join(output_names)}; see metadata_props"
        )
        onnx.save(proto, str(tmp))
        if check:
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as err:  # onnx.checker.ValidationError, shape inference errors
                raise WeightsError(
                    f"the exported ONNX model does not pass onnx.checker: {err}"
                ) from None

    try:
        model.eval()
        atomic_write(out, write)  # a failed export leaves no partial file at ``out``
    finally:
        model.train(was_training)
    logger.info(
        "exported %s to %s (%s exporter, opset %d, %s batch)",
        getattr(model, "name_or_path", None) or type(model).__name__,
        out,
        chosen,
        opset,
        "dynamic" if dynamic_batch else "fixed",
    )
    return out


class OnnxRunner:
    """Run a model exported by :func:`export_onnx` with ONNX Runtime, preprocessing included.

    Args:
        path: The ``.onnx`` file.
        providers: ONNX Runtime execution providers, in order of preference (default:
            ``["CPUExecutionProvider"]``).
        num_threads: Threads for one operator (ONNX Runtime's ``intra_op_num_threads``);
            ``None`` leaves ONNX Runtime's default (one per physical core).

    Attributes:
        config: The model's :class:`~affectfpn.AffectFPNConfig`, read from the file's metadata.
        output_names: The graph's outputs, e.g. ``("va", "expression_logits", "au_logits")``.
        metadata: All ``metadata_props`` of the file.

    Raises:
        MissingExtraError: ``onnxruntime`` is not installed.
        WeightsError: the file cannot be loaded, or was not written by :func:`export_onnx`.

    Example:
        >>> runner = OnnxRunner("affect.onnx")                       # doctest: +SKIP
        >>> out = runner(faces)   # uint8 N x H x W x 3 RGB crops    # doctest: +SKIP
        >>> out["va"].shape                                          # doctest: +SKIP
        (4, 2)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        require_extra("onnxruntime", "onnx")
        import onnxruntime as ort

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: no such ONNX file; write one with export_onnx")
        options = ort.SessionOptions()
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
                raise ConfigError(f"num_threads must be a positive integer, got {num_threads!r}")
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=list(providers or ["CPUExecutionProvider"]),
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise WeightsError(f"{self.path}: ONNX Runtime cannot load it ({err})") from None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if "config" not in self.metadata:
            raise WeightsError(
                f"{self.path}: no affectfpn metadata in the file; export the model with "
                "affectfpn.export.export_onnx (the command 'affectfpn export')"
            )
        try:
            config_data = json.loads(self.metadata["config"])
        except json.JSONDecodeError as err:
            raise WeightsError(f"{self.path}: the 'config' metadata is not JSON ({err})") from None
        self.config = AffectFPNConfig.from_dict(config_data, source=f"{self.path} metadata")
        self.input_name: str = self.session.get_inputs()[0].name
        self.output_names: tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())
        self._mean = np.asarray(self.config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.config.std, dtype=np.float32).reshape(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"OnnxRunner({str(self.path)!r}, outputs={self.output_names})"

    def preprocess(self, faces: object) -> np.ndarray:
        """Turn face crops into the normalised float32 batch the graph takes.

        Args:
            faces: One RGB face crop or several: a ``uint8`` array ``H x W x 3`` or
                ``N x H x W x 3``, a PIL image, or a list of these. Crops not at the model's
                ``input_size`` are resized as in training
                (:func:`affectfpn.preprocess.resize_face`).

        Returns:
            ``N x 3 x H x W`` float32: ``(x / 255 - mean) / std``.

        Raises:
            InputError: an input that is not an RGB ``uint8`` image.
        """
        h, w = self.config.input_size
        if isinstance(faces, np.ndarray) and faces.ndim == 4:
            items: list[object] = list(faces)
        elif isinstance(faces, np.ndarray | Image.Image):
            items = [faces]
        elif isinstance(faces, Sequence) and not isinstance(faces, str | bytes):
            items = list(faces)
        else:
            raise InputError(
                f"faces must be uint8 RGB arrays (H x W x 3 or N x H x W x 3), PIL images or a "
                f"list of them, got {type(faces).__name__}"
            )
        if not items:
            raise InputError("faces is empty: pass at least one face crop")
        batch = np.empty((len(items), h, w, 3), dtype=np.uint8)
        for i, item in enumerate(items):
            batch[i] = self._face_array(item, i, (h, w))
        x = batch.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray((x - self._mean) / self._std, dtype=np.float32)

    @staticmethod
    def _face_array(item: object, index: int, size: tuple[int, int]) -> np.ndarray:
        from affectfpn.preprocess import resize_face

        if isinstance(item, Image.Image):
            image = item.convert("RGB")
        elif (
            isinstance(item, np.ndarray)
            and item.dtype == np.uint8
            and item.ndim == 3
            and item.shape[2] == 3
        ):
            if item.shape[:2] == size:
                return item
            image = Image.fromarray(item)
        else:
            what = (
                f"an array of shape {item.shape} and dtype {item.dtype}"
                if isinstance(item, np.ndarray)
                else type(item).__name__
            )
            raise InputError(
                f"faces[{index}] is {what}; pass H x W x 3 uint8 RGB face crops or PIL images"
            )
        return np.asarray(resize_face(image, size).convert("RGB"), dtype=np.uint8)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on an already normalised ``N x 3 x H x W`` float32 batch.

        Returns:
            ``{output name: array}``, e.g. ``{"va": N x 2, "expression_logits": N x 7, ...}``.
        """
        x = np.asarray(batch)
        h, w = self.config.input_size
        if x.ndim != 4 or x.shape[1:] != (3, h, w):
            raise InputError(
                f"the ONNX model takes a normalised N x 3 x {h} x {w} batch, got shape "
                f"{x.shape}; use OnnxRunner.preprocess (or call the runner on face crops)"
            )
        results = self.session.run(None, {self.input_name: x.astype(np.float32, copy=False)})
        return {
            name: np.asarray(value) for name, value in zip(self.output_names, results, strict=True)
        }

    def __call__(self, faces: object) -> dict[str, np.ndarray]:
        """Preprocess face crops (see :meth:`preprocess`) and run the graph on them."""
        return self.run(self.preprocess(faces))
