"""Tests of the PGD feature-distillation losses (section 3 of docs pgd-algorithm.md).

Expected values come from a straightforward reference written here with
explicit loops over images, channels and locations (float64), and from a few
cases small enough to work out by hand (derivations in the comments).
"""

from __future__ import annotations

import math

import pytest
import torch

from pgd_core.distill.losses import channel_attention, pgd_cls_loss, pgd_reg_loss, spatial_attention

DT = torch.float64
# Temperature 1/ln 3 turns |F| = 1 vs |F| = 0 into softmax weights 3/4 vs 1/4,
# since exp(1 * ln 3) = 3: handy for hand-worked attention maps.
T_LN3 = 1.0 / math.log(3.0)


# ---------------------------------------------------------------------------
# Reference, written from the formulas with loops (no softmax helpers).
# ---------------------------------------------------------------------------
def ref_spatial(feat: torch.Tensor, temp: float) -> list:
    """A_S(F)[n][h][w] = H*W * softmax_HW(mean_c |F| / T).  feat: Tensor[N, C, H, W]."""
    n_img, c, h, w = feat.shape
    out = []
    for n in range(n_img):
        e = [
            [
                math.exp(sum(abs(float(feat[n, k, y, x])) for k in range(c)) / c / temp)
                for x in range(w)
            ]
            for y in range(h)
        ]
        z = sum(map(sum, e))
        out.append([[h * w * e[y][x] / z for x in range(w)] for y in range(h)])
    return out


def ref_channel(feat: torch.Tensor, temp: float) -> list:
    """A_C(F)[n][k][h][w] = C * softmax_C(|F| / T) per location.  feat: Tensor[N, C, H, W]."""
    n_img, c, h, w = feat.shape
    out = [[[[0.0] * w for _ in range(h)] for _ in range(c)] for _ in range(n_img)]
    for n in range(n_img):
        for y in range(h):
            for x in range(w):
                e = [math.exp(abs(float(feat[n, k, y, x])) / temp) for k in range(c)]
                for k in range(c):
                    out[n][k][y][x] = c * e[k] / sum(e)
    return out


def _nonzero_count(mask: torch.Tensor, n: int) -> int:
    """Count of non-zero entries of image n's map, clamped to at least 1."""
    return max(1, int((mask[n] != 0).sum()))


def ref_cls(s, t, fg, bg, *, temp_s, temp_c, alpha, beta, delta, lam) -> float:
    """``lam * (alpha L_fg + beta L_bg) + delta L_att`` with per-image normalised maps.

    s, t: Tensor[N, C, H, W]; fg, bg: Tensor[N, H, W].
    """
    n_img, c, h, w = s.shape
    as_t, ac_t = ref_spatial(t, temp_s), ref_channel(t, temp_c)
    as_s, ac_s = ref_spatial(s, temp_s), ref_channel(s, temp_c)
    l_fg = l_bg = att_c = att_s = 0.0
    for n in range(n_img):
        cnt_fg, cnt_bg = _nonzero_count(fg, n), _nonzero_count(bg, n)
        for y in range(h):
            for x in range(w):
                att_s += abs(as_s[n][y][x] - as_t[n][y][x])
                for k in range(c):
                    d2 = (float(s[n, k, y, x]) - float(t[n, k, y, x])) ** 2
                    common = as_t[n][y][x] * ac_t[n][k][y][x] * d2
                    l_fg += float(fg[n, y, x]) / cnt_fg * common
                    l_bg += float(bg[n, y, x]) / cnt_bg * common
                    att_c += abs(ac_s[n][k][y][x] - ac_t[n][k][y][x])
    l_att = att_c / (n_img * h * w) + att_s / n_img
    return lam * (alpha * l_fg / n_img + beta * l_bg / n_img) + delta * l_att


def ref_reg(s, t, r, *, temp, gamma, delta) -> float:
    """``gamma mean_P(R mean_c(A(T)(S-T)^2)) + delta sum|A(S)-A(T)| / P`` over R > 0.

    s, t: Tensor[N, C, H, W]; r: Tensor[N, H, W].
    """
    n_img, c, h, w = s.shape
    ac_s, ac_t = ref_channel(s, temp), ref_channel(t, temp)
    feat = att = 0.0
    p = 0
    for n in range(n_img):
        for y in range(h):
            for x in range(w):
                if float(r[n, y, x]) <= 0:
                    continue
                p += 1
                per_c = [
                    ac_t[n][k][y][x] * (float(s[n, k, y, x]) - float(t[n, k, y, x])) ** 2
                    for k in range(c)
                ]
                feat += float(r[n, y, x]) * sum(per_c) / c
                att += sum(abs(ac_s[n][k][y][x] - ac_t[n][k][y][x]) for k in range(c))
    return 0.0 if p == 0 else gamma * feat / p + delta * att / p


