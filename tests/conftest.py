"""Shared fixtures: tiny detector configs and synthetic batches (no files, no network)."""

from __future__ import annotations

import pytest

from pgd_core.spec import DETECTORS


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(params=DETECTORS)
def detector(request: pytest.FixtureRequest) -> str:
    return request.param


# Session-wide trained tiny models for the end-to-end checks of reported numbers.
from trained_models import (  # noqa: E402, F401
    cli_distilled,
    crowd,
    crowd_run,
    library_run,
    oracle_data,
    service_runs,
    shapes,
)
