"""The names of the former ``affectfpn.recipes.external_teachers``, kept so that existing code
keeps working; new code imports them from their homes:

* the teachers (MediaPipe runner, blendshape scores, the blendshape -> AU mapping and its
  calibration, OpenFace 2.0, label CSVs): :mod:`affectfpn.recipes.teachers`;
* measuring a student against its teacher: :mod:`affectfpn.recipes.agreement`;
* the command line: ``affectfpn teachers ...`` (``python -m affectfpn.recipes.external_teachers``
  is an alias that starts it in a child process).
"""

from collections.abc import Sequence

from affectfpn.recipes.agreement import format_agreement, student_agreement
from affectfpn.recipes.teachers import (
    BLENDSHAPE_AU_MAP,
    BLENDSHAPE_SCRIPT,
    DEFAULT_LANDMARKER,
    EXPRESSION_IMPLIED_AUS,
    AUMapping,
    BlendshapeScores,
    au_probabilities,
    blendshape_table,
    evaluate_mapping,
    fit_calibration,
    format_evaluation,
    implied_labels,
    kept_units,
    label_csv_table,
    mapping_by_au,
    openface_table,
    read_blendshape_csv,
    roc_auc,
    run_blendshape_teacher,
    table_from_dataset,
)

__all__ = [
    "BLENDSHAPE_AU_MAP",
    "BLENDSHAPE_SCRIPT",
    "DEFAULT_LANDMARKER",
    "EXPRESSION_IMPLIED_AUS",
    "AUMapping",
    "BlendshapeScores",
    "au_probabilities",
    "blendshape_table",
    "evaluate_mapping",
    "fit_calibration",
    "format_agreement",
    "format_evaluation",
    "implied_labels",
    "kept_units",
    "label_csv_table",
    "main",
    "mapping_by_au",
    "openface_table",
    "read_blendshape_csv",
    "roc_auc",
    "run_blendshape_teacher",
    "student_agreement",
    "table_from_dataset",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m affectfpn.recipes.external_teachers``: an alias of ``affectfpn teachers``
    (the command line lives in :mod:`affectfpn.cli`; this module does not import it)."""
    from affectfpn._alias import run_command

    return run_command("teachers", argv)


if __name__ == "__main__":
    from affectfpn._alias import exec_command

    raise SystemExit(exec_command("teachers"))
