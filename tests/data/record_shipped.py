"""Record what tests/test_shipped_models.py holds the shipped models to.

Run after publishing a model (from the repository root, with ``../shared`` beside it):

    python tests/data/record_shipped.py

It writes, for every registered model that ships inside the package:

* ``tests/data/shipped_models.json``: accuracy and macro F1 on the fixed FER2013 and
  lfw-expressions test subsets (through ``predict(..., faces="crop")``), each AU's ROC AUC against
  the teacher's table on the FER2013 subset, and golden logits of four faces (the repository's
  sample photo and three seeded noise faces) from one forward pass (and the per-face
  expression temperatures of a model with a calibrator);
* ``tests/data/fer2013_test_subset_au_teacher.csv``: the AU teacher's labels (MediaPipe
  blendshapes through the mapping of docs/action-units.md) for the FER2013 subset, cut from
  ``runs/au-pseudo/test.csv`` (``--teacher-table``).

The figures are what the models do today: the test fails when a change moves any of them by
more than its tolerance, and a deliberate change is recorded again with this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_shipped_models import (  # noqa: E402
    AU_TEACHER_TABLE,
    GOLDEN_OUTPUTS,
    RECORD,
    fer_subset,
    golden_inputs,
    lfw_subset,
    subset_figures,
    teacher_aucs,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--teacher-table", default=str(ROOT / "runs" / "au-pseudo" / "test.csv"))
    args = parser.parse_args()

    import torch

    from affectfpn import AffectFPN, list_models
    from affectfpn.preprocess import normalize

    shared = Path(args.shared)
    fer = fer_subset(shared / "data" / "fer2013" / "test")
    lfw = lfw_subset(shared / "data" / "lfw-expressions" / "test")
    keys = {f"{path.parent.name}/{path.name}" for path, _ in fer}
    table = Path(args.teacher_table)
    if table.is_file():
        with table.open(newline="") as f:
            reader = csv.DictReader(f)
            units = ("AU1", "AU2", "AU12", "AU26")  # the units the teacher measures
            rows = [
                {"key": r["key"], **{u: f"{float(r[u]):.4f}" if r[u] else "" for u in units}}
                for r in reader
                if r["key"] in keys
            ]
            columns = ["key", *units]
        with AU_TEACHER_TABLE.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} teacher rows to {AU_TEACHER_TABLE}")
    record: dict[str, dict[str, object]] = {}
    for info in list_models():
        if info.source != "package":
            continue
        model = AffectFPN.from_pretrained(info.name)
        entry: dict[str, object] = {
            "fer2013_subset": subset_figures(model, fer),
            "lfw_subset": subset_figures(model, lfw),
        }
        if "au" in model.config.tasks and AU_TEACHER_TABLE.is_file():
            entry["fer2013_subset_au_auc"] = teacher_aucs(model, fer)
        x = normalize(torch.from_numpy(golden_inputs(model.config.input_size)), model.config)
        with torch.inference_mode():
            out = model.eval()(x)
        entry["golden"] = {
            task: getattr(out, task).tolist()
            for task in GOLDEN_OUTPUTS
            if getattr(out, task) is not None
        }
        record[info.name] = entry
        print(info.name, json.dumps({k: v for k, v in entry.items() if k != "golden"}))
    RECORD.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
