"""BSDS-style boundary evaluation in numpy/scipy: thinning, NMS, one-to-one matching, ODS/OIS.

The protocol of the BSDS500 benchmark (Arbeláez et al., TPAMI 2011), which the dense multi-task
literature (ASTMT, MTI-Net, InvPT) runs through MATLAB's seism toolbox. For every image and every
threshold t of a sorted list:

1. the probability map (optionally non-maximum suppressed first) is binarised as ``p >= t`` and
   thinned to one-pixel-wide curves (MATLAB's ``bwmorph(b, 'thin', Inf)``, the algorithm of Lam,
   Lee and Suen 1992, written here as two 256-entry lookup tables);
2. predicted and ground-truth edge pixels are matched one-to-one, a pair being allowed when their
   Euclidean distance is at most ``max_dist * sqrt(H² + W²)`` pixels; the matching is a maximum
   bipartite matching (Hopcroft–Karp in scipy). BSDS solves a min-cost assignment whose outlier
   cost (100 × the tolerance) makes it, too, a maximum matching in all but pathological cases;
3. the counts (matched, ground-truth pixels, predicted pixels) are kept per threshold.

ODS: precision P = Σmatched / Σpredicted and recall R = Σmatched / Σground truth over the whole
split per threshold (a zero denominator counts as 1), F = 2PR / (P + R) (0 when P + R = 0),
maximised over the thresholds and over 101 linear interpolation steps between neighbouring ones,
as BSDS's ``findBestRPF`` does. OIS: each image's own best threshold (its first maximum of F),
then P, R and F of the counts summed at those thresholds.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

#: Neighbour k (x1 … x8 of Lam et al.: E, NE, N, NW, W, SW, S, SE) as (row, column) offsets.
_NEIGHBOURS: tuple[tuple[int, int], ...] = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


@functools.cache
def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations, indexed by the 8-bit neighbourhood code."""
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        x = [(code >> k) & 1 for k in range(8)] + [code & 1]  # x[8] = x1 closes the ring
        crossings = sum(1 for i in range(4) if not x[2 * i] and (x[2 * i + 1] or x[2 * i + 2]))
        n1 = sum(x[2 * i] | x[2 * i + 1] for i in range(4))
        n2 = sum(x[2 * i + 1] | x[(2 * i + 2) % 8] for i in range(4))
        g12 = crossings == 1 and 2 <= min(n1, n2) <= 3
        # G3: (x2 ∨ x3 ∨ ¬x8) ∧ x1 = 0;  G3': (x6 ∨ x7 ∨ ¬x4) ∧ x5 = 0
        first[code] = g12 and not ((x[1] or x[2] or not x[7]) and x[0])
        second[code] = g12 and not ((x[5] or x[6] or not x[3]) and x[4])
    return first, second


def thin(binary: np.ndarray) -> np.ndarray:
    """Thin a boolean (H, W) map to one-pixel-wide curves (MATLAB ``bwmorph(…, 'thin', Inf)``).

    Both sub-iterations decide every pixel from the map as it was before that sub-iteration. Only
    foreground pixels touching the background can be deleted (an interior pixel fails G1), so
    only those are examined: the border set starts as such pixels and, after each deletion, gains
    the deleted pixels' foreground neighbours. The work is proportional to the perimeter.
    """
    binary = np.asarray(binary, bool)
    h, w = binary.shape
    img = np.pad(binary, 1).astype(np.uint8).ravel()
    offsets = np.array([dy * (w + 2) + dx for dy, dx in _NEIGHBOURS], np.int64)
    weights = (1 << np.arange(8)).astype(np.int64)
    foreground = np.flatnonzero(img)
    in_border = np.zeros(img.shape, bool)
    in_border[foreground[(img[foreground[:, None] + offsets] == 0).any(axis=1)]] = True
    deleted_any = True
    while deleted_any:
        deleted_any = False
        for table in _thin_tables():
            border = np.flatnonzero(in_border)
            code = img[border[:, None] + offsets].astype(np.int64) @ weights
            deleted = border[table[code]]
            if deleted.size == 0:
                continue
            deleted_any = True
            img[deleted] = 0
            around = (deleted[:, None] + offsets).ravel()
            in_border[around] = img[around] == 1  # a neighbour is 0 now, so each 1 is a border pixel
            in_border[deleted] = False
    return img.reshape(h + 2, w + 2)[1:-1, 1:-1].astype(bool)


