"""Training datasets for affectfpn: the datasets of :mod:`affectfpn.data`, under the name the
training recipes have always used (``from affectfpn.recipes.datasets import AffWild2`` and
``from affectfpn.data import AffWild2`` give the same class).

See :mod:`affectfpn.data` for the sample dict every dataset returns.
"""

from affectfpn.data import (
    AFFECTNET_EXPRESSIONS,
    EXPRESSION_SYNONYMS,
    EXPW_EXPRESSIONS,
    IMAGE_EXTENSIONS,
    AffectDataset,
    AffectNet,
    AffWild2,
    AffWild2MultiTask,
    ExpW,
    ImageFolderExpressions,
    LabelArrays,
    LabelCSV,
    LabelledDataset,
    LabelTable,
    MixedDataset,
    Sample,
    ToUint8Tensor,
    Transform,
    WithPseudoLabels,
    check_disjoint,
    dataset_keys,
    dataset_label_arrays,
    expression_from_name,
    label_counts,
    read_path_list,
)

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
    "expression_from_name",
    "label_counts",
    "read_path_list",
]