CLS_KW = dict(temp_s=0.8, temp_c=0.8, alpha=0.08, beta=0.04, delta=8e-4)


def _random_inputs(seed, n=2, c=3, h=2, w=2, fg_zero_frac=0.5):
    """Student/teacher features (Tensor[N, C, H, W]) and maps (Tensor[N, H, W]).

    Maps have some exact zeros, so the non-zero counts differ per image.
    """
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, h, w, generator=g, dtype=DT)
    t = torch.randn(n, c, h, w, generator=g, dtype=DT)
    fg = torch.rand(n, h, w, generator=g, dtype=DT)
    fg = fg * (torch.rand(n, h, w, generator=g, dtype=DT) > fg_zero_frac)
    bg = (torch.rand(n, h, w, generator=g, dtype=DT) > 0.5).to(DT)
    return s, t, fg, bg


# ---------------------------------------------------------------------------
# Attention maps.
# ---------------------------------------------------------------------------
def test_attention_hand_values():
    # One image, C = 1, H = 1, W = 2, F = [ln3 * T, 0]: softmax = (3/4, 1/4), so
    # A_S = 2 * (3/4, 1/4) = (1.5, 0.5). The sign of F must not matter (|F|).
    feat = torch.tensor([[[[-1.0, 0.0]]]], dtype=DT)
    torch.testing.assert_close(
        spatial_attention(feat, T_LN3), torch.tensor([[[1.5, 0.5]]], dtype=DT)
    )
    # C = 2 at one location, F = (1, 0): A_C = 2 * (3/4, 1/4) = (1.5, 0.5).
    feat = torch.tensor([[[[1.0]], [[0.0]]]], dtype=DT)
    torch.testing.assert_close(
        channel_attention(feat, T_LN3), torch.tensor([[[[1.5]], [[0.5]]]], dtype=DT)
    )


@pytest.mark.parametrize("seed", range(3))
def test_attention_matches_reference(seed):
    s, _, _, _ = _random_inputs(seed, n=2, c=3, h=2, w=3)
    torch.testing.assert_close(
        spatial_attention(s, 0.7), torch.tensor(ref_spatial(s, 0.7), dtype=DT)
    )
    torch.testing.assert_close(
        channel_attention(s, 0.7), torch.tensor(ref_channel(s, 0.7), dtype=DT)
    )


# ---------------------------------------------------------------------------
# Classification loss.
# ---------------------------------------------------------------------------
def test_cls_loss_hand_value_uniform_attention():
    # N = 1, C = 2, H = W = 2. Teacher = 1 everywhere and student = +-1, so |S| and
    # |T| are constant: A_S = 1 and A_C = 1 for both, and L_att = 0.
    #   S ch0 = [[-1, 1], [1, -1]]  -> (S-T)^2 = [[4, 0], [0, 4]]
    #   S ch1 = [[ 1,-1], [1, -1]]  -> (S-T)^2 = [[0, 4], [0, 4]]
    #   summed over channels:          [[4, 4], [0, 8]]
    # fg M = [[0.5, 0], [0, 1]]: 2 non-zero -> M~ = [[0.25, 0], [0, 0.5]]
    #   L_fg = 0.25*4 + 0.5*8 = 5
    # bg B = [[0, 1], [1, 0]]: 2 non-zero -> B~ = [[0, 0.5], [0.5, 0]]
    #   L_bg = 0.5*4 + 0.5*0 = 2
    # loss = lambda (alpha L_fg + beta L_bg) = 2 * (0.1*5 + 0.05*2) = 1.2
    t = torch.ones(1, 2, 2, 2, dtype=DT)
    s = torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]], [[1.0, -1.0], [1.0, -1.0]]]], dtype=DT)
    fg = torch.tensor([[[0.5, 0.0], [0.0, 1.0]]], dtype=DT)
    bg = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=DT)
    loss = pgd_cls_loss(
        s, t, fg, bg, temp_s=0.8, temp_c=0.8, alpha=0.1, beta=0.05, delta=123.0, loss_weight=2.0
    )
    assert loss.item() == pytest.approx(1.2, rel=1e-12)


