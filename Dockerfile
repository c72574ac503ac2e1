# The Voltgrid image: one image, every component, entrypoint `voltgrid`
# (`voltgrid operator | gateway | webhook | janitor | gpu-slicer`). The chart's default image.
#
#   docker build -t voltgrid/voltgrid:0.1.0 .
#
# Multi-stage: the build stage makes the wheel and a virtual environment with every dependency; the
# runtime stage is the same slim Python with only that environment copied in, running as an unprivileged
# user (uid 65532, as the chart's securityContext expects) on a read-only root filesystem.
# The base is pinned by version tag (CPython patch release and Debian release); bump both stages together.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY webhooks ./webhooks
COPY gpu_slicer ./gpu_slicer
RUN python -m venv /opt/voltgrid \
 && /opt/voltgrid/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/voltgrid/bin/pip install /tmp/wheels/voltgrid-*.whl \
 && /opt/voltgrid/bin/pip uninstall -y pip \
 && /opt/voltgrid/bin/python -m compileall -q /opt/voltgrid/lib \
 && /opt/voltgrid/bin/voltgrid --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="voltgrid" \
      org.opencontainers.image.description="Session-native serverless runtime for AI agents, MCP servers and sandboxes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/voltgrid /opt/voltgrid
ENV PATH=/opt/voltgrid/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
ENTRYPOINT ["voltgrid"]
CMD ["--help"]
