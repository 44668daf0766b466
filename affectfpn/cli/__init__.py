"""The ``affectfpn`` command line (also ``python -m affectfpn``).

Subcommands::

    affectfpn predict   IMAGES...  faces in images -> a table (text, CSV, JSON or Parquet)
    affectfpn corpus    INPUT      a resumable job over a corpus of photos and videos -> parts
    affectfpn video     VIDEO|DIR  per-frame predictions -> CSV, ABAW2 files, annotated video, plot
    affectfpn evaluate  DATASET    ABAW2 scores on an image folder, Aff-Wild2 root or label CSV
    affectfpn calibrate --val DATA fit the expression temperature on a validation set
    affectfpn train     RECIPE     run a training recipe (TOML)
    affectfpn finetune  TRAIN VAL  fine-tune a pretrained model on your own labelled faces
    affectfpn crops     PHOTOS     cut the faces out of your photos as predict does (fine-tuning)
    affectfpn distill   --teacher  a teacher's soft labels for a dataset -> label CSV
    affectfpn soup      MODELS...  average the weights of trained model folders
    affectfpn teachers  COMMAND    external AU teachers: MediaPipe blendshapes, tables, agreement
    affectfpn export    --onnx F   ONNX file and/or a Hub-ready folder
    affectfpn publish   RUN/best   evaluate, card and register a trained model folder
    affectfpn models               the registry of pretrained models and their metrics
    affectfpn download  [MODEL]    fetch weights and the face detector ahead of offline use

Run ``affectfpn COMMAND --help`` for each command's options and examples.

Conventions:

* Results go to stdout (or ``--output``); progress bars, notes and log messages to stderr.
  Progress bars appear only when stderr is a terminal; ``--quiet`` turns them off, and every
  message below an error, so that only results are printed. ``-v`` shows info messages, ``-vv``
  debug messages and tracebacks.
* ``--model`` takes a registered name (``affectfpn models``), a folder holding ``config.json`` and
  ``model.safetensors``, or a Hugging Face Hub repo id (``user/model``, with ``--revision``);
  without it the embedded default model is used.
* ``predict`` writes an aligned text table when stdout is a terminal and CSV otherwise (so
  ``affectfpn predict x.jpg > out.csv`` gives CSV); ``--format`` chooses explicitly, and with
  ``--output FILE`` the suffix decides (``.json`` JSON, ``.txt`` text table, anything else CSV).
  The CSV columns are those of :func:`affectfpn.inference.results.table_columns` (one row per
  face; an image without faces gets one row with ``face_id`` -1 and ``success`` 0); the JSON is
  an array with one :meth:`ImagePrediction.to_dict()
  <affectfpn.inference.results.ImagePrediction.to_dict>` per image; the text table is a summary
  (source, face, detection score, valence, arousal, expression and its probability, active AUs).

Exit codes:

====  =========================================================================================
0     success
1     an error the user can fix: a missing or unreadable file, an unknown model, bad data, no
      network (every :class:`~affectfpn.errors.AffectFPNError` and ``OSError``); one line
      ``affectfpn: error: <message>`` on stderr
2     a usage error (unknown option, missing argument); one line on stderr
3     an internal error (a bug): one line on stderr, and the traceback with ``--verbose``
130   interrupted (Ctrl-C)
====  =========================================================================================
"""

from affectfpn.cli._common import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from affectfpn.cli.app import build_parser, main

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]