def edge_nms(prob: np.ndarray, margin: float = 1.01, sigma: float = 1.0) -> np.ndarray:
    """Non-maximum suppression of a (H, W) edge probability map across the edge direction.

    The direction across a ridge is the Hessian's eigenvector of most negative eigenvalue, from a
    Gaussian-smoothed copy (``sigma`` pixels). A pixel survives when ``margin`` times its value is
    at least both values one pixel away along that direction (bilinearly interpolated); the others
    become 0.
    """
    p = np.asarray(prob, np.float64)
    s = ndimage.gaussian_filter(p, sigma)
    gy, gx = np.gradient(s)
    hyy, hyx = np.gradient(gy)
    hxy, hxx = np.gradient(gx)
    hxy = 0.5 * (hxy + hyx)
    angle = 0.5 * np.arctan2(2.0 * hxy, hxx - hyy) + np.pi / 2  # the eigenvector of the smaller eigenvalue
    dy, dx = np.sin(angle), np.cos(angle)
    rows, cols = np.indices(p.shape, dtype=np.float64)
    keep = np.ones(p.shape, bool)
    for sign in (1.0, -1.0):
        other = ndimage.map_coordinates(p, [rows + sign * dy, cols + sign * dx], order=1, mode="nearest")
        keep &= p * margin >= other
    return np.where(keep, p, 0.0)


@functools.cache
def _offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the pixels within ``radius`` of the origin (inclusive)."""
    r = int(np.floor(radius + 1e-9))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= radius**2 + 1e-9
    return dy[inside], dx[inside]


def match_count(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Size of a maximum one-to-one matching of the ``pred`` and ``gt`` edge pixels (boolean
    (H, W) maps) where a pair may match when at most ``radius`` pixels apart."""
    py, px = np.nonzero(pred)
    gy, gx = np.nonzero(gt)
    if len(py) == 0 or len(gy) == 0:
        return 0
    h, w = gt.shape
    index = np.full((h, w), -1, np.int64)
    index[gy, gx] = np.arange(len(gy))
    oy, ox = _offsets(float(radius))
    cy, cx = py[:, None] + oy[None], px[:, None] + ox[None]
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    cand = np.where(inside, index[cy.clip(0, h - 1), cx.clip(0, w - 1)], -1)
    rows, k = np.nonzero(cand >= 0)
    if len(rows) == 0:
        return 0
    graph = csr_matrix((np.ones(len(rows), np.int8), (rows, cand[rows, k])), shape=(len(py), len(gy)))
    matched = maximum_bipartite_matching(graph, perm_type="column")
    return int((matched >= 0).sum())


def default_thresholds(n: int) -> np.ndarray:
    """BSDS's ``n`` thresholds: 1/(n+1), 2/(n+1), …, n/(n+1) (99 gives 0.01 … 0.99)."""
    return np.arange(1, n + 1, dtype=np.float64) / (n + 1)


def image_counts(
    prob: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    max_dist: float,
    nms: bool = False,
) -> np.ndarray:
    """(T, 3) int64 counts of one image: matched pixels, ground-truth pixels, predicted pixels
    (after thinning), per threshold of the increasing ``thresholds``."""
    prob = np.asarray(prob, np.float64)
    gt = np.asarray(gt, bool)
    if nms:
        prob = edge_nms(prob)
    radius = max_dist * float(np.hypot(*gt.shape))
    n_gt = int(gt.sum())
    out = np.zeros((len(thresholds), 3), np.int64)
    out[:, 1] = n_gt
    previous: np.ndarray | None = None
    for k, t in enumerate(thresholds):
        binary = prob >= t
        if not binary.any():
            break  # every higher threshold predicts nothing too: counts (0, n_gt, 0)
        if previous is not None and np.array_equal(binary, previous):
            out[k] = out[k - 1]
            continue
        thinned = thin(binary)
        out[k, 0] = match_count(thinned, gt, radius) if n_gt else 0
        out[k, 2] = int(thinned.sum())
        previous = binary
    return out


def _prf(matched: np.ndarray, n_gt: np.ndarray, n_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    recall = matched / np.where(n_gt == 0, 1, n_gt)
    precision = matched / np.where(n_pred == 0, 1, n_pred)
    return precision, recall, f_measure(precision, recall)


def f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """2PR / (P + R), 0 where P + R = 0."""
    total = precision + recall
    return np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1.0), 0.0)


def ods_ois(counts: np.ndarray) -> tuple[float, float]:
    """(ODS F, OIS F) of per-image counts (N, T, 3); NaN for both when N = 0."""
    counts = np.asarray(counts, np.float64)
    if counts.shape[0] == 0:
        return float("nan"), float("nan")
    total = counts.sum(axis=0)
    precision, recall, f = _prf(total[:, 0], total[:, 1], total[:, 2])
    ods = float(f.max())
    steps = np.linspace(0.0, 1.0, 101)[:, None]
    if len(f) > 1:
        p = precision[1:] * steps + precision[:-1] * (1 - steps)
        r = recall[1:] * steps + recall[:-1] * (1 - steps)
        ods = max(ods, float(f_measure(p, r).max()))
    _, _, per_image = _prf(counts[..., 0], counts[..., 1], counts[..., 2])
    best = counts[np.arange(len(counts)), per_image.argmax(axis=1)].sum(axis=0)
    ois = float(_prf(best[0], best[1], best[2])[2])
    return ods, ois
