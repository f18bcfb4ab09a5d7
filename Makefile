# pgd: set up and test. Both targets create and reuse .venv/ at the repository root.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pgd-setup
# torch's CPU wheel lies on this kind of machine's disk; without it pip would
# fetch a multi-GB CUDA build.
export PIP_FIND_LINKS ?= /opt/wheels
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: setup test test-all lint bench demo up clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing later can pull a newer one; setuptools
	# 80.9 satisfies torch (>= 77) and still ships pkg_resources (mmcv, mmengine).
	$(BIN)/pip install torch==2.13.0 setuptools==80.9.0 wheel numpy==1.26.4 ninja
	# mmcv 2.1.0 exists on PyPI only as source: its C++ ops compile against the
	# torch above (about 25 min on 2 cores the first time). pip caches the built
	# wheel, so later setups on the same machine take seconds: keep the cache.
	# Its dependencies are pinned in the same command so that pip never pulls
	# numpy 2 or OpenCV 5 (which mmcv 2.1 does not support) even for a moment.
	MMCV_WITH_OPS=1 $(BIN)/pip install --no-build-isolation mmcv==2.1.0 mmengine==0.10.7 \
	    numpy==1.26.4 opencv-python==4.10.0.84
	$(BIN)/pip install --no-build-isolation -e '.[dev]'
	$(BIN)/python -c "import mmcv.ops, mmdet, torch; print('mmcv ops OK, mmdet', mmdet.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# The whole product on this machine: embedded stack, synthetic data, teacher,
# baseline and PGD student trained through the API, then the leaderboard.
demo: setup
	$(BIN)/pgd demo

# API + one worker on SQLite and a server-less broker (Ctrl-C stops both).
up: setup
	$(BIN)/pgd up

test: setup
	$(BIN)/python -m pytest -q -m "not slow and not gpu" --durations=25

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check pgd_core pgd_service api worker migrations tests bench
	$(BIN)/ruff format --check pgd_core pgd_service api worker migrations tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/bench_regions.py
	$(BIN)/python bench/bench_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
