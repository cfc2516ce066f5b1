# wanfly server on a CUDA PyTorch runtime image. Build: docker compose build  (or: docker build -t wanfly .)
#   --build-arg UID=$(id -u) --build-arg GID=$(id -g)  the user the server runs as (default 1000:1000; an existing
#       user or group with that id is reused), so recordings on a bind mount belong to you
#   --build-arg BASE_IMAGE=...  another CUDA PyTorch image; its torch must be the tested one in constraints.txt
#       (pip would otherwise replace it with PyPI's torch of that version)
# Attention: the image installs NO flash-attn package; diffsynth then uses torch's SDPA (the kernel the GPU numbers in
# docs/performance.md were measured with). diffsynth prefers FlashAttention 3 (the `flash_attn_interface` module,
# built from flash-attention's hopper/ folder, Hopper GPUs only) over FlashAttention 2 (the `flash-attn` package).
#   --build-arg FLASH_ATTN=1 --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-devel
#       builds FlashAttention 2 (`pip install flash-attn`, 25-60 min; needs the -devel image for nvcc). Neither FA2
#       nor FA3 has been measured in this image (no GPU was lent when it was written).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG FLASH_ATTN=0
# serve: python -m server; "serve cluster": also Ray Serve for python -m server.cluster (docker compose --profile cluster)
ARG EXTRAS=serve
ARG UID=1000
ARG GID=1000
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp/wanfly-home \
    DIFFSYNTH_SKIP_DOWNLOAD=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    WANFLY_WEB_DIR=/app/web \
    WANFLY_TOY_WORLD_DIR=/app/worlds/toy

WORKDIR /app
# 1. Dependencies from the project metadata only, pinned to the tested versions: this layer is rebuilt when
#    pyproject.toml or constraints.txt change, not when the code does.
COPY pyproject.toml constraints.txt ./
COPY scripts/deps.py ./scripts/deps.py
RUN python scripts/deps.py requirements ${EXTRAS} > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && if [ "$FLASH_ATTN" = "1" ]; then \
      command -v nvcc >/dev/null || { echo "FLASH_ATTN=1 needs a -devel BASE_IMAGE (nvcc)" >&2; exit 1; }; \
      pip install -c constraints.txt flash-attn --no-build-isolation; \
    fi

# 2. The code (no dependency changes: --no-deps).
COPY README.md ./
COPY models ./models
COPY server ./server
COPY web ./web
COPY worlds ./worlds
COPY docker/entrypoint.sh /usr/local/bin/wanfly-entrypoint
RUN pip install --no-deps -c constraints.txt . \
 && (getent group "$GID" >/dev/null || groupadd --gid "$GID" wanfly) \
 && (getent passwd "$UID" >/dev/null || useradd --no-create-home --uid "$UID" --gid "$GID" wanfly) \
 && mkdir -p /recordings "$HOME" && chown "$UID:$GID" /recordings && chmod 1777 "$HOME"
USER ${UID}:${GID}

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"
# Weights and artifacts come from WANFLY_MODEL_DIR / WANFLY_ARTIFACTS (see docker-compose.yml); the entrypoint serves
# the toy world (worlds/toy) when the weights folder is missing or empty. Arguments go to python -m server.
ENTRYPOINT ["wanfly-entrypoint"]
CMD []
