# wanfly server on a CUDA PyTorch base. Build: docker compose build  (or: docker build -t wanfly .)
#   --build-arg FLASH_ATTN=1   also build flash-attn from source (25-60 min; without it diffsynth uses torch SDPA)
#   --build-arg EXTRAS=serve,cluster   also Ray Serve (python -m server.cluster, docs/cluster.md)
#   --build-arg BASE_IMAGE=... another CUDA PyTorch image (torch and torchvision must be a matching pair)
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

ARG FLASH_ATTN=0
# serve: python -m server; serve,cluster: also Ray Serve for python -m server.cluster (docker compose --profile cluster)
ARG EXTRAS=serve
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DIFFSYNTH_SKIP_DOWNLOAD=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    WANFLY_WEB_DIR=/app/web \
    WANFLY_TOY_WORLD_DIR=/app/worlds/toy

WORKDIR /app
# Dependencies first (cached while only code changes); the serving extra, not training.
COPY pyproject.toml README.md ./
COPY models ./models
COPY server ./server
COPY web ./web
COPY worlds ./worlds
RUN pip install ".[${EXTRAS}]" \
 && if [ "$FLASH_ATTN" = "1" ]; then pip install flash-attn --no-build-isolation; fi

RUN useradd --create-home --uid 1000 wanfly && mkdir -p /recordings && chown wanfly /recordings
USER wanfly

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"
# Weights and artifacts come from WANFLY_MODEL_DIR / WANFLY_ARTIFACTS (see docker-compose.yml); with neither,
# the toy world (worlds/toy) is served.
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
