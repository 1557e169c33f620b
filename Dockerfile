# syntax=docker/dockerfile:1
#
# The shopsearch API server.
#
#   docker build -t shopsearch .                                   # CPU image (default)
#   docker build -t shopsearch:gpu --build-arg EXTRAS=gpu --build-arg TORCH_INDEX_URL= .
#   docker run --rm -v shopsearch-index:/data/index shopsearch \
#       index /opt/shopsearch/examples/sample_catalog/catalog.jsonl --index /data/index
#   docker run --rm -p 8000:8000 -v shopsearch-index:/data/index -e SHOPSEARCH_API_KEY=secret shopsearch
#
# docker-compose.yml wraps the same commands. The models ship inside Python packages, so the image
# runs offline: nothing is downloaded at run time.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: install into a venv
FROM ${PYTHON_IMAGE} AS build

# Optional extras of the project, comma-separated ("gpu" adds faiss-gpu-cu12).
ARG EXTRAS=""
# pyproject.toml pins torch==2.14.1 and torchvision==0.29.1. PyPI's Linux wheels of those versions are
# CUDA builds that pull in several GB of NVIDIA libraries; the PyTorch CPU index serves the same
# versions as "2.14.1+cpu", which satisfy the pins and which pip prefers (a local version label sorts
# above the plain version). Pass an empty value for the GPU image, which wants PyPI's CUDA wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore keeps virtualenvs, caches, indexes and the tests out of the context
COPY . .
# faiss-cpu (a base dependency) and faiss-gpu-cu12 (the gpu extra) install the same `faiss` module:
# for a GPU build, drop faiss-cpu and reinstall faiss-gpu-cu12 so its files are the ones left.
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".${EXTRAS:+[$EXTRAS]}" \
 && case ",${EXTRAS}," in \
      *,gpu,*) pip uninstall -y faiss-cpu && pip install --force-reinstall --no-deps faiss-gpu-cu12 ;; \
    esac \
 && shopsearch --help > /dev/null

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# libgomp: OpenMP runtime used by FAISS
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv
# the sample catalog, so a fresh container can build a demo index (see the header)
COPY examples/sample_catalog /opt/shopsearch/examples/sample_catalog

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SHOPSEARCH_INDEX_DIR=/data/index

# Run as an unprivileged user. /data/index is created owned by it, so a named volume mounted there
# starts with the right owner.
RUN groupadd --gid 10001 shopsearch \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin shopsearch \
 && mkdir -p /data/index \
 && chown -R 10001:10001 /data
USER 10001:10001
WORKDIR /home/shopsearch

EXPOSE 8000

# /health needs no API key; the start period covers loading the models and the index
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1

ENTRYPOINT ["shopsearch"]
CMD ["serve", "--index", "/data/index", "--host", "0.0.0.0", "--port", "8000"]
