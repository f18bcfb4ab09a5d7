"""Tests of the key-predictive-region weights (section 1 of docs pgd-algorithm.md).

Two kinds of check, as the style guide asks:

* tiny hand-worked cases whose expected weights are literal numbers derived on
  paper (the derivations are in the comments), and
* a slow reference written with Python loops straight from the formulas, which
  the vectorised ``prediction_guided_weights`` / ``background_mask`` must match
  on many random cases.

Nothing here calls the code under test to produce an expected value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgd_core.distill.regions import (
    background_mask,
    inside_mask,
    pairwise_iou,
    prediction_guided_weights,
)

RIDGE = 1e-3  # the doc's deterministic covariance ridge
EPS = 1e-10  # the doc's strict-inside margin

# ---------------------------------------------------------------------------
# A 4 x 3 grid of priors (stride 8), used by the hand-worked cases.
#
#   index:  0 (4,4)   1 (12,4)   2 (20,4)   3 (28,4)
#           4 (4,12)  5 (12,12)  6 (20,12)  7 (28,12)
#           8 (4,20)  9 (12,20) 10 (20,20) 11 (28,20)
#
# GT_A = (0, 0, 24, 16), label 0: strictly contains priors 0 1 2 4 5 6.
# GT_B = (0, 8, 24, 24), label 1: strictly contains priors 4 5 6 8 9 10.
# Every prior's teacher box is the whole image (0, 0, 32, 24), so IoU(b_i, g_j)
# is the same for every prior i: for any a < 1 the top-K of a GT is simply the
# order of the logits of its class, which the tests set with no ties.
# ---------------------------------------------------------------------------
GRID = torch.tensor(
    [[x, y] for y in (4.0, 12.0, 20.0) for x in (4.0, 12.0, 20.0, 28.0)], dtype=torch.float64
)
GT_A = [0.0, 0.0, 24.0, 16.0]
GT_B = [0.0, 8.0, 24.0, 24.0]

# Class-0 logits rank priors 0 > 1 > 2 > 5 > rest; class-1 logits rank 4 > 5 > 6 > 9 > rest.
LOGITS = torch.tensor(
    [
        # cls0  cls1
        [5.0, 0.1],  # 0
        [4.8, 0.2],  # 1
        [4.6, 0.3],  # 2
        [0.1, 0.4],  # 3
        [0.2, 5.0],  # 4
        [4.4, 4.8],  # 5
        [0.3, 4.6],  # 6
        [0.4, 0.5],  # 7
        [0.5, 0.6],  # 8
        [0.6, 4.4],  # 9
        [0.7, 0.7],  # 10
        [0.8, 0.8],  # 11
    ],
    dtype=torch.float64,
)

# Hand-derived Gaussian weights used below (ridge r = 1e-3).
#
# K = 4 selection {(4,4), (12,4), (20,4), (12,12)}: mu = (12, 6); deviations
# (-8,-2), (0,-2), (8,-2), (0,6); Sigma_xx = (64+0+64+0)/4 = 32, Sigma_yy =
# (4+4+4+36)/4 = 12, Sigma_xy = (16+0-16+0)/4 = 0, so Sigma = diag(32+r, 12+r):
W4_CORNER = 0.31141727996285584  # exp(-0.5 * (64/(32+r) + 4/(12+r)))  ~ exp(-7/6)
W4_MIDDLE = 0.8464934806832254  # exp(-0.5 * 4/(12+r))                 ~ exp(-1/6)
W4_APEX = 0.22315805083735604  # exp(-0.5 * 36/(12+r))                ~ exp(-3/2)
# K = 3 collinear {(4,y), (12,y), (20,y)}: mu = (12, y); Sigma = diag(128/3 + r, r).
# The ridge keeps Sigma invertible; dy = 0 so only the x term counts:
W3_END = 0.47237485593769546  # exp(-0.5 * 64/(128/3 + r))           ~ exp(-3/4)
# K = 3 triangle {(4,4), (12,4), (12,12)}: mu = (28/3, 20/3); Sigma_xx = Sigma_yy =
# 128/9 + r, Sigma_xy = 64/9. Without the ridge every vertex of any triangle has
# Mahalanobis^2 = 2 (affine invariance), i.e. weight exp(-1) = 0.36788; the ridge
# lifts them very slightly, and unevenly because (12,4) sits on the short axis:
W3_TRI_04 = 0.3679053061791681  # vertices (4,4) and (12,12)
W3_TRI_1 = 0.36793117058054775  # vertex (12,4)
# K > N (all 12 priors): mu = (16, 12), Sigma = diag(80 + r, 128/3 + r):
WN = {  # (dx, dy) -> exp(-0.5 * (dx^2/(80+r) + dy^2/(128/3+r)))
    (12, 8): 0.1920554450331994,
    (4, 8): 0.42742297926348455,
    (12, 0): 0.40657423361782574,
    (4, 0): 0.9048385490693011,
}


def _weights(
    gt_boxes,
    gt_labels,
    *,
    topk,
    alpha=0.8,
    gaussian=True,
    low_bound=0.0,
    logits=LOGITS,
    centers=GRID,
):
    """Run the function under test on the hand-worked grid.

    Returns:
        Tensor[12] float64.
    """
    n = centers.shape[0]
    boxes = torch.tensor([[0.0, 0.0, 32.0, 24.0]], dtype=torch.float64).expand(n, 4)
    gts = torch.tensor(gt_boxes, dtype=torch.float64).reshape(-1, 4)
    labels = torch.tensor(gt_labels, dtype=torch.int64)
    return prediction_guided_weights(
        centers,
        logits,
        boxes,
        gts,
        labels,
        alpha=alpha,
        topk=topk,
        low_bound=low_bound,
        gaussian=gaussian,
    )


def _expect(values: dict[int, float]) -> torch.Tensor:
    """A 12-vector of zeros with the given {index: weight} entries."""
    out = torch.zeros(12, dtype=torch.float64)
    for i, v in values.items():
        out[i] = v
    return out


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# Hand-worked cases.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("gaussian", [True, False])
def test_topk1_gives_one_at_each_gts_best_prior(gaussian):
    # Class 0's best prior is 0, class 1's is 4; with K = 1 the Gaussian is off.
    w = _weights([GT_A, GT_B], [0, 1], topk=1, gaussian=gaussian)
    _assert_close(w, _expect({0: 1.0, 4: 1.0}))


def test_topk3_collinear_selection_uses_the_ridge():
    # GT_A picks priors 0 1 2 (one row), GT_B picks 4 5 6 (the next row): each row
    # is collinear, so the fit relies on the ridge; the middle prior sits at mu.
    w = _weights([GT_A, GT_B], [0, 1], topk=3)
    _assert_close(w, _expect({0: W3_END, 1: 1.0, 2: W3_END, 4: W3_END, 5: 1.0, 6: W3_END}))


def test_topk3_triangle():
    # Class-0 logits ranking 0 > 1 > 5 > rest: the triangle (4,4), (12,4), (12,12).
    logits = LOGITS.clone()
    logits[5, 0], logits[2, 0] = 4.7, 0.05
    w = _weights([GT_A], [0], topk=3, logits=logits)
    _assert_close(w, _expect({0: W3_TRI_04, 1: W3_TRI_1, 5: W3_TRI_04}))


def test_topk4_two_gts_claiming_a_prior_take_the_max():
    # GT_A selects 0 1 2 5 (prior 5 is its apex, W4_APEX); GT_B selects 4 5 6 9
    # (the same shape moved down one row, so prior 5 is its middle, W4_MIDDLE).
    # Prior 5 gets max(W4_APEX, W4_MIDDLE) = W4_MIDDLE; prior 9 is GT_B's apex.
    w = _weights([GT_A, GT_B], [0, 1], topk=4)
    _assert_close(
        w,
        _expect(
            {
                0: W4_CORNER,
                1: W4_MIDDLE,
                2: W4_CORNER,
                4: W4_CORNER,
                5: W4_MIDDLE,
                6: W4_CORNER,
                9: W4_APEX,
            }
        ),
    )


def test_gt_order_does_not_matter():
    w = _weights([GT_B, GT_A], [1, 0], topk=4)
    _assert_close(
        w,
        _expect(
            {
                0: W4_CORNER,
                1: W4_MIDDLE,
                2: W4_CORNER,
                4: W4_CORNER,
                5: W4_MIDDLE,
                6: W4_CORNER,
                9: W4_APEX,
            }
        ),
    )


def test_topk4_without_gaussian_gives_ones():
    w = _weights([GT_A, GT_B], [0, 1], topk=4, gaussian=False)
    _assert_close(w, _expect({i: 1.0 for i in (0, 1, 2, 4, 5, 6, 9)}))


@pytest.mark.parametrize(
    "low_bound, kept",
    [
        (0.3, (0, 1, 2, 4, 5, 6)),  # only W4_APEX = 0.223 < 0.3 goes
        (0.5, (1, 5)),  # W4_CORNER = 0.311 goes too; W4_MIDDLE = 0.846 stays
    ],
)
def test_low_bound_zeroes_small_weights(low_bound, kept):
    full = _expect(
        {
            0: W4_CORNER,
            1: W4_MIDDLE,
            2: W4_CORNER,
            4: W4_CORNER,
            5: W4_MIDDLE,
            6: W4_CORNER,
            9: W4_APEX,
        }
    )
    expected = _expect({i: float(full[i]) for i in kept})
    _assert_close(_weights([GT_A, GT_B], [0, 1], topk=4, low_bound=low_bound), expected)


def test_low_bound_is_strict():
    # "zero where w < low_bound": without the Gaussian every weight is exactly
    # 1.0, so a bound of exactly 1.0 keeps them all.
    w = _weights([GT_A, GT_B], [0, 1], topk=4, gaussian=False, low_bound=1.0)
    _assert_close(w, _expect({i: 1.0 for i in (0, 1, 2, 4, 5, 6, 9)}))


def test_selected_prior_outside_its_gt_gets_zero():
    # GT (8, 8, 16, 16) strictly contains only prior 5 (12, 12). Class 0 still
    # ranks 0 > 1 > 2 > 5 over *all* priors, so with K = 1 the chosen prior 0 is
    # outside the box and everything is 0 ...
    small = [8.0, 8.0, 16.0, 16.0]
    _assert_close(_weights([small], [0], topk=1), _expect({}))
    # ... and with K = 4 the Gaussian is fitted to all four selected centres,
    # but only prior 5 (the apex) survives the inside test.
    _assert_close(_weights([small], [0], topk=4), _expect({5: W4_APEX}))


@pytest.mark.parametrize("topk", [12, 50])
def test_k_at_least_n_selects_every_prior(topk):
    # All 12 priors are selected: the Gaussian is fitted to the full grid, then
    # GT_A's inside test keeps priors 0 1 2 (dy = -8) and 4 5 6 (dy = 0).
    w = _weights([GT_A], [0], topk=topk)
    _assert_close(
        w, _expect({0: WN[12, 8], 1: WN[4, 8], 2: WN[4, 8], 4: WN[12, 0], 5: WN[4, 0], 6: WN[4, 0]})
    )
    w_flat = _weights([GT_A], [0], topk=topk, gaussian=False)
    _assert_close(w_flat, _expect({i: 1.0 for i in (0, 1, 2, 4, 5, 6)}))


def test_no_gt_gives_zeros_and_background_ones():
    empty = torch.zeros(0, 4, dtype=torch.float64)
    w = prediction_guided_weights(
        GRID, LOGITS, GRID.repeat(1, 2), empty, torch.zeros(0, dtype=torch.int64), alpha=0.8, topk=9
    )
    _assert_close(w, torch.zeros(12, dtype=torch.float64))
    _assert_close(background_mask(GRID, empty), torch.ones(12, dtype=torch.float64))


# The quality q_ij = sigmoid(s)^(1-a) * IoU^a decides the ranking. Three priors,
# one GT (0, 0, 10, 10) (area 100), each prior's box anchored at the origin:
#   prior 0: sigmoid = 0.9 (logit ln 9), box (0,0,5,5):   IoU = 25/100 = 0.25
#   prior 1: sigmoid = 0.5 (logit 0),    box (0,0,8,8):   IoU = 64/100 = 0.64
#   prior 2: sigmoid = 0.1 (logit -ln 9), box = the GT:   IoU = 1
# a = 0:   q = sigmoid                         -> prior 0 wins
# a = 0.5: q^2 = 0.225, 0.32, 0.1              -> prior 1 wins
# a = 0.8: q = 0.323, 0.609, 0.631             -> prior 2 wins (narrowly)
# a = 1:   q = IoU                             -> prior 2 wins
@pytest.mark.parametrize("alpha, winner", [(0.0, 0), (0.5, 1), (0.8, 2), (1.0, 2)])
def test_quality_exponent_decides_the_top1(alpha, winner):
    centers = torch.tensor([[2.0, 5.0], [5.0, 5.0], [8.0, 5.0]], dtype=torch.float64)
    logits = torch.tensor([[math.log(9.0)], [0.0], [-math.log(9.0)]], dtype=torch.float64)
    boxes = torch.tensor([[0, 0, 5, 5], [0, 0, 8, 8], [0, 0, 10, 10]], dtype=torch.float64)
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    w = prediction_guided_weights(
        centers, logits, boxes, gts, torch.tensor([0]), alpha=alpha, topk=1
    )
    expected = torch.zeros(3, dtype=torch.float64)
    expected[winner] = 1.0
    _assert_close(w, expected)


def test_quality_uses_the_gts_own_class():
    # Same two GT boxes (both = GT_A) but labels 0 and 1: class 0's best inside
    # GT_A is prior 0, class 1's is prior 4, so K = 1 marks both.
    w = _weights([GT_A, GT_A], [0, 1], topk=1)
    _assert_close(w, _expect({0: 1.0, 4: 1.0}))


def test_strict_inside_centre_on_an_edge_is_outside():
    # Box (4, 4, 20, 20) has priors 0, 1, 2, 4, 6, 8, 9, 10 exactly on its edges
    # and prior 5 (12, 12) strictly inside; 3, 7, 11 (x = 28) are outside.
    box = torch.tensor([[4.0, 4.0, 20.0, 20.0]], dtype=torch.float64)
    inside = inside_mask(GRID, box)[:, 0]
    assert inside.tolist() == [i == 5 for i in range(12)]
    _assert_close(background_mask(GRID, box), 1.0 - _expect({5: 1.0}))
    # A hair inside (1e-6 px, far above eps = 1e-10) counts as inside.
    nudged = torch.tensor([[4.0 + 1e-6, 4.0 + 1e-6]], dtype=torch.float64)
    assert not inside_mask(nudged, box + 1e-6).item()
    assert inside_mask(nudged, box).item()
    # The weights use the same test: K = 50 selects every prior, a centre on the
    # edge gets 0 even though it was selected.
    w = _weights([[4.0, 4.0, 20.0, 20.0]], [0], topk=50, gaussian=False)
    _assert_close(w, _expect({5: 1.0}))


def test_background_mask_two_gts():
    # Inside GT_A: 0 1 2 4 5 6; inside GT_B: 4 5 6 8 9 10; background: 3 7 11.
    gts = torch.tensor([GT_A, GT_B], dtype=torch.float64)
    _assert_close(background_mask(GRID, gts), _expect({3: 1.0, 7: 1.0, 11: 1.0}))


@pytest.mark.parametrize(
    "box, gt, iou",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),  # half overlap: 50 / (100+100-50)
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),  # GT inside the box
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges: no area
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
        ([3, 3, 3, 3], [3, 3, 3, 3], 0.0),  # empty union -> 0, not NaN
    ],
)
def test_pairwise_iou_hand_values(box, gt, iou):
    got = pairwise_iou(
        torch.tensor([box], dtype=torch.float64), torch.tensor([gt], dtype=torch.float64)
    )
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(iou, rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------------------
# Slow reference, straight from the formulas of section 1 (float64 numpy, loops).
# ---------------------------------------------------------------------------
def _ref_iou(b, g) -> float:
    """IoU of two (x1, y1, x2, y2) boxes; 0 for an empty union."""
    iw = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
    ih = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
    inter = iw * ih
    union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    return inter / union if union > 0 else 0.0


def _ref_inside(p, g) -> bool:
    """Step 4's strict test of centre p = (x, y) in box g."""
    return p[0] - g[0] > EPS and p[1] - g[1] > EPS and g[2] - p[0] > EPS and g[3] - p[1] > EPS


