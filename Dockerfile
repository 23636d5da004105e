# syntax=docker/dockerfile:1
# specserve images, one target each (docker build --target <name> -t specserve:<name> .):
#   neuron       trn1/inf2, transformers-neuronx: the last AWS inference container that ships it (SDK 2.25, Python 3.10,
#                torch 2.7). Run with --device=/dev/neuron0 (one --device per Neuron device the model needs).
#   neuron-nxdi  trn1/inf2, NxD Inference on a newer Neuron SDK container. The default tag below is our best reading of
#                the SDK 2.26 naming (PyTorch 2.8, Python 3.11); check the Neuron containers list and override it with
#                --build-arg NEURON_NXDI_IMAGE=... if AWS named it differently.
#   cpu          everyone else: python:3.11-slim with the CPU torch wheel.
# Every target runs `specserve serve` as a non-root user, listens on 0.0.0.0:8000 and takes the model from
# SPECSERVE_MODEL (a Hugging Face hub id or a mounted directory) or from arguments after the image name.

ARG NEURON_TNX_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuronx:2.7.0-neuronx-py310-sdk2.25.0-ubuntu22.04
ARG NEURON_NXDI_IMAGE=public.ecr.aws/neuron/pytorch-inference-neuronx:2.8.0-neuronx-py311-sdk2.26.0-ubuntu22.04

# ---- the specserve wheel (pure Python), built once and installed by every target ----
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY engine ./engine
COPY server ./server
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- trn1 / inf2 with transformers-neuronx ----
FROM ${NEURON_TNX_IMAGE} AS neuron
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=wheel /wheels /wheels
# Keep the container's Neuron stack (torch, torch-neuronx, transformers-neuronx, transformers) exactly as AWS built it:
# specserve's own requirements are satisfied around it, never by upgrading it.
RUN python -m pip freeze | grep -iE '^(torch|torch-neuronx|torch_neuronx|transformers-neuronx|transformers_neuronx|neuronx-cc|neuronx_cc|transformers)==' > /tmp/neuron-pins.txt \
    && python -m pip install --no-cache-dir -c /tmp/neuron-pins.txt /wheels/*.whl \
    && rm -rf /wheels /tmp/neuron-pins.txt \
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
RUN python -m pip freeze | grep -iE '^(torch|torch-neuronx|torch_neuronx|neuronx-distributed|neuronx_distributed|neuronx-distributed-inference|neuronx_distributed_inference|neuronx-cc|neuronx_cc|transformers)==' > /tmp/neuron-pins.txt \
    && python -m pip install --no-cache-dir -c /tmp/neuron-pins.txt /wheels/*.whl \
    && rm -rf /wheels /tmp/neuron-pins.txt \
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
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin specserve
ENV SPECSERVE_HOST=0.0.0.0 \
    SPECSERVE_PORT=8000 \
    SPECSERVE_BACKEND=torch \
    HF_HOME=/home/specserve/.cache/huggingface \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/specserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SPECSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["specserve", "serve"]
