# tap server image. Two stages: `build` turns the source into a virtualenv holding tap and its
# dependencies (wheels only, so no compiler is needed even there); `runtime` copies that
# virtualenv onto a clean slim image and runs it as an unprivileged user. Nothing from the build
# stage but /opt/venv reaches the final image: no pip cache, no sources, no build tools.
#
#   docker build -t tap:latest .
#   docker run --rm -p 8080:8080 -v tap-data:/var/lib/tap tap:latest
#
# Configuration: TAP__SECTION__KEY environment variables and/or `--config FILE` (see
# configs/prod.example.toml and deploy/compose.yaml); the admin token only as TAP_ADMIN_TOKEN.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first (a layer that survives source edits), then the package itself.
COPY pyproject.toml README.md ./
COPY tap ./tap
COPY actors ./actors
COPY loadgen ./loadgen
# tap/edge/openapi.json links docs/openapi.json, which the package ships.
COPY docs/openapi.json ./docs/openapi.json
RUN /opt/venv/bin/pip install --only-binary=:all: --upgrade "pip>=24" \
    && /opt/venv/bin/pip install --prefer-binary . \
    && /opt/venv/bin/tap --version

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TAP__SERVER__HOST='"0.0.0.0"' \
    TAP__SERVER__PORT=8080 \
    TAP__SERVER__DB_PATH='"/var/lib/tap/tap.db"'
# A fixed uid/gid so that volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 tap \
    && useradd --system --uid 10001 --gid tap --home-dir /var/lib/tap --shell /usr/sbin/nologin tap \
    && install -d -o tap -g tap -m 0750 /var/lib/tap
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/tap
USER 10001:10001
VOLUME ["/var/lib/tap"]
EXPOSE 8080
# /livez touches no dependency: it says the event loop runs, which is what a restart can fix.
# Readiness (/readyz) is for the load balancer, not for restarting the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8080/livez', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tap"]
CMD ["serve"]