def _ref_gt_weights(centers, logits, boxes, gt, label, *, alpha, topk, gaussian):
    """Steps 1-4 for one GT: {prior index: w_ij} over its selected priors.

    Args:
        centers (ndarray[N, 2]), logits (ndarray[N, C]), boxes (ndarray[N, 4]),
        gt (ndarray[4]), label (int).
    """
    n = len(centers)
    quality = [
        (1.0 / (1.0 + math.exp(-logits[i, label]))) ** (1.0 - alpha)
        * _ref_iou(boxes[i], gt) ** alpha
        for i in range(n)
    ]
    k = min(topk, n)
    chosen = sorted(range(n), key=lambda i: -quality[i])[:k]
    if gaussian and k > 1:
        pts = centers[chosen]
        mu = pts.mean(axis=0)
        dev = pts - mu
        sigma_inv = np.linalg.inv(dev.T @ dev / k + RIDGE * np.eye(2))
    out = {}
    for i in chosen:
        if gaussian and k > 1:
            d = centers[i] - mu
            w = math.exp(-0.5 * float(d @ sigma_inv @ d))
        else:
            w = 1.0
        out[i] = w if _ref_inside(centers[i], gt) else 0.0
    return out


def ref_weights(centers, logits, boxes, gts, labels, *, alpha, topk, low_bound, gaussian):
    """Steps 1-5 with loops over GTs and priors. Returns ndarray[N]."""
    weights = np.zeros(len(centers))
    for gt, label in zip(gts, labels):
        per_gt = _ref_gt_weights(
            centers, logits, boxes, gt, int(label), alpha=alpha, topk=topk, gaussian=gaussian
        )
        for i, w in per_gt.items():
            weights[i] = max(weights[i], w)
    weights[weights < low_bound] = 0.0
    return weights


