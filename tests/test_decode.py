"""Teacher decoding must give the boxes the head itself predicts at test time."""

from __future__ import annotations

import torch
from helpers import synthetic_batch, tiny_spec
from mmdet.registry import MODELS
from mmengine.config import ConfigDict

from pgd_core.configs.runner import model_cfg
from pgd_core.distill.decode import decode_dense


def _plain_teacher(detector: str):
    spec = tiny_spec(detector).model_copy(
        update={"kind": "train", "method": "none", "teacher": None, "distill": None}
    )
    model = MODELS.build(ConfigDict(model_cfg(spec, 3)))
    model.init_weights()
    return model.eval()


def test_decoded_boxes_are_the_heads_test_time_boxes(detector: str) -> None:
    torch.manual_seed(0)
    model = _plain_teacher(detector)
    batch = model.data_preprocessor(synthetic_batch(num_images=1), False)
    metas = [s.metainfo for s in batch["data_samples"]]
    with torch.no_grad():
        outs = model.bbox_head(model.extract_feat(batch["inputs"]))
        preds = decode_dense(model.bbox_head, outs[0], outs[1], [m["img_shape"] for m in metas])
        # Every (prior, class) pair, no NMS, no size filter: mmdet's own decoding.
        cfg = ConfigDict(nms_pre=10**9, score_thr=-1.0, min_bbox_size=-1, max_per_img=-1)
        theirs = model.bbox_head.predict_by_feat(
            *outs, batch_img_metas=metas, cfg=cfg, rescale=False, with_nms=False
        )[0].bboxes
    ours = preds.boxes[0]
    num_classes = model.bbox_head.cls_out_channels
    assert theirs.shape[0] == ours.shape[0] * num_classes
    # Exact pairwise distances (the matmul shortcut loses ~0.1 px at these magnitudes).
    dist = torch.cdist(ours, theirs, compute_mode="donot_use_mm_for_euclid_dist")
    assert dist.min(dim=1).values.max() < 1e-3
    assert dist.min(dim=0).values.max() < 1e-3
    # Logits are the head's, in mmdet's prior order.
    flat = torch.cat([c[0].permute(1, 2, 0).reshape(-1, num_classes) for c in outs[0]])
    assert torch.equal(preds.cls_logits[0], flat)
    assert preds.centers.shape == (ours.shape[0], 2)


def test_per_location_and_split_locations_restore_grids() -> None:
    model = _plain_teacher("atss")
    batch = model.data_preprocessor(synthetic_batch(num_images=2), False)
    with torch.no_grad():
        outs = model.bbox_head(model.extract_feat(batch["inputs"]))
    preds = decode_dense(model.bbox_head, outs[0], outs[1], [(160, 160)] * 2)
    values = torch.arange(preds.cls_logits.shape[1], dtype=torch.float32).expand(2, -1)
    maps = preds.split_locations(preds.per_location(values))
    assert [tuple(m.shape) for m in maps] == [(2,) + tuple(c.shape[-2:]) for c in outs[0]]
    # Row-major order: the first level's (0, 1) entry is prior 1, and the second
    # level starts after the first one's locations.
    assert maps[0][0, 0, 1] == 1 and maps[1][0, 0, 0] == maps[0][0].numel()


def test_per_location_takes_the_max_over_anchors() -> None:
    from pgd_core.distill.decode import DensePredictions

    # Two levels of 2x1 and 1x1 locations, two anchors each: 6 priors, 3 locations.
    shapes = [(2, 1, 2), (1, 1, 2)]
    preds = DensePredictions(torch.zeros(6, 2), torch.zeros(1, 6, 1), torch.zeros(1, 6, 4), shapes)
    values = torch.tensor([[0.1, 0.5, 0.7, 0.2, 0.3, 0.0]])
    assert torch.equal(preds.per_location(values), torch.tensor([[0.5, 0.7, 0.3]]))
