# syntax=docker/dockerfile:1
# sMoE image: `smoe serve` (the KEDA external scaler and the controller) on CPU-only PyTorch.
#   docker build -t REGISTRY/smoe:0.1.0 .
# Two stages: the builder compiles the gRPC stubs and installs sMoE with its dependencies into a
# virtual environment; the runtime copies only that environment and runs as uid 65532.
# The bundled policy (smoelib/policy/pretrained/default.pt) is package data, so it is inside.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/smoe
ENV PATH=/opt/smoe/bin:$PATH
# CPU wheels first: a plain `pip install torch` resolves to a multi-GB CUDA build. The policy
# runs on the scaler's CPU; GPUs belong to the experts.
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY smoelib ./smoelib
# The stubs are generated, not committed (`make proto` does the same).
RUN pip install "grpcio-tools>=1.60" \
 && python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
        smoelib/keda_proto/externalscaler.proto \
 && pip install . \
 && python -c "import importlib.resources as r, smoelib.keda_proto.externalscaler_pb2; \
assert (r.files('smoelib') / 'policy/pretrained/default.pt').is_file(), 'bundled policy missing'"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="smoe" \
      org.opencontainers.image.description="Autoscaler for Mixture-of-Experts inference on KEDA-driven OpenFaaS" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 smoe \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin smoe
COPY --from=builder /opt/smoe /opt/smoe
ENV PATH=/opt/smoe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
# The Deployment mounts the decision file's directory as an emptyDir; this makes it exist for
# `docker run` too.
RUN mkdir -p /var/lib/smoe/decisions && chown 65532:65532 /var/lib/smoe/decisions
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 9090 8080
ENTRYPOINT ["smoe", "serve"]
