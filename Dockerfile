# clipindex: CLIP on ONNX Runtime, for the docker-compose deployment (docker-compose.yml).
#
# The default image is the runtime only: ingest, search, status, migrate. No torch, no transformers: the model is
# converted once (the `convert` profile builds this file with EXTRAS=convert, or run `clipindex convert` anywhere)
# and mounted read-only at /models.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# EXTRAS=convert adds torch (CPU wheels), transformers and onnx for `clipindex convert`; empty for the runtime.
ARG EXTRAS=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY indexer ./indexer
COPY convert ./convert
COPY docker/entrypoint.sh /usr/local/bin/clipindex-entrypoint
RUN if [ -n "${EXTRAS}" ]; then export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"; fi \
    && pip install ".${EXTRAS:+[${EXTRAS}]}" \
    && rm -rf /src \
    && chmod 0755 /usr/local/bin/clipindex-entrypoint \
    && useradd --create-home --uid 10001 --user-group clipindex \
    && mkdir -p /models /state \
    && chown clipindex:clipindex /models /state

USER clipindex
WORKDIR /home/clipindex
ENV CLIPINDEX_MODEL_DIR=/models/clip-vit-base-patch32 \
    CLIPINDEX_STATE_DIR=/state \
    CLIPINDEX_DATA_DIR=/state/data

ENTRYPOINT ["/usr/local/bin/clipindex-entrypoint"]
CMD ["schedule", "/images"]
