# One image for the API and the workers (the API never imports torch at start-up,
# but shares the package). Built for CUDA: mmcv's ops are compiled against the
# image's CUDA toolkit and torch. Build: docker compose build
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common git build-essential \
        libgl1 libglib2.0-0 curl \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch pinned first (CUDA build from PyPI), then mmcv compiled with CUDA ops.
RUN pip install torch==2.13.0 setuptools==80.9.0 wheel numpy==1.26.4 ninja
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"
RUN MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install --no-build-isolation mmcv==2.1.0 mmengine==0.10.7 numpy==1.26.4 \
        opencv-python==4.10.0.84
COPY pyproject.toml README.md alembic.ini ./
COPY pgd_core pgd_core
COPY pgd_service pgd_service
COPY api api
COPY worker worker
COPY migrations migrations
RUN pip install --no-build-isolation -e .

EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