def test_cls_loss_hand_value_attention_term():
    # N = 1, C = 2, H = W = 1 (so A_S = 1 always). T = (0, 0) -> A_C(T) = (1, 1);
    # S = (1, 0) with temperature 1/ln3 -> A_C(S) = (1.5, 0.5).
    #   L_att = (|1.5-1| + |0.5-1|) / (N*H*W) + 0 = 1
    #   L_fg  = M~ * A_S * sum_c A_C(T) (S-T)^2 = 0.3 * 1 * (1*1 + 1*0) = 0.3
    #           (M = 0.3 has one non-zero entry, so M~ = 0.3 / 1: the map is
    #           divided by its count, not by its sum)
    #   L_bg  = 0 (all-zero map; the count is clamped to 1)
    # loss = 1 * (0.25 * 0.3 + beta * 0) + 0.5 * 1 = 0.575
    s = torch.tensor([[[[1.0]], [[0.0]]]], dtype=DT)
    t = torch.zeros(1, 2, 1, 1, dtype=DT)
    loss = pgd_cls_loss(
        s,
        t,
        torch.full((1, 1, 1), 0.3, dtype=DT),
        torch.zeros(1, 1, 1, dtype=DT),
        temp_s=T_LN3,
        temp_c=T_LN3,
        alpha=0.25,
        beta=7.0,
        delta=0.5,
    )
    assert loss.item() == pytest.approx(0.575, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(1, 2, 2, 2), (2, 3, 2, 2), (2, 2, 3, 2)])
def test_cls_loss_matches_reference(seed, shape):
    s, t, fg, bg = _random_inputs(seed, *shape)
    kw = dict(temp_s=0.5, temp_c=0.9, alpha=0.3, beta=0.2, delta=0.1)
    got = pgd_cls_loss(s, t, fg, bg, loss_weight=1.5, **kw)
    assert got.item() == pytest.approx(ref_cls(s, t, fg, bg, lam=1.5, **kw), rel=1e-10)


def test_cls_loss_zero_when_student_equals_teacher():
    _, t, fg, bg = _random_inputs(0)
    loss = pgd_cls_loss(t.clone(), t, fg, bg, loss_weight=1.75, **CLS_KW)
    assert loss.item() == 0.0


def test_cls_loss_gradient_reaches_the_student_only():
    s, t, fg, bg = _random_inputs(1)
    s.requires_grad_(True)
    t.requires_grad_(True)
    pgd_cls_loss(s, t, fg, bg, **CLS_KW).backward()
    assert t.grad is None or not t.grad.any()
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("seed", range(4))
def test_cls_loss_batch_is_mean_of_single_images(seed):
    # L_fg, L_bg and L_att all average per image, so a batch of two images must
    # give exactly the mean of the two single-image losses. Image 0's map has 1
    # non-zero entry and image 1's has 3: normalising by the batch count (4), or
    # letting one image's mask weight the other, would break the equality.
    s, t, _, _ = _random_inputs(seed, n=2, c=3, h=2, w=2)
    fg = torch.tensor([[[0.0, 0.9], [0.0, 0.0]], [[0.2, 0.5], [0.0, 0.7]]], dtype=DT)
    bg = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]], dtype=DT)
    batched = pgd_cls_loss(s, t, fg, bg, loss_weight=1.25, **CLS_KW)
    singles = [
        pgd_cls_loss(
            s[i : i + 1], t[i : i + 1], fg[i : i + 1], bg[i : i + 1], loss_weight=1.25, **CLS_KW
        )
        for i in range(2)
    ]
    assert batched.item() == pytest.approx((singles[0] + singles[1]).item() / 2, rel=1e-12)


