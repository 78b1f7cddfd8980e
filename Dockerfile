# syntax=docker/dockerfile:1
# The server image. Node builds the web client in its own stage; the runtime stage installs the
# Python package with the built client inside it (package data) and holds no Node and no sources.
# tests/test_deployment_files.py checks this file against the Makefile and the settings.

FROM node:20-slim AS web
WORKDIR /src
COPY web/ web/
# The Makefile's `web` recipe, unchanged; vite writes the bundle to ../collab_server/web_dist.
# hadolint ignore=DL3003
RUN cd web && npm ci --no-audit --no-fund && npm run build

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# /app is the non-root user's home and working directory: the default SQLite database
# (sqlite:///collab.sqlite3) and an optional .env file live there.
RUN useradd --system --create-home --home-dir /app --uid 10001 collab
WORKDIR /tmp/collab-server
COPY pyproject.toml README.md ./
COPY crdt_store/ crdt_store/
COPY collab_server/ collab_server/
COPY --from=web /src/collab_server/web_dist/ collab_server/web_dist/
# The project itself with its Redis extra (COLLAB_REDIS_URL); hadolint takes the extra for an
# unpinned package from PyPI.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[redis]' && rm -rf /tmp/collab-server

WORKDIR /app
USER 10001
ENV COLLAB_HOST=0.0.0.0
EXPOSE 8000
# Liveness only (/healthz never touches the database); python because slim has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["collab-server"]
CMD ["serve"]
