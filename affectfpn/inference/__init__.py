"""Inference: image loading, face detection, alignment, prediction and its results.

The entry points are :func:`predict` (also :meth:`affectfpn.AffectFPN.predict`),
:func:`predict_iter` for streams, and :class:`Predictor` to reuse a model, detector and options
across calls.
"""

from affectfpn.inference.align import align_face
from affectfpn.inference.detectors import (
    Detection,
    FaceDetector,
    HaarDetector,
    YuNetDetector,
    get_detector,
)
from affectfpn.inference.draw import draw
from affectfpn.inference.predictor import FaceCrops, Predictor, predict, predict_iter
from affectfpn.inference.results import (
    ActionUnits,
    Expression,
    FacePrediction,
    ImagePrediction,
    LabelNames,
    ValenceArousal,
)
from affectfpn.inference.tables import CsvWriter, table_columns, to_pandas, to_rows, write_csv
from affectfpn.io import load_image

__all__ = [
    "ActionUnits",
    "CsvWriter",
    "Detection",
    "Expression",
    "FaceCrops",
    "FaceDetector",
    "FacePrediction",
    "HaarDetector",
    "ImagePrediction",
    "LabelNames",
    "Predictor",
    "ValenceArousal",
    "YuNetDetector",
    "align_face",
    "draw",
    "get_detector",
    "load_image",
    "predict",
    "predict_iter",
    "table_columns",
    "to_pandas",
    "to_rows",
    "write_csv",
]
