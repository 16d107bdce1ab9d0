# syntax=docker/dockerfile:1.7
# Kiln images. Targets:
#   operator     small: the base install (Kopf, Kubernetes client, boto3), no torch
#   builder      CPU builder and inference server: extras builder,cpu,serve
#   builder-gpu  GPU builder and server on NVIDIA's TensorRT image: extras builder,gpu,serve
# Build: docker build --target builder -t kiln-builder:0.2.0 .

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3

# ---- wheel builder: kiln itself as a wheel, built once -------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY builder/ builder/
RUN pip install --no-cache-dir build==1.2.2 \
    && python -m build --wheel --outdir /wheels .

# ---- operator: a virtual environment with the base install only --------------------------
FROM ${PYTHON_IMAGE} AS operator-venv
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/kiln \
    && /opt/kiln/bin/pip install --no-cache-dir "$(ls /wheels/kiln-*.whl)[operator]"

FROM ${PYTHON_IMAGE} AS operator
COPY --from=operator-venv /opt/kiln /opt/kiln
ENV PATH=/opt/kiln/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --create-home kiln
USER 10001
ENTRYPOINT ["kiln"]
CMD ["operator"]

# ---- builder (CPU): export, quantize, benchmark, serve -----------------------------------
FROM ${PYTHON_IMAGE} AS builder-venv
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/kiln \
    && /opt/kiln/bin/pip install --no-cache-dir "$(ls /wheels/kiln-*.whl)[builder,cpu,serve]"

FROM ${PYTHON_IMAGE} AS builder
# AOTInductor (and torch.compile) compile C++ when a candidate is built, so the builder needs
# a compiler. Serving a built package does not: `kiln serve` loads it with none on PATH.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder-venv /opt/kiln /opt/kiln
ENV PATH=/opt/kiln/bin:$PATH PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache
RUN useradd --uid 10001 --create-home kiln
USER 10001
WORKDIR /home/kiln
ENTRYPOINT ["kiln"]

# ---- builder-gpu: TensorRT base image plus onnxruntime-gpu -------------------------------
# The TensorRT image carries g++ (for its samples), which AOTInductor's host code needs.
FROM ${TENSORRT_IMAGE} AS builder-gpu-venv
COPY --from=wheel /wheels /wheels
# The base image already carries TensorRT's Python bindings; the venv sees them.
RUN python3 -m venv --system-site-packages /opt/kiln \
    && /opt/kiln/bin/pip install --no-cache-dir "$(ls /wheels/kiln-*.whl)[builder,gpu,serve]"

FROM ${TENSORRT_IMAGE} AS builder-gpu
COPY --from=builder-gpu-venv /opt/kiln /opt/kiln
ENV PATH=/opt/kiln/bin:$PATH PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache
RUN useradd --uid 10001 --create-home kiln
USER 10001
WORKDIR /home/kiln
ENTRYPOINT ["kiln"]
