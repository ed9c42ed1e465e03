# The synthgen API / worker image. vLLM model servers use their own image (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SYNTHGEN_DATA_ROOT=/data HF_HOME=/data/hf-cache
# chromium + Japanese fonts: the HTML-render generator; curl: health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium fonts-noto-cjk curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/synthgen
# The whole tree (.dockerignore leaves out tests, benchmarks and local data); setup.py maps
# its folders to packages.
COPY . ./
# The service talks to model servers over HTTP, so no torch here; Postgres driver for the store;
# Ray for `executor: ray` jobs and the compose profile's Ray nodes (same image, same Ray).
RUN pip install ".[postgres,ray]"

RUN useradd --create-home --uid 1000 synthgen && mkdir -p /data && chown synthgen /data
USER synthgen
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
  CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
# The API alone; workers run as their own containers (`synthgen worker`).
CMD ["synthgen", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
