# The image of every Nexus deployable: the gateway and each service under services/. Build from
# the repository root (docs/deploy.md, docs/adr/0025-one-image-recipe.md):
#   docker build --build-arg SERVICE=gateway -t nexus/gateway .
#   docker build --build-arg SERVICE=anomaly -t nexus/anomaly .
#   docker build --build-arg SERVICE=llm --build-arg VARIANT=cuda -t nexus/llm:latest-cuda .
# SERVICE is `gateway` or the name of a folder under services/ (a new service needs nothing here).
# VARIANT is `cpu` (default) or `cuda`, for the services whose lock holds torch: `cuda` installs
# the lock as it is (PyPI's torch is the CUDA build, with its NVIDIA libraries), `cpu` the same
# torch and torchvision versions built for the CPU, from TORCH_CPU_INDEX, without them. A `cuda`
# image whose lock holds onnxruntime lays onnxruntime-gpu of the same version over it (the same
# `onnxruntime` module, with the CUDA provider, on torch's CUDA 13 libraries; ADR 0038).
# The image runs as uid 10001, with a read-only root filesystem: only /tmp must be writable.
ARG PYTHON_IMAGE=python:3.11-slim

# The deployable's files only: its lock and the three packages it installs. The lock is copied
# on by content, so editing code does not re-run the dependency install below.
FROM ${PYTHON_IMAGE} AS sources
ARG SERVICE
ENV STAGE=/stage
WORKDIR /src
COPY libs/api libs/api
COPY libs/common libs/common
COPY gateway gateway
COPY services services
RUN if [ "$SERVICE" = gateway ]; then folder=gateway; else folder="services/$SERVICE"; fi \
    && if ! expr "$SERVICE" : '[a-z][a-z0-9]*$' >/dev/null \
        || [ ! -f "$folder/requirements.lock" ] \
        || [ ! -f "$folder/src/nexus/$SERVICE/__main__.py" ]; then \
        echo "SERVICE=$SERVICE: no deployable there: use gateway or a folder under services/" \
            "with a requirements.lock (make lock) and src/nexus/<name>/__main__.py" >&2; \
        exit 1; \
    fi \
    && mkdir -p "$STAGE/packages" \
    && cp "$folder/requirements.lock" "$STAGE/requirements.lock" \
    && cp -R libs/api libs/common "$STAGE/packages/" \
    && cp -R "$folder" "$STAGE/packages/deployable"

# A virtual environment with exactly the deployable's part of the lock, hash-checked (ADR 0013),
# then the workspace's packages without dependencies, and `pip check`.
FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nexus
ENV PATH=/opt/nexus/bin:$PATH
COPY --from=sources /stage/requirements.lock /tmp/requirements.lock
RUN set -e; cd /tmp; \
    torch=$(sed -n 's/^torch==\([^ +]*\).*/\1/p' requirements.lock); \
    vision=$(sed -n 's/^torchvision==\([^ +]*\).*/\1/p' requirements.lock); \
    ort=$(sed -n 's/^onnxruntime==\([^ +]*\).*/\1/p' requirements.lock); \
    case "$VARIANT" in cpu|cuda) ;; \
        *) echo "VARIANT=$VARIANT: use cpu or cuda" >&2; exit 1 ;; esac; \
    if [ -z "$torch" ] && [ "$VARIANT" = cuda ]; then \
        echo "VARIANT=cuda: $SERVICE does not use torch; build it without VARIANT" >&2; exit 1; \
    fi; \
    if [ -z "$torch" ] || [ "$VARIANT" = cuda ]; then \
        pip install --require-hashes --no-deps -r requirements.lock; \
        if [ "$VARIANT" = cuda ] && [ -n "$ort" ]; then \
            pip install --no-deps "onnxruntime-gpu==$ort"; \
        fi; \
    else \
        awk '/^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*)==/ {skip = 1; next} \
             /^[^ ]/ {skip = 0} !skip' requirements.lock > rest.lock; \
        sed -n 's/^\([^# ][^ ]*==[^ ]*\).*/\1/p' rest.lock > locked.txt; \
        pip install --require-hashes --no-deps -r rest.lock; \
        pip install --no-deps --index-url "$TORCH_CPU_INDEX" "torch==$torch+cpu" \
            ${vision:+"torchvision==$vision+cpu"}; \
    fi; \
    rm -f requirements.lock rest.lock locked.txt
COPY --from=sources /stage/packages /tmp/packages
RUN pip install --no-deps /tmp/packages/api /tmp/packages/common /tmp/packages/deployable \
    && pip check \
    && rm -rf /tmp/packages

# What runs: the venv on a slim Python, as uid 10001. Every cache and config folder a library
# writes to is under /tmp, the one writable path (a tmpfs in compose, an emptyDir in Kubernetes).
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="nexus/${SERVICE}" \
      org.opencontainers.image.description="Nexus ${SERVICE} (${VARIANT})"
RUN groupadd --gid 10001 nexus \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin nexus
COPY --from=builder /opt/nexus /opt/nexus
ENV PATH=/opt/nexus/bin:$PATH \
    NEXUS_SERVICE=${SERVICE} \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp XDG_CACHE_HOME=/tmp/.cache XDG_CONFIG_HOME=/tmp/.config \
    HF_HOME=/tmp/huggingface TORCH_HOME=/tmp/torch TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor MPLCONFIGDIR=/tmp/matplotlib \
    YOLO_CONFIG_DIR=/tmp/ultralytics NUMBA_CACHE_DIR=/tmp/numba \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True \
    NEXUS_GATEWAY_HOST=0.0.0.0 NEXUS_GATEWAY_PORT=8080
# A service's own settings prefix (NEXUS_ANOMALY_) has its name in upper case, which only a shell
# can spell: the start command sets the container's defaults there (listen on every interface,
# gRPC on 50051, metrics on 9090) unless the environment sets them, then execs the deployable.
RUN prefix="NEXUS_$(echo "$SERVICE" | tr '[:lower:]' '[:upper:]')" \
    && { echo '#!/bin/sh'; \
         if [ "$SERVICE" != gateway ]; then \
             for setting in GRPC_HOST=0.0.0.0 GRPC_PORT=50051 METRICS_PORT=9090; do \
                 name="${prefix}_${setting%%=*}"; \
                 echo "export ${name}=\"\${${name}:-${setting#*=}}\""; \
             done; \
         fi; \
         echo "exec python -m nexus.${SERVICE} \"\$@\""; \
       } > /opt/nexus/bin/nexus-serve \
    && chmod 0755 /opt/nexus/bin/nexus-serve
USER 10001:10001
WORKDIR /tmp
# Services: gRPC 50051 and Prometheus metrics 9090; the gateway: HTTP 8080.
EXPOSE 50051 9090 8080
CMD ["nexus-serve"]
