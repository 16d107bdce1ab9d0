# syntax=docker/dockerfile:1.7
# Kiln images. Targets:
#   operator     small: the base install (Kopf, Kubernetes client, boto3), no torch
#   builder      CPU builder and inference server: extras builder,cpu,serve
#   builder-gpu  GPU builder and server: extras builder,gpu,serve, TensorRT where reachable
# Build them all with `make images` (docker, or buildah/podman where no engine runs), or one:
#   docker build --secret id=ca,src=/dev/null --target operator -t kiln-operator:0.2.0 .
#
# PYTHON_IMAGE is any Debian-based image with python3 (>= 3.11) and its venv module: the
# public slim Python image by default; `make images` uses a base it makes with debootstrap
# from Debian's own packages where no image registry is reachable.
#
# The secret `ca` is the build host's CA bundle, for a build behind a TLS-intercepting proxy:
# pip trusts it while building, and it is never stored in a layer. An empty file means none.

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# ---- wheel builder: kiln itself as a wheel, built once -------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY builder/ builder/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /tmp/build-env \
    && /tmp/build-env/bin/pip install --no-cache-dir build==1.2.2 \
    && /tmp/build-env/bin/python -m build --wheel --outdir /wheels .

# ---- operator: a virtual environment with the base install only --------------------------
FROM ${PYTHON_IMAGE} AS operator-venv
COPY --from=wheel /wheels /wheels
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/kiln \
    && /opt/kiln/bin/pip install --no-cache-dir "$(ls /wheels/kiln-*.whl)[operator]" \
    && rm -rf /opt/kiln/lib/python3*/site-packages/kubernetes/aio \
    && /opt/kiln/bin/pip uninstall --yes --quiet pip setuptools
# Trimmed to keep the image small (under 300 MB): the Kubernetes client's asyncio copy (about
# 70 MB), which Kiln never imports (Kopf has its own client; Kiln uses the synchronous one),
# and pip and setuptools, since nothing is installed at run time.

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
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/kiln \
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

# ---- builder-gpu: the same on CUDA, from PyPI wheels -------------------------------------
# CUDA, cuDNN and the rest come as PyPI wheels (torch's and onnxruntime-gpu's dependencies);
# the driver comes from the host at run time. No NVIDIA registry is needed.
FROM ${PYTHON_IMAGE} AS builder-gpu-venv
COPY --from=wheel /wheels /wheels
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/kiln \
    && /opt/kiln/bin/pip install --no-cache-dir "$(ls /wheels/kiln-*.whl)[builder,gpu,serve]"
# TensorRT's PyPI packages download the real libraries from NVIDIA's own index. TENSORRT=auto
# installs them where that index is reachable and otherwise builds without them, saying so in
# the build log and in /opt/kiln/TENSORRT; yes fails the build when they cannot be installed;
# no skips them. Without TensorRT the builder reports its candidates SKIPPED with the reason.
ARG TENSORRT=auto
COPY images/install-tensorrt.sh /usr/local/bin/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && install-tensorrt.sh "$TENSORRT" /opt/kiln "$(ls /wheels/kiln-*.whl)"

FROM ${PYTHON_IMAGE} AS builder-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder-gpu-venv /opt/kiln /opt/kiln
ENV PATH=/opt/kiln/bin:$PATH PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/cache
RUN useradd --uid 10001 --create-home kiln
USER 10001
WORKDIR /home/kiln
ENTRYPOINT ["kiln"]
