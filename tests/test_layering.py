"""pgd_core is a pure ML library: it imports without the service stack, and its light
modules (spec, presets, data, configs, evaluation's protocols) import without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = """
import sys
class Block:
    def __init__(self, names): self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.names:
            raise ImportError(f'blocked by the test: {{name}}')
        return None
sys.meta_path.insert(0, Block({blocked!r}))
"""
SERVICE_STACK = [
    "pgd_service",
    "fastapi",
    "starlette",
    "celery",
    "kombu",
    "sqlalchemy",
    "alembic",
    "redis",
    "api",
    "worker",
]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_blocker_really_blocks() -> None:
    proc = _run(BLOCKER.format(blocked=["json"]) + "import json")
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr


@pytest.mark.parametrize(
    "module",
    [
        "pgd_core.distill.regions",
        "pgd_core.distill.losses",
        "pgd_core.distill.decode",
        "pgd_core.distill.balance",
        "pgd_core.spec",
        "pgd_core.presets",
        "pgd_core.distill.distiller",
        "pgd_core.evaluation.evaluators",
        "pgd_core.runner",
        "pgd_core.cli",
    ],
)
def test_imports_without_service_stack(module: str) -> None:
    proc = _run(BLOCKER.format(blocked=SERVICE_STACK) + f"import {module}")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "module",
    [
        "pgd_core.spec",
        "pgd_core.presets",
        "pgd_core.data.manifest",
        "pgd_core.data.coco",
        "pgd_core.data.odgt",
        "pgd_core.data.validation",
        "pgd_core.data.synthetic_shapes",
        "pgd_core.data.synthetic_crowd",
        "pgd_core.configs.model",
        "pgd_core.configs.runner",
        "pgd_core.evaluation",
    ],
)
def test_light_modules_import_without_torch(module: str) -> None:
    proc = _run(
        BLOCKER.format(blocked=SERVICE_STACK + ["torch", "mmdet", "mmcv", "mmengine"])
        + f"import {module}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / package).rglob("*.py")
    )


@pytest.mark.parametrize("module", _modules("pgd_service"))
def test_the_service_package_imports_neither_the_web_stack_nor_torch(module: str) -> None:
    """pgd_service sits below api and worker: no FastAPI, no torch, neither of them."""
    blocked = ["fastapi", "starlette", "torch", "mmdet", "mmcv", "mmengine", "api", "worker"]
    proc = _run(BLOCKER.format(blocked=blocked) + f"import {module}")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", ["worker.app", "worker.tasks", "worker.execution"])
def test_the_worker_never_imports_api(module: str) -> None:
    proc = _run(BLOCKER.format(blocked=["api", "fastapi", "starlette"]) + f"import {module}")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", ["api.main", "api.cli"])
def test_the_api_never_imports_torch(module: str) -> None:
    """The API process stays light: torch and mmdet load only in workers."""
    proc = _run(
        BLOCKER.format(blocked=["torch", "mmdet", "mmcv", "mmengine"])
        + f"import {module}\nfrom api.main import create_app\ncreate_app"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
