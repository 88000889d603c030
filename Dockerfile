# The forwarder worker's image: `docker build -t inference-forwarder .` (docs/deploy.md).
# The builder installs exactly what uv.lock pins for the gevent and aws extras, hashes checked,
# into a virtual environment; the final stage is the same slim Python with that environment, a
# non-root user and no build tools. Pin the base by digest for repeatable builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:... .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# No cache mounts: they need BuildKit, and the image must build with any engine.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY scripts/uv-requirements.txt scripts/
RUN python -m pip install --root-user-action=ignore --no-deps --require-hashes \
      -r scripts/uv-requirements.txt
# The dependencies first, in a layer of their own: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN python -m venv --without-pip /opt/forwarder \
 && uv export --quiet --frozen --no-emit-project --extra gevent --extra aws \
      --format requirements-txt --output-file /tmp/pins.txt \
 && uv pip install --python /opt/forwarder/bin/python --require-hashes -r /tmp/pins.txt
COPY README.md ./
COPY src ./src
RUN uv pip install --python /opt/forwarder/bin/python --no-deps .

FROM ${PYTHON_IMAGE}
# A fixed numeric id, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN groupadd --system --gid 10001 forwarder \
 && useradd --system --uid 10001 --gid forwarder --create-home --home-dir /home/forwarder \
      --shell /usr/sbin/nologin forwarder
COPY --from=builder /opt/forwarder /opt/forwarder
ENV PATH=/opt/forwarder/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/forwarder
# Exec form: the worker is PID 1 and receives SIGTERM itself, so `docker stop` and a Pod's
# termination are a warm shutdown (tasks in flight finish and are stored, then exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["forwarder"]
CMD ["worker"]