def ref_background(centers, gts):
    """Step 6: 1 where a centre is strictly inside no GT. Returns ndarray[N]."""
    return np.array([0.0 if any(_ref_inside(p, g) for g in gts) else 1.0 for p in centers])


def _random_case(seed: int):
    """A random image on a 200 x 200 canvas.

    Every GT and every teacher box contains the square [95, 105]^2, so every
    IoU, hence every quality, is positive and continuous: top-K ties (which
    would make the selection, and the Gaussian fit, ambiguous) have probability
    zero. A third of the cases put priors on an integer grid with two priors per
    location, like anchor-based heads, so centres repeat and rows are collinear.
    """
    rng = np.random.default_rng(seed)
    n, g, c = int(rng.integers(1, 301)), int(rng.integers(0, 16)), int(rng.integers(1, 6))
    if seed % 3 == 0:
        side = 8.0 * rng.integers(0, 25, size=((n + 1) // 2, 2)) + 4.0
        centers = np.repeat(side, 2, axis=0)[:n]
    else:
        centers = rng.uniform(0, 200, size=(n, 2))

    def boxes_around_centre(m):
        lo = rng.uniform(0, 95, size=(m, 2))
        hi = rng.uniform(105, 200, size=(m, 2))
        return np.concatenate([lo, hi], axis=1)

    topk = int(rng.choice([1, int(rng.integers(2, 40)), n + int(rng.integers(0, 5))]))
    return dict(
        centers=centers,
        logits=rng.normal(0.0, 2.0, size=(n, c)),
        boxes=boxes_around_centre(n),
        gts=boxes_around_centre(g),
        labels=rng.integers(0, c, size=g),
        alpha=float(rng.uniform(0, 1)),
        topk=topk,
        low_bound=float(rng.choice([0.0, 0.3])),
        gaussian=bool(rng.integers(0, 2)),
    )


def _run_impl(case, dtype=torch.float64, device="cpu"):
    t = {
        k: torch.as_tensor(case[k], dtype=dtype, device=device)
        for k in ("centers", "logits", "boxes", "gts")
    }
    labels = torch.as_tensor(case["labels"], dtype=torch.int64, device=device)
    return prediction_guided_weights(
        t["centers"],
        t["logits"],
        t["boxes"],
        t["gts"],
        labels,
        alpha=case["alpha"],
        topk=case["topk"],
        low_bound=case["low_bound"],
        gaussian=case["gaussian"],
    )


@pytest.mark.parametrize("seed", range(120))
def test_matches_loop_reference_on_random_cases(seed):
    case = _random_case(seed)
    expected = ref_weights(
        case["centers"],
        case["logits"],
        case["boxes"],
        case["gts"],
        case["labels"],
        alpha=case["alpha"],
        topk=case["topk"],
        low_bound=case["low_bound"],
        gaussian=case["gaussian"],
    )
    got = _run_impl(case)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    bg = background_mask(torch.as_tensor(case["centers"]), torch.as_tensor(case["gts"]))
    np.testing.assert_array_equal(bg.numpy(), ref_background(case["centers"], case["gts"]))


def test_random_cases_are_not_trivial():
    # Guard against a generator that only produces all-zero weights.
    nonzero = [np.count_nonzero(_run_impl(_random_case(s)).numpy()) for s in range(30)]
    assert sum(n > 0 for n in nonzero) >= 15


# ---------------------------------------------------------------------------
# Dtype and device.
# ---------------------------------------------------------------------------
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # gpu: skipped without CUDA


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_dtype_and_device_follow_the_input(dtype, device):
    case = _random_case(4)
    assert len(case["gts"]) > 0
    w = _run_impl(case, dtype=dtype, device=device)
    assert w.dtype == dtype and w.device.type == device
    bg = background_mask(
        torch.as_tensor(case["centers"], dtype=dtype, device=device),
        torch.as_tensor(case["gts"], dtype=dtype, device=device),
    )
    assert bg.dtype == dtype and bg.device.type == device
    empty = _run_impl(
        dict(case, gts=np.zeros((0, 4)), labels=np.zeros(0, np.int64)), dtype=dtype, device=device
    )
    assert empty.dtype == dtype and empty.device.type == device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diagonal_collinear_selection_is_exact_in_float32(dtype):
    # Three P7 centres on a diagonal, (64, 64), (192, 192), (320, 320): deviations
    # (-128,-128), 0, (128,128); Sigma = s [[1, 1], [1, 1]] + r I with s = 2*128^2/3.
    # Along u = (1, 1)/sqrt(2) the variance is 2s + r, so the end points have
    # Mahalanobis^2 = 2*128^2 / (2s + r) ~ 3/2, weight ~ exp(-3/4), the middle 1.
    # The ridge is tiny next to s: a 2x2 closed form evaluated in float32 cancels
    # catastrophically here (it gave exp(-1) = 0.368 instead of 0.472).
    end = 0.4723665689584328  # exp(-0.5 * 2*128^2 / (4*128^2/3 + 1e-3))
    centers = torch.tensor(
        [[64.0, 64.0], [192.0, 192.0], [320.0, 320.0], [448.0, 64.0]], dtype=dtype
    )
    logits = torch.tensor([[3.0], [2.0], [1.0], [0.0]], dtype=dtype)
    everything = torch.tensor([[0.0, 0.0, 512.0, 512.0]], dtype=dtype)
    w = prediction_guided_weights(
        centers, logits, everything.expand(4, 4), everything, torch.tensor([0]), alpha=0.8, topk=3
    )
    torch.testing.assert_close(
        w, torch.tensor([end, 1.0, end, 0.0], dtype=dtype), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("seed", [1, 2, 4, 5, 7, 8])
def test_float32_close_to_float64(seed):
    # Continuous (non-grid) centres: top-K order is then stable under float32
    # rounding except with vanishing probability.
    case = _random_case(seed)
    w32 = _run_impl(case, dtype=torch.float32).double()
    w64 = _run_impl(case, dtype=torch.float64)
    torch.testing.assert_close(w32, w64, rtol=1e-4, atol=1e-5)
