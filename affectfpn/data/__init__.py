"""Datasets for training and evaluation: Aff-Wild2, AffectNet, ExpW, image folders, CSV tables.

Every dataset returns, for each index, the sample dict of the training contract:

* ``"image"``: ``transform(rgb_pil_image)``; by default a uint8 tensor 3 x H x W (RGB), resized
  to ``image_size`` (H, W) when given;
* ``"key"``: a unique, stable string (a relative path; ``"<video>/<frame:05d>"`` for Aff-Wild2;
  ``"<image>#<face_id>"`` for ExpW);
* ``"va"`` float32 [2] and ``"va_mask"`` bool [];
* ``"expression"`` int64 [] (EXPRESSIONS order) and ``"expression_mask"`` bool [];
* ``"au"`` float32 [12] and ``"au_mask"`` bool [12];
* optionally ``"expression_soft"`` float32 [7]: a probability vector (teacher pseudo labels);
  when a dataset has it, every one of its samples has it (one-hot for a hard label, zeros when
  the expression is missing) and ``"expression"`` is its argmax. A trainer uses the soft target
  (cross-entropy against the probabilities) when the key is in the batch.

A missing label is 0 with mask False; invalid markers in annotation files (VA -5 or outside
[-1, 1], EXPR -1, AU -1) are never read as values. ``torch.utils.data.default_collate`` batches
the samples.

Each dataset also has ``keys`` (list of sample keys), ``label_arrays()`` and ``masks()`` (labels
without reading images), and ``counts()`` / ``labels_summary()`` for logging.

Example:
    >>> from affectfpn.data import AffWild2, AffectNet, MixedDataset
    >>> train = MixedDataset(
    ...     [AffWild2(root, "expression", "train", image_size=(128, 128)),
    ...      AffectNet(affectnet_root, csv, image_size=(128, 128))],
    ...     names=["affwild2", "affectnet"],
    ... )  # doctest: +SKIP
"""

from affectfpn.data.affwild2 import AffWild2, AffWild2MultiTask
from affectfpn.data.common import (
    EXPRESSION_SYNONYMS,
    IMAGE_EXTENSIONS,
    AffectDataset,
    LabelArrays,
    LabelledDataset,
    Sample,
    ToUint8Tensor,
    Transform,
    expression_from_name,
    label_counts,
    read_path_list,
)
from affectfpn.data.images import (
    AFFECTNET_EXPRESSIONS,
    EXPW_EXPRESSIONS,
    AffectNet,
    ExpW,
    ImageFolderExpressions,
    LabelCSV,
)
from affectfpn.data.pseudo import (
    LabelTable,
    MixedDataset,
    WithPseudoLabels,
    check_disjoint,
    dataset_keys,
    dataset_label_arrays,
)
from affectfpn.data.types import dataset_types, is_affwild2_root, spec_for_path

__all__ = [
    "AFFECTNET_EXPRESSIONS",
    "EXPRESSION_SYNONYMS",
    "EXPW_EXPRESSIONS",
    "IMAGE_EXTENSIONS",
    "AffWild2",
    "AffWild2MultiTask",
    "AffectDataset",
    "AffectNet",
    "ExpW",
    "ImageFolderExpressions",
    "LabelArrays",
    "LabelCSV",
    "LabelTable",
    "LabelledDataset",
    "MixedDataset",
    "Sample",
    "ToUint8Tensor",
    "Transform",
    "WithPseudoLabels",
    "check_disjoint",
    "dataset_keys",
    "dataset_label_arrays",
    "dataset_types",
    "expression_from_name",
    "is_affwild2_root",
    "label_counts",
    "read_path_list",
    "spec_for_path",
]
