"""Mixing datasets, and pseudo labels (teacher-student): LabelTable and WithPseudoLabels."""

import bisect
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from affectfpn.data.common import (
    NUM_AUS,
    NUM_EXPRESSIONS,
    LabelArrays,
    LabelArraysMixin,
    LabelledDataset,
    Sample,
    au_column_index,
    check_columns,
    csv_with_header,
    expression_from_name,
    format_counts,
    label_counts,
    parse_float,
    where,
)
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS

logger = logging.getLogger("affectfpn.recipes.datasets")

_FORMAT = "affectfpn-label-table"
_PROB_PREFIX = "p_"
ArrayLike = Any  # numpy array, torch tensor or nested sequence


# --------------------------------------------------------------------------------------------
# Helpers over any dataset
# --------------------------------------------------------------------------------------------


def dataset_keys(dataset: Dataset[Sample]) -> list[str]:
    """The sample keys of a dataset: its ``keys`` list, else read from every sample (slow)."""
    keys = getattr(dataset, "keys", None)
    if isinstance(keys, list):
        return keys
    logger.warning("%r has no 'keys' list: reading every sample to get the keys", dataset)
    return [str(dataset[i]["key"]) for i in range(len(dataset))]  # type: ignore[arg-type]


def _labels_from_samples(dataset: Dataset[Sample]) -> LabelArrays:
    n = len(dataset)  # type: ignore[arg-type]
    samples = [dataset[i] for i in range(n)]
    soft = any("expression_soft" in s for s in samples)
    out = LabelArrays.empty(n, soft=soft)
    for i, s in enumerate(samples):
        out.va[i] = np.asarray(s["va"], np.float32)
        out.va_mask[i] = bool(s["va_mask"])
        out.expression[i] = int(s["expression"])
        out.expression_mask[i] = bool(s["expression_mask"])
        out.au[i] = np.asarray(s["au"], np.float32)
        out.au_mask[i] = np.asarray(s["au_mask"], bool)
        if out.expression_soft is not None and "expression_soft" in s:
            out.expression_soft[i] = np.asarray(s["expression_soft"], np.float32)
    if out.expression_soft is not None:
        hard = out.expression_mask & (out.expression_soft.sum(axis=1) == 0)
        rows = np.flatnonzero(hard)
        out.expression_soft[rows, out.expression[rows]] = 1.0
    return out.clean()


def dataset_label_arrays(dataset: Dataset[Sample]) -> LabelArrays:
    """The labels of a dataset: its ``label_arrays()``, else read from every sample (slow)."""
    method = getattr(dataset, "label_arrays", None)
    if callable(method):
        labels = method()
        if isinstance(labels, LabelArrays):
            return labels
    logger.warning("%r has no label_arrays(): reading every sample to get the labels", dataset)
    return _labels_from_samples(dataset)


def check_disjoint(*datasets: Dataset[Sample], by: Callable[[str], str] | None = None) -> None:
    """Raise :class:`DatasetError` if two datasets share a sample key (or a group of keys).

    Args:
        *datasets: datasets with sample keys (for example a train and a validation split).
        by: maps a key to its group, e.g. ``lambda k: k.split("/")[0]`` for Aff-Wild2 videos;
            default: the key itself.
    """
    group = by if by is not None else (lambda k: k)
    seen: dict[str, int] = {}
    for d, dataset in enumerate(datasets):
        groups = {group(k) for k in dataset_keys(dataset)}
        shared = sorted(g for g in groups if g in seen)
        if shared:
            raise DatasetError(
                f"datasets {seen[shared[0]]} and {d} share {len(shared)} "
                f"{'group(s)' if by else 'key(s)'}, e.g. {shared[:3]}; a sample must not be in "
                "both a training and a validation set"
            )
        seen.update(dict.fromkeys(groups, d))


# --------------------------------------------------------------------------------------------
# MixedDataset
# --------------------------------------------------------------------------------------------


