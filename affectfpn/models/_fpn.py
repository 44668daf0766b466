"""The feature pyramid neck: top-down path with lateral connections (Lin et al., 2017)."""

import functools
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=64)
def _window_weights(
    sizes: tuple[tuple[int, int], ...], extra_level: bool
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """For each backbone map, the weights that give every pooled level's 3x3 window sums.

    A zero-padded 3x3 convolution's spatial mean is its kernel applied to nine window sums of
    its input: the sum of the pixels that kernel tap ``(ky, kx)`` reads, over all output pixels.
    For the merged map ``M_i`` (H x W) these sums are
    ``A[ky] @ M_i @ B[kx]^T``: ``A`` (3 x H) marks the rows each kernel row reads (all but the
    last, all, all but the first), ``B`` the same for columns. As ``M_i = lateral_i(C_i) +
    up(M_i+1)`` and nearest upsampling is a 0/1 matrix on each axis, the same sums on ``M_i+1``
    have the weights ``A @ U_rows`` and ``B @ U_cols``: pulled back level by level, every
    level's window sums become weighted sums of the backbone maps ``C_j``, j >= i. With
    ``extra_level``, P6 (P5's smoothed map at every second pixel) adds a tenth level on the top
    map, whose output rows and columns are the even ones.

    For each map ``j`` (lowest first) the weights form a matrix ``K`` (``9 L_j x H_j W_j``): row
    ``9 l + 3 ky + kx`` holds the pixel weights of tap ``(ky, kx)`` of the ``l``-th level that
    reads map ``j`` (levels ``0..j`` in order, then P6 on the top map). Its rows are sums over a
    few rectangles (with sizes that halve: the corners, the edges between them and the
    interior), so it is returned factored as ``(coef, basis)`` with ``K = coef @ basis``:
    ``basis`` (``r x H_j W_j``) marks the ``r`` rectangles and ``coef`` (``9 L_j x r``, all
    weights >= 0) combines them; float64, on the CPU.
    """

    def taps(n: int, step: int = 1) -> np.ndarray:
        # taps(n)[k, r] = 1 where kernel offset k - 1 reads input r from an output in 0, step..
        out = np.arange(0, n, step)
        w = np.zeros((3, n))
        for k in range(3):
            read = out + k - 1
            w[k, read[(read >= 0) & (read < n)]] = 1.0
        return w

    def nearest(big: int, small: int) -> np.ndarray:
        # The 0/1 matrix (big x small) of F.interpolate(size=..., mode="nearest") along one
        # axis: output index o reads input floor(o * (small / big)) (float32, as torch computes
        # it), at most small - 1.
        scale = np.float32(small) / np.float32(big)
        index = np.minimum(np.floor(np.arange(big, dtype=np.float32) * scale), small - 1)
        return np.eye(small)[index.astype(np.int64)]

    per_map: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in sizes]
    for i, (h, w) in enumerate(sizes):
        a, b = taps(h), taps(w)
        per_map[i].append((a, b))
        for j in range(i + 1, len(sizes)):
            (h0, w0), (h1, w1) = sizes[j - 1], sizes[j]
            a, b = a @ nearest(h0, h1), b @ nearest(w0, w1)
            per_map[j].append((a, b))
    if extra_level:
        h, w = sizes[-1]
        per_map[-1].append((taps(h, 2), taps(w, 2)))
    # Plain numpy, so that nothing here is recorded when the model is traced (ONNX export):
    # the weights enter the graph as constants.
    factored = []
    for pairs in per_map:
        rows = np.concatenate([a for a, _ in pairs])  # 3L x H
        cols = np.concatenate([b for _, b in pairs])  # 3L x W
        # Rows (columns) on which every weight agrees form one part; the sums over the
        # rectangles of a row part and a column part are the basis, and every window sum is
        # a combination of them with non-negative weights (no cancellation).
        _, row_part = np.unique(rows.T, axis=0, return_inverse=True)
        _, col_part = np.unique(cols.T, axis=0, return_inverse=True)
        row_part, col_part = row_part.reshape(-1), col_part.reshape(-1)
        n_rows, n_cols = int(row_part.max()) + 1, int(col_part.max()) + 1
        row_ind = np.eye(n_rows)[row_part].T  # parts x H
        col_ind = np.eye(n_cols)[col_part].T  # parts x W
        basis = np.einsum("ph,qw->pqhw", row_ind, col_ind).reshape(n_rows * n_cols, -1)
        row_value = rows @ row_ind.T / row_ind.sum(axis=1)  # 3L x parts: the agreed weight
        col_value = cols @ col_ind.T / col_ind.sum(axis=1)
        levels = len(pairs)
        coef = np.einsum(
            "lyp,lxq->lyxpq",
            row_value.reshape(levels, 3, n_rows),
            col_value.reshape(levels, 3, n_cols),
        ).reshape(9 * levels, n_rows * n_cols)
        factored.append((torch.from_numpy(coef), torch.from_numpy(basis)))
    return tuple(factored)


