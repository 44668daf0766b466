"""Pseudo labels from teachers outside affectfpn: MediaPipe blendshapes, OpenFace 2.0, label CSVs.

Every converter returns a :class:`~affectfpn.recipes.datasets.LabelTable`, the table the
teacher-student pipeline consumes: soft AU probabilities with a per-unit mask. A unit the teacher
does not measure, and every unit of a face the teacher did not find, is masked (no label), never
"absent". One module per source or step:

* :mod:`~affectfpn.recipes.teachers.mediapipe_runner`: :func:`run_blendshape_teacher` runs
  MediaPipe's Face Landmarker (``affectfpn/recipes/blendshapes.py``) in a separate Python that
  has ``mediapipe`` (``$AFFECTFPN_MEDIAPIPE_PYTHON``); affectfpn itself never imports it.
* :mod:`~affectfpn.recipes.teachers.blendshape_scores`: the blendshape CSV it writes
  (:func:`read_blendshape_csv`, :class:`BlendshapeScores`).
* :mod:`~affectfpn.recipes.teachers.blendshape_au`: the explicit blendshape -> AU mapping
  :data:`BLENDSHAPE_AU_MAP` and :func:`blendshape_table`.
* :mod:`~affectfpn.recipes.teachers.calibration`: the mapping's calibration and measurement
  against the AUs FER2013's expression labels imply (:func:`fit_calibration`,
  :func:`evaluate_mapping`, :func:`roc_auc`).
* :mod:`~affectfpn.recipes.teachers.openface`: OpenFace 2.0's ``AUxx_c`` columns
  (:func:`openface_table`), keyed ``<video>/<frame:05d>`` like Aff-Wild2 frames.
* :mod:`~affectfpn.recipes.teachers.label_csv`: a recipe label CSV or any labelled dataset as
  it is (:func:`label_csv_table`, :func:`table_from_dataset`).

A student trained on these tables is measured against its teacher with
:func:`affectfpn.recipes.agreement.student_agreement`. The command line is
``affectfpn teachers ...`` (:mod:`affectfpn.cli.teachers`)::

    affectfpn teachers blendshapes --root ../shared/data/fer2013/val \\
        --out runs/au-pseudo/blendshapes-val.csv --python .mpvenv/bin/python \\
        --model ../shared/models/mediapipe/face_landmarker.task
    affectfpn teachers table --scores runs/au-pseudo/blendshapes-val.csv \\
        --out runs/au-pseudo/val.csv
    affectfpn teachers evaluate --scores runs/au-pseudo/blendshapes-val.csv \\
        --root ../shared/data/fer2013/val
    affectfpn teachers agreement --model runs/mt-s0/best \\
        --root ../shared/data/fer2013/test --table runs/au-pseudo/test.csv
"""

from affectfpn.recipes.teachers.blendshape_au import (
    BLENDSHAPE_AU_MAP,
    AUMapping,
    au_probabilities,
    blendshape_table,
    kept_units,
    mapping_by_au,
)
from affectfpn.recipes.teachers.blendshape_scores import BlendshapeScores, read_blendshape_csv
from affectfpn.recipes.teachers.calibration import (
    EXPRESSION_IMPLIED_AUS,
    evaluate_mapping,
    fit_calibration,
    folder_expressions,
    format_evaluation,
    implied_labels,
    roc_auc,
)
from affectfpn.recipes.teachers.label_csv import label_csv_table, table_from_dataset
from affectfpn.recipes.teachers.mediapipe_runner import (
    BLENDSHAPE_SCRIPT,
    DEFAULT_LANDMARKER,
    MEDIAPIPE_PYTHON_ENV,
    TeacherProcessError,
    landmarker_path,
    mediapipe_python,
    run_blendshape_teacher,
)
from affectfpn.recipes.teachers.openface import openface_table

__all__ = [
    "BLENDSHAPE_AU_MAP",
    "BLENDSHAPE_SCRIPT",
    "DEFAULT_LANDMARKER",
    "EXPRESSION_IMPLIED_AUS",
    "MEDIAPIPE_PYTHON_ENV",
    "AUMapping",
    "BlendshapeScores",
    "TeacherProcessError",
    "au_probabilities",
    "blendshape_table",
    "evaluate_mapping",
    "fit_calibration",
    "folder_expressions",
    "format_evaluation",
    "implied_labels",
    "kept_units",
    "label_csv_table",
    "landmarker_path",
    "mapping_by_au",
    "mediapipe_python",
    "openface_table",
    "read_blendshape_csv",
    "roc_auc",
    "run_blendshape_teacher",
    "table_from_dataset",
]
