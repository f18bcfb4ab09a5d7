"""Builders for tiny models and synthetic batches used by several test modules."""

from __future__ import annotations

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

import pgd_core.distill.distiller  # noqa: F401  (registers PGDDistiller)
from pgd_core.configs.runner import model_cfg
from pgd_core.presets import get_preset

IMG = 160


def tiny_spec(detector: str, method: str = "pgd", **distill_overrides):
    """The tiny distill preset of ``detector`` with ``method`` and distill overrides."""
    spec = get_preset(f"tiny-{detector}-pgd")
    distill = spec.distill.model_copy(update=distill_overrides)
    return spec.model_copy(update={"method": method, "distill": distill})


def build_distiller(detector: str, method: str = "pgd", num_classes: int = 3, **distill_overrides):
    spec = tiny_spec(detector, method, **distill_overrides)
    model = MODELS.build(ConfigDict(model_cfg(spec, num_classes)))
    model.init_weights()
    return model


def synthetic_batch(
    num_images: int = 2,
    size: int = IMG,
    num_classes: int = 3,
    seed: int = 0,
    gts_per_image: tuple[int, ...] | None = None,
) -> dict:
    """A batch as mmdet's data loader yields it: uint8 images and DetDataSamples."""
    gen = torch.Generator().manual_seed(seed)
    gts_per_image = gts_per_image or tuple(3 + i for i in range(num_images))
    inputs, samples = [], []
    for i in range(num_images):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8))
        g = gts_per_image[i]
        xy = torch.rand(g, 2, generator=gen) * (size - 60)
        wh = 16 + torch.rand(g, 2, generator=gen) * 40
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                scale_factor=(1.0, 1.0),
                batch_input_shape=(size, size),
                img_id=i,
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], dim=1),
            labels=torch.randint(0, num_classes, (g,), generator=gen),
        )
        sample.ignored_instances = InstanceData(
            bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)
        )
        samples.append(sample)
    return {"inputs": inputs, "data_samples": samples}