class FeaturePyramid(nn.Module):
    """Turn backbone maps C2..C5 into pyramid levels P2..P5 (and optionally P6).

    Each level above the lowest is upsampled to the size of the level below (so odd input sizes
    work) and added to that level's 1x1 lateral projection; a 3x3 convolution then smooths every
    merged map. With ``extra_level`` a P6 is taken from P5 by a stride-2 max-pool, as in the
    authors' code.

    :meth:`forward` returns the maps; :meth:`pooled` returns their spatial means, which is all
    the heads use, computing neither the smoothed maps nor the merged ones nor the laterals: the
    whole neck is linear up to the mean, so each level's mean is a few weighted sums of each
    backbone map (see :func:`_window_weights`) followed by small matrix products. On F3R
    ResNet-50 at 128 px the neck's share of the model's multiply-adds drops from 9 % to 0.1 %.
    """

    def __init__(self, in_channels: tuple[int, ...], width: int, *, extra_level: bool) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, padding=1) for _ in in_channels
        )
        self.extra_level = extra_level
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)  # type: ignore[arg-type]

    def merged(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The top-down merged maps, before smoothing (lowest level first)."""
        top = self.lateral[-1](features[-1])
        merged = [top]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            merged.insert(0, top)
        return merged

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = [smooth(m) for smooth, m in zip(self.smooth, self.merged(features), strict=True)]
        if self.extra_level:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs

    def pooled(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The spatial mean of every level (``N x width`` each), as ``forward`` then ``mean``.

        Outputs and gradients are those of the maps up to float rounding. Per backbone map
        ``C_j``, one matrix product gives a few weighted sums from which the nine window sums of
        every level that reads it follow (:func:`_window_weights`); the lateral's 1x1 kernel
        maps those few sums, and its bias enters times the weights' totals (a top map with
        fewer pixels than sums gets its lateral first). The window sums of each level then
        meet its smoothing kernel once per image. Only shapes decide the weights, so tracing
        and ONNX export (fixed height and width) see constants.
        """
        sizes = tuple((int(f.shape[-2]), int(f.shape[-1])) for f in features)
        weights = _window_weights(sizes, self.extra_level)
        levels = len(features) + int(self.extra_level)
        windows: list[torch.Tensor | None] = [None] * levels
        laterals = cast(list[nn.Conv2d], list(self.lateral))
        for j, (c, lateral, (coef, basis)) in enumerate(
            zip(features, laterals, weights, strict=True)
        ):
            coef, basis = coef.to(c), basis.to(c)  # 9L x r, r x HW
            n, _, h, w = c.shape
            project_first = h * w <= basis.shape[0]  # fewer pixels than sums (the top maps)
            if project_first:
                c = lateral(c)
            if c.is_contiguous(memory_format=torch.channels_last):
                pixels = c.permute(0, 2, 3, 1).reshape(n, h * w, -1)  # a view: N x HW x C
                sums = torch.matmul(basis, pixels)  # N x r x C
            else:
                sums = torch.matmul(c.reshape(n, -1, h * w), basis.t()).transpose(1, 2)
            if not project_first:
                sums = torch.matmul(sums, lateral.weight.flatten(1).t())  # N x r x width
            sums = torch.matmul(coef, sums)  # N x 9L x width
            if not project_first and lateral.bias is not None:
                sums = sums + (coef @ basis.sum(dim=1))[:, None] * lateral.bias
            # N x 9L x width -> one N x width x 3 x 3 block per level that reads this map
            blocks = sums.unflatten(1, (-1, 3, 3)).permute(1, 0, 4, 2, 3)
            targets = list(range(j + 1))
            if self.extra_level and j == len(features) - 1:
                targets.append(levels - 1)
            for level, block in zip(targets, blocks, strict=True):
                windows[level] = block if windows[level] is None else windows[level] + block
        convs = cast(list[nn.Conv2d], list(self.smooth))
        if self.extra_level:
            convs.append(convs[-1])  # P6 is P5's smoothed map, subsampled
            h, w = sizes[-1]
            sizes = (*sizes, ((h + 1) // 2, (w + 1) // 2))
        vectors = []
        for (h, w), conv, window in zip(sizes, convs, windows, strict=True):
            assert window is not None
            vectors.append(F.conv2d(window / (h * w), conv.weight, conv.bias).flatten(1))
        return vectors