def test_cls_loss_other_images_mask_does_not_change_image_one():
    # Image 0's contribution (hence the gradient on its student features) must
    # not depend on image 1's maps, however many non-zero entries they hold.
    s, t, fg, bg = _random_inputs(5, n=2)
    grads = []
    for fg1 in (
        torch.zeros(2, 2, dtype=DT),
        torch.ones(2, 2, dtype=DT),
        torch.tensor([[0.0, 3.0], [0.0, 0.0]], dtype=DT),
    ):
        fg_mod = fg.clone()
        fg_mod[1] = fg1
        s_req = s.clone().requires_grad_(True)
        pgd_cls_loss(s_req, t, fg_mod, bg, **CLS_KW).backward()
        grads.append(s_req.grad[0].clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-12, atol=0)


def test_cls_loss_maps_are_normalised_by_their_non_zero_count():
    # Doubling every entry of the map doubles M~ (the count stays the same), and
    # adding zeros changes nothing; zeroing half the entries changes the count.
    s, t, fg, bg = _random_inputs(2, n=1, h=2, w=2, fg_zero_frac=-1.0)  # no zeros in fg
    kw = dict(CLS_KW, beta=0.0, delta=0.0)
    base = pgd_cls_loss(s, t, fg, bg, **kw)
    assert pgd_cls_loss(s, t, 2 * fg, bg, **kw).item() == pytest.approx(2 * base.item(), rel=1e-12)
    half = fg.clone()
    half[0, 1] = 0.0  # 4 -> 2 non-zero entries
    assert pgd_cls_loss(s, t, half, bg, **kw).item() == pytest.approx(
        ref_cls(s, t, half, bg, lam=1.0, **kw), rel=1e-10
    )


# ---------------------------------------------------------------------------
# Regression loss.
# ---------------------------------------------------------------------------
def test_reg_loss_hand_value():
    # N = 1, C = 2, H = 1, W = 2. Location 0 has R = 0.5, T = (0, 0), S = (1, 0):
    #   A(T) = (1, 1), A(S) = (1.5, 0.5) at temperature 1/ln3
    #   feature term: R * mean_c(A(T)(S-T)^2) = 0.5 * (1 + 0)/2 = 0.25, P = 1
    #   attention term: (0.5 + 0.5) / P = 1
    # Location 1 has R = 0 and a large difference: it must not count.
    # loss = 2 * 0.25 + 0.1 * 1 = 0.6
    s = torch.tensor([[[[1.0, 9.0]], [[0.0, -4.0]]]], dtype=DT)
    t = torch.zeros(1, 2, 1, 2, dtype=DT)
    r = torch.tensor([[[0.5, 0.0]]], dtype=DT)
    loss = pgd_reg_loss(s, t, r, temp=T_LN3, gamma=2.0, delta=0.1)
    assert loss.item() == pytest.approx(0.6, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(1, 2, 2, 2), (2, 3, 2, 2), (2, 2, 3, 2)])
def test_reg_loss_matches_reference(seed, shape):
    s, t, r, _ = _random_inputs(seed, *shape)
    got = pgd_reg_loss(s, t, r, temp=0.8, gamma=0.128, delta=8e-4)
    expected = ref_reg(s, t, r, temp=0.8, gamma=0.128, delta=8e-4)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_reg_loss_only_positive_locations_count():
    # Changing features where R <= 0 (zero or, defensively, negative) changes nothing.
    s, t, _, _ = _random_inputs(3, n=2)
    r = torch.tensor([[[0.4, 0.0], [-0.2, 0.9]], [[0.0, 0.0], [0.3, 0.0]]], dtype=DT)
    off = (r <= 0)[:, None].expand_as(s)
    s2, t2 = s.clone(), t.clone()
    s2[off] += 5.0
    t2[off] -= 3.0
    kw = dict(temp=0.8, gamma=0.5, delta=0.2)
    assert pgd_reg_loss(s2, t2, r, **kw).item() == pytest.approx(
        pgd_reg_loss(s, t, r, **kw).item(), rel=1e-12
    )
    assert pgd_reg_loss(s, t, r, **kw).item() == pytest.approx(ref_reg(s, t, r, **kw), rel=1e-10)


def test_reg_loss_zero_with_graph_when_map_is_empty():
    s, t, _, _ = _random_inputs(4)
    s.requires_grad_(True)
    loss = pgd_reg_loss(s, t, torch.zeros(2, 2, 2, dtype=DT), temp=0.8, gamma=1.0, delta=1.0)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert s.grad is not None and not s.grad.any()


