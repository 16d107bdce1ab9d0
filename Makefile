# Kiln developer entry points. `make demo` and `make test` are the two newcomer commands.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= builder,cpu,serve,operator,models,dev

.PHONY: setup demo test lint typecheck contracts unit clean cluster-bin cluster-up cluster-down \
	dev-up dev-down browser gpu-kit gpu-dry-run images image-base container-tools

setup: $(STAMP)

# Re-install whenever the project's declared dependencies change. setuptools notes on every
# editable install of a tree like this one (packages mapped from other folders) that a folder
# named like a package in the working directory would shadow it; none here is (they live under
# operator/ and builder/), so that one note is filtered out by its text, and nothing else.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation.' $(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/lipsync/make_example.py
	$(BIN)/kiln optimize examples/lipsync/optimizedmodel.yaml --output out/lipsync

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# The local Kubernetes cluster (tests/cluster): binaries are built once and cached outside the
# clone, keyed by the Go module pins; up/down start and stop everything, loopback only.
cluster-bin: $(STAMP)
	$(BIN)/python -m tests.cluster build

cluster-up: cluster-bin
	$(BIN)/python -m tests.cluster up

cluster-down:
	$(BIN)/python -m tests.cluster down

# The same cluster with Kiln installed from manifests/, the operator running from the working
# tree under its ServiceAccount, and the example uploaded: .kiln/examples/lipsync.yaml.
dev-up: cluster-bin
	$(BIN)/python -m tests.cluster dev-up

dev-down: cluster-down

# Headless Chromium, for the test that looks at the HTML report in a real browser: installed
# from Debian's packages where this runs as root with apt-get; elsewhere that test says SKIPPED.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 \
	         && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
	    || echo "note: could not install chromium; the browser test will be SKIPPED"; \
	  else echo "note: no chromium (install it to run the browser test)"; fi; }

# buildah and debootstrap, for building and running the images without a Docker engine:
# installed from Debian's packages where this runs as root with apt-get and no engine answers;
# elsewhere the image tests say SKIPPED.
container-tools:
	@docker info >/dev/null 2>&1 || command -v buildah >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends buildah debootstrap >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 \
	         && apt-get install -y -q --no-install-recommends buildah debootstrap >/dev/null 2>&1; } \
	    || echo "note: could not install buildah; the image tests will be SKIPPED"; \
	  else echo "note: no docker engine or buildah (install one to build the images)"; fi; }

# The images (Dockerfile targets operator, builder, builder-gpu), tagged kiln-<target>:VERSION.
# IMAGE_BASE=auto|registry|debootstrap, TENSORRT=auto|yes|no, REGISTRY=host/org to push.
IMAGE_TARGETS ?= operator builder builder-gpu
IMAGE_BASE    ?= auto
TENSORRT      ?= auto
REGISTRY      ?=
images: $(STAMP) container-tools
	$(BIN)/python -m tests.images build --targets $(IMAGE_TARGETS) --base $(IMAGE_BASE) \
	  --tensorrt $(TENSORRT) --registry '$(REGISTRY)'

# Only the Debian base made by debootstrap (what IMAGE_BASE=debootstrap builds from), cached.
image-base: $(STAMP) container-tools
	$(BIN)/python -m tests.images base

# Every tier that needs no GPU; GPU tests report SKIPPED with their reason.
test: lint typecheck contracts cluster-bin browser container-tools
	$(BIN)/pytest

# What a lent GPU machine lacks to run Kiln (tests/gpu/README.md): .gpu-kit/, git-ignored.
# ORT=1 adds onnxruntime-gpu in parts, for a lease longer than 15 minutes.
gpu-kit: $(STAMP)
	$(BIN)/python -m tests.gpu.kit $(if $(ORT),--with-ort)

# The core device call run here on the CPU (KILN_GPU_DRY_RUN=1) in a Python 3.12 venv made like
# the device's: its size, its time, every GPU step SKIPPED. Not part of `make test` (it fetches
# the device's torch for CPython 3.12, over 500 MB, on its first run). REHEARSE=1 also runs the
# GPU steps against the CPU target under the device's torch (minutes).
gpu-dry-run: $(STAMP)
	$(BIN)/python -m tests.gpu.dry_run $(if $(REHEARSE),--rehearse)

clean:
	rm -rf out .kiln .mypy_cache .ruff_cache .pytest_cache .gpu-kit