class MixedDataset(LabelArraysMixin, ConcatDataset[Sample]):
    """Several training datasets as one, with unique keys and per-sample masks.

    With ``names``, each key becomes ``"<name>:<key>"``; without, the keys of the parts must
    already be unique. When any part carries ``"expression_soft"``, every sample gets it (one-hot
    for a hard label) so that ``default_collate`` can batch them. The parts should give images
    of one size (pass the same ``image_size``).

    Args:
        datasets: the parts, in order.
        names: one short name per part (e.g. ``("affwild2", "affectnet", "expw")``).
        weights: one loss weight per part (each >= 0). With them, every sample carries
            ``"weight"`` (a float32 scalar) and the training losses weigh its labels by it, so
            that a large part (say, a neutral-heavy set) can count less than its size.

    Raises:
        DatasetError: keys that are not unique (pass ``names``).
    """

    def __init__(
        self,
        datasets: Sequence[Dataset[Sample]],
        names: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(list(datasets))
        self.weights: list[float] | None = None
        if weights is not None:
            values = [float(w) for w in weights]
            if len(values) != len(self.datasets) or not all(
                math.isfinite(w) and w >= 0 for w in values
            ):
                raise ConfigError(
                    f"weights must be {len(self.datasets)} finite numbers >= 0, got {list(weights)}"
                )
            self.weights = values
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != len(self.datasets) or len(set(names)) != len(names) or "" in names:
                raise ConfigError(
                    f"names must be {len(self.datasets)} distinct non-empty strings, got {names}"
                )
        self.names: list[str] | None = list(names) if names is not None else None
        keys: list[str] = []
        for d, dataset in enumerate(self.datasets):
            part = dataset_keys(dataset)
            keys.extend(part if names is None else [f"{names[d]}:{k}" for k in part])
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise DatasetError(
                f"sample key {dup!r} occurs more than once in the mixed datasets; pass names=... "
                "to prefix each dataset's keys"
            )
        self._keys = keys
        self._labels = LabelArrays.concat([dataset_label_arrays(d) for d in self.datasets])
        self.name = "+".join(names) if names else "mixed"

    @property
    def keys(self) -> list[str]:
        """The (prefixed) sample keys, in index order."""
        return self._keys

    def dataset_index(self) -> np.ndarray:
        """int64 [N]: which part each sample comes from."""
        sizes = np.diff(np.concatenate([[0], self.cumulative_sizes]))
        return np.repeat(np.arange(len(self.datasets)), sizes)

    def labels_summary(self) -> str:
        """A summary of the whole and of each part."""
        lines = [format_counts(self.name, self.counts())]
        for d, dataset in enumerate(self.datasets):
            title = self.names[d] if self.names else getattr(dataset, "name", f"part {d}")
            lines.append(format_counts(f"  {title}", label_counts(dataset_label_arrays(dataset))))
        return "\n".join(lines)

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        d = bisect.bisect_right(self.cumulative_sizes, i)
        j = i - (self.cumulative_sizes[d - 1] if d else 0)
        sample = dict(self.datasets[d][j])
        sample["key"] = self._keys[i]
        if self.weights is not None:
            sample["weight"] = torch.tensor(self.weights[d], dtype=torch.float32)
        if self._labels.expression_soft is not None and "expression_soft" not in sample:
            sample["expression_soft"] = torch.from_numpy(self._labels.expression_soft[i].copy())
        return sample


# --------------------------------------------------------------------------------------------
# LabelTable
# --------------------------------------------------------------------------------------------


def _np(value: ArrayLike, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _check_rows(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.shape != shape:
        raise ConfigError(f"{name} has shape {array.shape}, expected {shape}")
    return array


def _check_probs(probs: np.ndarray, source: str) -> None:
    if not (np.isfinite(probs).all() and probs.min(initial=0) >= 0 and probs.max(initial=0) <= 1):
        raise DatasetError(f"{source}: expression probabilities must lie in [0, 1]")
    sums = probs.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > 1e-3):
        raise DatasetError(f"{source}: expression probabilities must sum to 1 (found {sums.max()})")


class LabelTable:
    """Labels by sample key: teacher pseudo labels, saved to and loaded from CSV or JSON.

    Rows are matched to samples by key, never by position. Every task is optional per key (a
    value with mask False is no label). The expression may be hard (a class index) or soft (a
    probability vector over EXPRESSIONS; its argmax is the class index). ``len()``, iteration
    (over keys), ``in``, ``table[key]`` and ``table.get(key)`` work as for a read-only mapping
    ``key -> label fields`` (the tensors of the sample contract, with ``"expression_soft"`` when
    the table is soft).

    Typical teacher-student use: ``LabelTable.from_teacher_outputs(train_keys, ...)`` per teacher,
    :meth:`merge` them, :meth:`save`; later :meth:`load` and wrap the student's training set in
    :class:`WithPseudoLabels`.

    Args:
        keys: the unique sample keys.
        labels: their labels (default: none).

    Raises:
        DatasetError: a repeated key, or labels outside their ranges.
    """

    def __init__(self, keys: Sequence[str], labels: LabelArrays | None = None) -> None:
        self._keys = [str(k) for k in keys]
        self._pos = {k: i for i, k in enumerate(self._keys)}
        if len(self._pos) != len(self._keys):
            dup = next(k for i, k in enumerate(self._keys) if self._pos[k] != i)
            raise DatasetError(f"label table key {dup!r} occurs more than once")
        self._labels = labels if labels is not None else LabelArrays.empty(len(self._keys))
        if len(self._labels) != len(self._keys):
            raise ConfigError(f"{len(self._keys)} keys but {len(self._labels)} label rows")
        self._labels.clean().validate()
        if self._labels.expression_soft is not None:
            rows = self._labels.expression_mask
            _check_probs(self._labels.expression_soft[rows], "label table")
            self._labels.expression[rows] = self._labels.expression_soft[rows].argmax(axis=1)

    # -- mapping --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._pos

    def __getitem__(self, key: str) -> Sample:
        return self._labels.row(self._pos[key])

    def get(self, key: str, default: Sample | None = None) -> Sample | None:
        """The label fields of ``key``, or ``default``."""
        i = self._pos.get(key)
        return default if i is None else self._labels.row(i)

    def position(self, key: str) -> int | None:
        """The row of ``key``, or ``None``."""
        return self._pos.get(key)

    @property
    def key_list(self) -> list[str]:
        """The keys, in row order."""
        return list(self._keys)

    @property
    def labels(self) -> LabelArrays:
        """The label arrays, one row per key."""
        return self._labels

    @property
    def has_soft_expression(self) -> bool:
        """Whether expressions are stored as probability vectors."""
        return self._labels.expression_soft is not None

    def counts(self) -> dict[str, int]:
        """Numbers of keys and labels per task."""
        return label_counts(self._labels)

    def labels_summary(self) -> str:
        """A few lines describing the table."""
        return format_counts("label table", self.counts())

    def __repr__(self) -> str:
        return f"LabelTable({len(self)} keys)"

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        keys: Sequence[str],
        *,
        va: ArrayLike | None = None,
        va_mask: ArrayLike | None = None,
        expression: ArrayLike | None = None,
        expression_probs: ArrayLike | None = None,
        expression_mask: ArrayLike | None = None,
        au: ArrayLike | None = None,
        au_mask: ArrayLike | None = None,
    ) -> "LabelTable":
        """Build a table from per-key arrays (numpy or torch); a task left ``None`` is absent.

        Args:
            keys: N unique keys.
            va: [N, 2] in [-1, 1]. va_mask: [N] (default: finite rows in range).
            expression: [N] class indices; or ``expression_probs`` [N, 7] (soft, rows sum to
                1). expression_mask: [N] (default: all True; -1 in ``expression`` is no label).
            au: [N, 12] 0/1 or probabilities. au_mask: [N, 12] (default: finite and in [0, 1]).
        """
        n = len(keys)
        labels = LabelArrays.empty(n, soft=expression_probs is not None)
        if va is not None:
            v = _check_rows("va", _np(va, np.float32), (n, 2))
            ok = np.isfinite(v).all(axis=1) & (np.abs(np.nan_to_num(v, nan=9)) <= 1).all(axis=1)
            m = ok if va_mask is None else _np(va_mask, bool) & ok
            labels.va[:], labels.va_mask[:] = np.where(m[:, None], v, 0), m
        if expression_probs is not None:
            p = _check_rows("expression_probs", _np(expression_probs, np.float32), (n, 7))
            m = np.ones(n, bool) if expression_mask is None else _np(expression_mask, bool)
            assert labels.expression_soft is not None
            labels.expression_soft[:] = np.where(m[:, None], p, 0)
            labels.expression[:] = np.where(m, p.argmax(axis=1), 0)
            labels.expression_mask[:] = m
        elif expression is not None:
            e = _check_rows("expression", _np(expression, np.int64), (n,))
            m = e >= 0 if expression_mask is None else _np(expression_mask, bool) & (e >= 0)
            labels.expression[:], labels.expression_mask[:] = np.where(m, e, 0), m
        if au is not None:
            a = _check_rows("au", _np(au, np.float32), (n, NUM_AUS))
            ok = np.isfinite(a) & (np.nan_to_num(a, nan=-1) >= 0) & (np.nan_to_num(a) <= 1)
            m = ok if au_mask is None else _np(au_mask, bool) & ok
            labels.au[:], labels.au_mask[:] = np.where(m, a, 0), m
        return cls(keys, labels)

    @classmethod
    def from_teacher_outputs(
        cls,
        keys: Sequence[str],
        *,
        va: ArrayLike | None = None,
        expression_logits: ArrayLike | None = None,
        au_logits: ArrayLike | None = None,
        soft_expression: bool = False,
        temperature: float = 1.0,
        au_threshold: float | None = 0.5,
        va_clip: float = 0.99,
    ) -> "LabelTable":
        """Turn a teacher's raw outputs into pseudo labels (the reference recipe by default).

        Args:
            keys: N unique keys (only training samples: never label validation frames).
            va: [N, 2] predictions, clipped to ``+-va_clip``.
            expression_logits: [N, 7]; the argmax class, or with ``soft_expression`` the
                softmax (at ``temperature``) probabilities.
            au_logits: [N, 12]; 1 where sigmoid(logit) > ``au_threshold``, else 0; with
                ``au_threshold=None`` the sigmoid probabilities themselves (soft AU labels).
            soft_expression: keep expression probabilities instead of the class index.
            temperature: softmax temperature for soft expressions.
            au_threshold: probability threshold for AU labels, or ``None`` for soft labels.
            va_clip: VA values are clipped to [-va_clip, va_clip].
        """
        if not (0 < va_clip <= 1):
            raise ConfigError(f"va_clip must be in (0, 1], got {va_clip}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"temperature must be positive, got {temperature}")
        kwargs: dict[str, Any] = {}
        if va is not None:
            kwargs["va"] = np.clip(_np(va, np.float32), -va_clip, va_clip)
        if expression_logits is not None:
            logits = torch.as_tensor(_np(expression_logits, np.float32))
            if soft_expression:
                kwargs["expression_probs"] = torch.softmax(logits / temperature, dim=-1).numpy()
            else:
                kwargs["expression"] = logits.argmax(dim=-1).numpy()
        if au_logits is not None:
            probs = torch.sigmoid(torch.as_tensor(_np(au_logits, np.float32))).numpy()
            kwargs["au"] = (
                probs if au_threshold is None else (probs >= au_threshold).astype(np.float32)
            )
        return cls.from_arrays(keys, **kwargs)

    @classmethod
    def merge(cls, tables: Iterable["LabelTable"]) -> "LabelTable":
        """Join tables by key (e.g. the VA, EXPR and AU teachers' tables).

        Keys are the union (in first-seen order); for each task, a later table's label replaces an
        earlier one for the same key.
        """
        tables = list(tables)
        keys: dict[str, None] = {}
        for t in tables:
            keys.update(dict.fromkeys(t._keys))
        key_list = list(keys)
        pos = {k: i for i, k in enumerate(key_list)}
        soft = any(t.has_soft_expression for t in tables)
        out = LabelArrays.empty(len(key_list), soft=soft)
        for t in tables:
            idx = np.array([pos[k] for k in t._keys], np.int64)
            lab = t._labels
            m = lab.va_mask
            out.va[idx[m]], out.va_mask[idx[m]] = lab.va[m], True
            m = lab.expression_mask
            out.expression[idx[m]], out.expression_mask[idx[m]] = lab.expression[m], True
            if out.expression_soft is not None:
                out.expression_soft[idx[m]] = lab.soft_or_onehot()[m]
            rows, cols = np.nonzero(lab.au_mask)
            out.au[idx[rows], cols], out.au_mask[idx[rows], cols] = lab.au[rows, cols], True
        return cls(key_list, out)

    def drop(self, keys: Iterable[str]) -> "LabelTable":
        """A copy of the table without ``keys`` (e.g. to be sure no validation key is left)."""
        gone = set(keys)
        keep = np.array([k not in gone for k in self._keys], bool)
        return LabelTable(
            [k for k in self._keys if k not in gone], self._labels.take(np.flatnonzero(keep))
        )

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table to ``path``: ``.csv`` or ``.json`` (chosen by the suffix).

        CSV columns: ``key, valence, arousal, expression`` (a name from EXPRESSIONS), then
        ``p_<Expression>`` x 7 when soft, then ``AU1`` .. ``AU26``; an empty cell is no label.
        JSON: ``{"format": "affectfpn-label-table", "version": 1, "expressions": [...],
        "action_units": [...], "labels": {key: {"va": [v, a], "expression": index or [p x 7],
        "au": [0/1/p or null x 12]}}}`` with absent tasks left out.
        """
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix == ".csv":
            self._save_csv(p)
        elif suffix == ".json":
            self._save_json(p)
        else:
            raise ConfigError(f"label table path {os.fspath(p)!r} must end with .csv or .json")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LabelTable":
        """Read a table written by :meth:`save` (``.csv`` or ``.json``).

        Raises:
            DatasetError: a malformed file (naming the file and line, or key for JSON).
        """
        p = Path(path)
        if not p.is_file():
            raise DatasetError(f"label table {os.fspath(p)!r} does not exist")
        suffix = p.suffix.lower()
        if suffix == ".csv":
            return cls._load_csv(p)
        if suffix == ".json":
            return cls._load_json(p)
        raise ConfigError(f"label table path {os.fspath(p)!r} must end with .csv or .json")

    def _save_csv(self, path: Path) -> None:
        import csv

        lab = self._labels
        soft = lab.expression_soft
        header = ["key", "valence", "arousal", "expression"]
        if soft is not None:
            header += [f"{_PROB_PREFIX}{name}" for name in EXPRESSIONS]
        header += list(ACTION_UNITS)

        def fmt(x: float) -> str:
            return f"{float(x):.9g}"

        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i, key in enumerate(self._keys):
                row = [key]
                row += [fmt(v) for v in lab.va[i]] if lab.va_mask[i] else ["", ""]
                row.append(EXPRESSIONS[lab.expression[i]] if lab.expression_mask[i] else "")
                if soft is not None:
                    row += [fmt(v) for v in soft[i]] if lab.expression_mask[i] else [""] * 7
                row += [fmt(lab.au[i, j]) if lab.au_mask[i, j] else "" for j in range(NUM_AUS)]
                writer.writerow(row)

    @classmethod
    def _load_csv(cls, path: Path) -> "LabelTable":
        rows, header_line, names = csv_with_header(path, empty="empty label table")
        lower = [n.lower() for n in names]
        if "key" not in lower:
            raise DatasetError(f"{where(path, header_line)}: no 'key' column in {names}")
        c_key = lower.index("key")
        c_va = [lower.index(n) for n in ("valence", "arousal") if n in lower]
        if len(c_va) == 1:
            raise DatasetError(f"{where(path, header_line)}: 'valence' and 'arousal' go together")
        c_expr = lower.index("expression") if "expression" in lower else None
        c_prob = [
            lower.index(f"{_PROB_PREFIX}{n}".lower())
            for n in EXPRESSIONS
            if f"{_PROB_PREFIX}{n}".lower() in lower
        ]
        if c_prob and len(c_prob) != NUM_EXPRESSIONS:
            raise DatasetError(
                f"{where(path, header_line)}: soft expressions need all 7 columns "
                f"{[_PROB_PREFIX + n for n in EXPRESSIONS]}"
            )
        au_cols = {}
        for c, name in enumerate(names):
            j = au_column_index(name)
            if j is not None:
                au_cols[j] = c

        keys: list[str] = []
        parsed: list[tuple[Any, ...]] = []
        for line, cells in rows:
            check_columns(cells, len(names), file=path, line=line)

            def num(c: int, cells: list[str] = cells, line: int = line) -> float | None:
                text = cells[c].strip()
                return (
                    None if not text else parse_float(text, column=names[c], file=path, line=line)
                )

            key = cells[c_key].strip()
            if not key:
                raise DatasetError(f"{where(path, line)}: empty key")
            va = [num(c) for c in c_va]
            va_ok = len(va) == 2 and None not in va
            expr = -1
            if c_expr is not None and cells[c_expr].strip():
                text = cells[c_expr].strip()
                index = expression_from_name(text)
                if index is None:
                    try:
                        index = int(text)
                    except ValueError:
                        index = -1
                if not 0 <= index < NUM_EXPRESSIONS:
                    raise DatasetError(f"{where(path, line)}: unknown expression {text!r}")
                expr = index
            probs = [num(c) for c in c_prob]
            has_probs = bool(probs) and None not in probs
            if probs and not has_probs and any(p is not None for p in probs):
                raise DatasetError(f"{where(path, line)}: some expression probabilities are empty")
            if has_probs:
                arr = np.array(probs, np.float32)
                _check_probs(arr, where(path, line))
                if expr >= 0 and int(arr.argmax()) != expr:
                    raise DatasetError(
                        f"{where(path, line)}: expression {EXPRESSIONS[expr]!r} is not the most "
                        "probable class of its probabilities"
                    )
            aus = {j: num(c) for j, c in au_cols.items()}
            keys.append(key)
            parsed.append((line, va if va_ok else None, expr, probs if has_probs else None, aus))

        soft = bool(c_prob)
        labels = LabelArrays.empty(len(keys), soft=soft)
        for i, (line, va, expr, probs, aus) in enumerate(parsed):
            if va is not None:
                if not all(math.isfinite(v) and -1 <= v <= 1 for v in va):
                    raise DatasetError(f"{where(path, line)}: valence/arousal outside [-1, 1]")
                labels.va[i], labels.va_mask[i] = va, True
            if probs is not None:
                assert labels.expression_soft is not None
                labels.expression_soft[i] = probs
                labels.expression[i], labels.expression_mask[i] = int(np.argmax(probs)), True
            elif expr >= 0:
                labels.expression[i], labels.expression_mask[i] = expr, True
                if labels.expression_soft is not None:
                    labels.expression_soft[i, expr] = 1.0
            for j, value in aus.items():
                if value is None:
                    continue
                if not 0 <= value <= 1:
                    raise DatasetError(f"{where(path, line)}: {ACTION_UNITS[j]} outside [0, 1]")
                labels.au[i, j], labels.au_mask[i, j] = value, True
        lines = [item[0] for item in parsed]
        seen: dict[str, int] = {}
        for key, line in zip(keys, lines, strict=True):
            if key in seen:
                raise DatasetError(
                    f"{where(path, line)}: key {key!r} already appeared on line {seen[key]}"
                )
            seen[key] = line
        return cls(keys, labels)

    def _save_json(self, path: Path) -> None:
        lab = self._labels
        entries: dict[str, dict[str, Any]] = {}
        for i, key in enumerate(self._keys):
            entry: dict[str, Any] = {}
            if lab.va_mask[i]:
                entry["va"] = [float(v) for v in lab.va[i]]
            if lab.expression_mask[i]:
                if lab.expression_soft is not None:
                    entry["expression"] = [float(v) for v in lab.expression_soft[i]]
                else:
                    entry["expression"] = int(lab.expression[i])
            if lab.au_mask[i].any():
                entry["au"] = [
                    float(lab.au[i, j]) if lab.au_mask[i, j] else None for j in range(NUM_AUS)
                ]
            entries[key] = entry
        doc = {
            "format": _FORMAT,
            "version": 1,
            "expressions": list(EXPRESSIONS),
            "action_units": list(ACTION_UNITS),
            "labels": entries,
        }
        path.write_text(json.dumps(doc, indent=1), encoding="utf-8")

    @classmethod
    def _load_json(cls, path: Path) -> "LabelTable":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read label table {os.fspath(path)!r}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise DatasetError(f"{os.fspath(path)}: not an affectfpn label table (no 'format')")
        for field, expected in (("expressions", EXPRESSIONS), ("action_units", ACTION_UNITS)):
            if list(doc.get(field, expected)) != list(expected):
                raise DatasetError(
                    f"{os.fspath(path)}: {field} {doc[field]} differ from this version's "
                    f"{list(expected)}"
                )
        entries = doc.get("labels")
        if not isinstance(entries, dict):
            raise DatasetError(f"{os.fspath(path)}: 'labels' must be an object keyed by sample key")
        keys = list(entries)
        soft = any(isinstance(e.get("expression"), list) for e in entries.values())
        labels = LabelArrays.empty(len(keys), soft=soft)
        for i, key in enumerate(keys):
            entry = entries[key]
            source = f"{os.fspath(path)} key {key!r}"
            try:
                if "va" in entry:
                    va = np.array(entry["va"], np.float32)
                    if va.shape != (2,) or not (np.abs(va) <= 1).all():
                        raise ValueError("va must be two values in [-1, 1]")
                    labels.va[i], labels.va_mask[i] = va, True
                if "expression" in entry:
                    value = entry["expression"]
                    if isinstance(value, list):
                        probs = np.array(value, np.float32)
                        if probs.shape != (NUM_EXPRESSIONS,):
                            raise ValueError("expression probabilities need 7 values")
                        _check_probs(probs, source)
                        assert labels.expression_soft is not None
                        labels.expression_soft[i] = probs
                        labels.expression[i] = int(probs.argmax())
                    else:
                        if isinstance(value, bool) or not 0 <= int(value) < NUM_EXPRESSIONS:
                            raise ValueError("expression must be an index 0..6 or 7 probabilities")
                        labels.expression[i] = int(value)
                        if labels.expression_soft is not None:
                            labels.expression_soft[i, int(value)] = 1.0
                    labels.expression_mask[i] = True
                if "au" in entry:
                    au = entry["au"]
                    if not isinstance(au, list) or len(au) != NUM_AUS:
                        raise ValueError("au must be a list of 12 values (null: no label)")
                    for j, v in enumerate(au):
                        if v is None:
                            continue
                        if not 0 <= float(v) <= 1:
                            raise ValueError(f"{ACTION_UNITS[j]} outside [0, 1]")
                        labels.au[i, j], labels.au_mask[i, j] = float(v), True
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{source}: {exc}") from exc
        return cls(keys, labels)


# --------------------------------------------------------------------------------------------
# WithPseudoLabels
# --------------------------------------------------------------------------------------------


class WithPseudoLabels(LabelledDataset):
    """A dataset whose missing labels are filled from a :class:`LabelTable`, matched by key.

    For each sample, each task (and each AU) without a real label takes the table's label for
    the sample's key when there is one. With ``real_label_wins`` (the default) a real label is
    never replaced; with ``False`` the table's label replaces it. Keys absent from the table are
    left as they are; table keys absent from the dataset are ignored (so a table that also holds
    validation keys can never add samples).

    When the table (or the dataset) has soft expressions, every sample carries
    ``"expression_soft"`` (float32 [7]): the teacher's probabilities, one-hot for a real label,
    zeros when there is none; ``"expression"`` is its argmax.

    Args:
        dataset: the dataset to fill (with ``keys`` and ``label_arrays()``, as every dataset
            here has).
        table: the pseudo labels.
        real_label_wins: keep real labels over the table's.
        distill_weight: knowledge distillation of expressions. With a weight ``w`` in (0, 1], a
            sample that has both a real expression label and a soft one in the table (a teacher
            ensemble's probabilities) learns from ``(1 - w) * one_hot(real) + w * teacher``;
            cross-entropy against that blend is ``(1 - w)`` times the hard loss plus ``w``
            times the distillation loss. The table must then be soft. ``None`` (the default)
            fills missing labels only.

    Raises:
        ConfigError: ``distill_weight`` outside (0, 1], or given with a hard table.
    """

    def __init__(
        self,
        dataset: Dataset[Sample],
        table: LabelTable,
        *,
        real_label_wins: bool = True,
        distill_weight: float | None = None,
    ) -> None:
        if distill_weight is not None:
            if isinstance(distill_weight, bool) or not (
                isinstance(distill_weight, int | float) and 0 < distill_weight <= 1
            ):
                raise ConfigError(
                    f"distill_weight must be a number in (0, 1] (the teacher's share of the "
                    f"expression target), got {distill_weight!r}"
                )
            if not table.has_soft_expression:
                raise ConfigError(
                    "distill_weight needs a table of soft expression labels (probabilities), "
                    "e.g. one written by affectfpn.recipes.teacher_student with expression='soft'"
                )
        self.dataset = dataset
        self.table = table
        self.real_label_wins = real_label_wins
        self.distill_weight = None if distill_weight is None else float(distill_weight)
        self.name = f"{getattr(dataset, 'name', 'dataset')}+pseudo"
        self._keys_cache = list(dataset_keys(dataset))
        base = dataset_label_arrays(dataset)
        pos = np.array([table.position(k) for k in self._keys_cache], dtype=object)
        found = np.array([p is not None for p in pos], bool)
        rows = np.flatnonzero(found)
        t = table.labels.take(pos[found].astype(np.int64))
        soft = table.has_soft_expression or base.expression_soft is not None
        out = LabelArrays(
            va=base.va.copy(),
            va_mask=base.va_mask.copy(),
            expression=base.expression.copy(),
            expression_mask=base.expression_mask.copy(),
            au=base.au.copy(),
            au_mask=base.au_mask.copy(),
            expression_soft=base.soft_or_onehot().copy() if soft else None,
        )
        wins = real_label_wins

        take = t.va_mask & ~(out.va_mask[rows] & wins)
        out.va[rows[take]], out.va_mask[rows[take]] = t.va[take], True
        n_va = int(take.sum())

        take = t.expression_mask & ~(out.expression_mask[rows] & wins)
        out.expression[rows[take]], out.expression_mask[rows[take]] = t.expression[take], True
        if out.expression_soft is not None:
            out.expression_soft[rows[take]] = t.soft_or_onehot()[take]
        n_expr = int(take.sum())
        n_distilled = 0
        if self.distill_weight is not None and out.expression_soft is not None:
            both = t.expression_mask & out.expression_mask[rows] & ~take
            w = self.distill_weight
            out.expression_soft[rows[both]] = (1.0 - w) * out.expression_soft[rows[both]] + w * (
                t.soft_or_onehot()[both]
            )
            n_distilled = int(both.sum())

        take_au = t.au_mask & ~(out.au_mask[rows] & wins)
        r, c = np.nonzero(take_au)
        out.au[rows[r], c], out.au_mask[rows[r], c] = t.au[r, c], True
        n_au = int(take_au.any(axis=1).sum())

        self._labels = out.clean()
        self._labels.validate()
        self.filled = {"va": n_va, "expression": n_expr, "au": n_au}
        self.distilled = n_distilled
        logger.info(
            "%s: %d of %d samples have a table row; labels taken from the table: VA %d, "
            "expression %d, AU (samples) %d; expressions distilled: %d",
            self.name,
            len(rows),
            len(self._keys_cache),
            n_va,
            n_expr,
            n_au,
            n_distilled,
        )

    def __getitem__(self, index: int) -> Sample:
        i = self._index(index)
        sample = dict(self.dataset[i])
        if sample.get("key") != self._keys_cache[i]:  # type: ignore[index]
            raise DatasetError(
                f"sample {i} has key {sample.get('key')!r} but the dataset's keys list says "
                f"{self._keys_cache[i]!r}"  # type: ignore[index]
            )
        sample.update(self._labels.row(i))
        return sample