def test_reg_loss_zero_when_student_equals_teacher():
    _, t, r, _ = _random_inputs(6)
    assert (r > 0).any()
    assert pgd_reg_loss(t.clone(), t, r, temp=0.8, gamma=1.0, delta=1.0).item() == 0.0


def test_reg_loss_gradient_reaches_the_student_only():
    s, t, r, _ = _random_inputs(8)
    assert (r > 0).any()
    s.requires_grad_(True)
    t.requires_grad_(True)
    pgd_reg_loss(s, t, r, temp=0.8, gamma=1.0, delta=1.0).backward()
    assert t.grad is None or not t.grad.any()
    assert s.grad is not None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------------------
# Shape checks.
# ---------------------------------------------------------------------------
def _cls(s, t, fg, bg):
    return pgd_cls_loss(s, t, fg, bg, **CLS_KW)


def _reg(s, t, fg, _bg):
    return pgd_reg_loss(s, t, fg, temp=0.8, gamma=1.0, delta=1.0)


@pytest.mark.parametrize("loss_fn", [_cls, _reg])
@pytest.mark.parametrize("case", ["channels", "spatial", "batch", "map", "map_batch", "three_d"])
def test_shape_mismatch_raises(loss_fn, case):
    s, t, fg, bg = _random_inputs(0, n=2, c=3, h=2, w=2)
    if case == "channels":
        t = torch.zeros(2, 4, 2, 2, dtype=DT)
    elif case == "spatial":
        t = torch.zeros(2, 3, 2, 3, dtype=DT)
    elif case == "batch":
        t = torch.zeros(1, 3, 2, 2, dtype=DT)
    elif case == "map":
        fg = torch.zeros(2, 2, 3, dtype=DT)
    elif case == "map_batch":
        fg = torch.zeros(1, 2, 2, dtype=DT)
    else:
        s, t = s[0], t[0]
    with pytest.raises(ValueError):
        loss_fn(s, t, fg, bg)


def test_cls_loss_rejects_a_bad_background_map():
    s, t, fg, _ = _random_inputs(0, n=2)
    with pytest.raises(ValueError):
        pgd_cls_loss(s, t, fg, torch.zeros(2, 1, 2, 2, dtype=DT), **CLS_KW)


@pytest.mark.parametrize("seed", range(5))
def test_multilevel_equals_sum_of_per_level_losses(seed: int) -> None:
    from pgd_core.distill.losses import pgd_multilevel_losses

    gen = torch.Generator().manual_seed(seed)
    n, c = 3, 6
    shapes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    s_cls = [rand(n, c, h, w).requires_grad_() for h, w in shapes]
    s_reg = [rand(n, c, h, w).requires_grad_() for h, w in shapes]
    t_cls = [rand(n, c, h, w) for h, w in shapes]
    t_reg = [rand(n, c, h, w) for h, w in shapes]
    sparse = [rand(n, h, w).clamp(min=0) * (rand(n, h, w) > 0.8) for h, w in shapes]
    sparse[3] = torch.zeros_like(sparse[3])  # a level with no regression location
    bg = [(rand(n, h, w) > 0).double() for h, w in shapes]
    kw = dict(temp=0.7, alpha=0.05, beta=0.02, gamma=0.08, delta=1e-3)
    lam = (1.0, 1.25, 1.5, 1.75, 2.0)

    def flat(maps):
        return torch.cat([m.flatten(1) for m in maps], dim=1)

    cls, reg = pgd_multilevel_losses(
        s_cls, t_cls, s_reg, t_reg, flat(sparse), flat(bg), flat(sparse), level_weights=lam, **kw
    )
    cls_ref = sum(
        pgd_cls_loss(
            a, b, f, g, temp_s=0.7, temp_c=0.7, alpha=0.05, beta=0.02, delta=1e-3, loss_weight=lw
        )
        for a, b, f, g, lw in zip(s_cls, t_cls, sparse, bg, lam)
    )
    reg_ref = sum(
        pgd_reg_loss(a, b, r, temp=0.7, gamma=0.08, delta=1e-3)
        for a, b, r in zip(s_reg, t_reg, sparse)
    )
    torch.testing.assert_close(cls, cls_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(reg, reg_ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(cls + reg, s_cls + s_reg)
    grads_ref = torch.autograd.grad(cls_ref + reg_ref, s_cls + s_reg)
    for g1, g2 in zip(grads, grads_ref):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)
