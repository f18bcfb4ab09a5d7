"""The one place that adapts the OpenMMLab stack for pgd_core.

Registers mmdet's modules under the default scope ``mmdet`` (so models can be
built from dicts outside a Runner), and adapts mmengine 0.10.7 to torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``; mmengine 0.10.7
calls it without the argument, so torch refuses mmengine's own checkpoints
(they pickle the message hub and config). Checkpoints here are files the
service itself wrote under its configured roots, so the local loader opts back
into full unpickling for them, and only for them.
"""

from __future__ import annotations

import os

import torch
from mmengine.runner.checkpoint import CheckpointLoader

_installed = False


def _load_trusted_local(filename: str, map_location=None):  # noqa: ANN001 - mmengine's API
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"checkpoint {filename} does not exist")
    return torch.load(filename, map_location=map_location, weights_only=False)


def install() -> None:
    """Register mmdet's modules and the local-file checkpoint loader (idempotent)."""
    global _installed
    if not _installed:
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        CheckpointLoader.register_scheme(prefixes="", loader=_load_trusted_local, force=True)
        _installed = True


install()
