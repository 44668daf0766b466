"""Running MediaPipe's Face Landmarker as a teacher, in a Python of its own.

``mediapipe`` pulls ``opencv-contrib-python``, which clashes with affectfpn's
``opencv-python``, so affectfpn never imports it: :func:`run_blendshape_teacher` starts
``affectfpn/recipes/blendshapes.py`` (:data:`BLENDSHAPE_SCRIPT`) by path in another Python
that has it, named by ``python_executable=`` or by the environment variable
``AFFECTFPN_MEDIAPIPE_PYTHON`` (:data:`MEDIAPIPE_PYTHON_ENV`), e.g. ``.mpvenv/bin/python``
(``docs/action-units.md`` says how to make it). The script writes a blendshape CSV, read back
with :func:`~affectfpn.recipes.teachers.blendshape_scores.read_blendshape_csv`.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from affectfpn.data.pseudo import dataset_keys
from affectfpn.errors import UNSET, AffectFPNError, ConfigError, Hint
from affectfpn.recipes import blendshapes

__all__ = [
    "BLENDSHAPE_SCRIPT",
    "DEFAULT_LANDMARKER",
    "MEDIAPIPE_PYTHON_ENV",
    "SHARED_ENV",
    "TeacherProcessError",
    "landmarker_path",
    "mediapipe_python",
    "run_blendshape_teacher",
]

#: The standalone script that runs MediaPipe (in an environment that has it).
BLENDSHAPE_SCRIPT = Path(blendshapes.__file__)

#: Where the Face Landmarker bundle lies inside a shared data folder.
DEFAULT_LANDMARKER = "models/mediapipe/face_landmarker.task"

#: The environment variable naming a Python that has ``mediapipe``.
MEDIAPIPE_PYTHON_ENV = "AFFECTFPN_MEDIAPIPE_PYTHON"

#: The environment variable naming the shared data folder (the recipes' ``${AFFECTFPN_SHARED}``);
#: the Face Landmarker is looked for at :data:`DEFAULT_LANDMARKER` inside it.
SHARED_ENV = "AFFECTFPN_SHARED"


class TeacherProcessError(AffectFPNError, RuntimeError):
    """The teacher's subprocess failed or wrote nothing; the message ends with its last lines."""


def mediapipe_python(python_executable: str | os.PathLike[str] | None = None) -> str:
    """The Python that runs the script: ``python_executable``, else ``$AFFECTFPN_MEDIAPIPE_PYTHON``,
    else this Python (which works only where mediapipe is installed beside affectfpn)."""
    if python_executable is not None:
        return os.fspath(python_executable)
    return os.environ.get(MEDIAPIPE_PYTHON_ENV) or sys.executable


def landmarker_path(model: str | os.PathLike[str] | None = None) -> str:
    """The Face Landmarker bundle to use: ``model``, else :data:`DEFAULT_LANDMARKER` inside
    ``$AFFECTFPN_SHARED``.

    Raises:
        ConfigError: neither is given, or the file does not exist.
    """
    if model is None:
        shared = os.environ.get(SHARED_ENV)
        if not shared:
            raise ConfigError(
                "no Face Landmarker model given",
                hint=Hint(
                    "model",
                    UNSET,
                    f"the path of face_landmarker.task, or set {SHARED_ENV} to the shared "
                    f"folder that holds {DEFAULT_LANDMARKER}",
                ),
            )
        model = Path(shared) / DEFAULT_LANDMARKER
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ConfigError(
            f"Face Landmarker model {path!r} not found",
            hint=Hint(
                "model",
                UNSET,
                f"the path of face_landmarker.task, or set {SHARED_ENV} to the shared folder",
            ),
        )
    return path


def run_blendshape_teacher(
    out: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    dataset: Any = None,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    python_executable: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    size: int = blendshapes.DEFAULT_SIZE,
    pad: float = blendshapes.DEFAULT_PAD,
    workers: int = 1,
    timeout: float | None = None,
) -> Path:
    """Score face images with MediaPipe's Face Landmarker in a subprocess; returns ``out``.

    The images and their keys come from exactly one of:

    * ``root``: an image folder of class folders, read as
      :class:`~affectfpn.recipes.datasets.ImageFolderExpressions` reads it (FER2013's
      ``train``/``val``/``test``), so the keys are the ones a recipe's ``imagefolder`` dataset
      gives (``"angry/PublicTest_123.jpg"``);
    * ``dataset``: any affectfpn image dataset (``keys`` and ``image_path(i)``);
    * ``files``: ``{key: image path}``.

    Args:
        out: the blendshape CSV to write (columns
            :data:`~affectfpn.recipes.blendshapes.CSV_COLUMNS`).
        root, dataset, files: the images (exactly one).
        python_executable: a Python that has ``mediapipe==1.2.3`` (see :func:`mediapipe_python`
            for the default); it runs ``affectfpn/recipes/blendshapes.py`` by path.
        model: the ``face_landmarker.task`` bundle (see :func:`landmarker_path`).
        size, pad: the preprocessing of :func:`~affectfpn.recipes.blendshapes.prepare_face`.
        workers: processes of the script.
        timeout: seconds before the subprocess is stopped (default: none).

    Raises:
        ConfigError: not exactly one source, no images, or no model file.
        TeacherProcessError: the subprocess failed (its last output lines are in the message);
            a ``RuntimeError``.
    """
    if sum(x is not None for x in (root, dataset, files)) != 1:
        raise ConfigError("give exactly one of root=, dataset= or files=")
    if root is not None:
        from affectfpn.data import ImageFolderExpressions

        dataset = ImageFolderExpressions(root)
    if dataset is not None:
        keys = dataset_keys(dataset)
        items = [(k, os.fspath(dataset.image_path(i))) for i, k in enumerate(keys)]
    else:
        assert files is not None
        items = [(str(k), os.fspath(v)) for k, v in files.items()]
    if not items:
        raise ConfigError("no images to score")
    model_path = landmarker_path(model)
    python = mediapipe_python(python_executable)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="affectfpn-blendshapes-") as tmp:
        listing = Path(tmp) / "images.csv"
        with open(listing, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "path"])
            writer.writerows((k, os.path.abspath(p)) for k, p in items)
        command = [
            python,
            os.fspath(BLENDSHAPE_SCRIPT),
            "--model", model_path,
            "--list", os.fspath(listing),
            "--out", os.fspath(out),
            "--size", str(int(size)),
            "--pad", repr(float(pad)),
            "--workers", str(int(workers)),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-15:])
        raise TeacherProcessError(
            f"the blendshape teacher failed (exit {done.returncode}) running {python}; does it "
            f"have mediapipe==1.2.3 (pass python_executable=, or set "
            f"{MEDIAPIPE_PYTHON_ENV})?\n{tail}"
        )
    if not out.is_file():
        raise TeacherProcessError(f"the blendshape teacher exited without writing {out}")
    return out
