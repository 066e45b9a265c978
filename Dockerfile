# One image, two entry points:
#   tessera operator   (the chart's Deployment runs this)
#   tessera sidecar    (next to a workload: verifies callers' tokens against the mounted trust bundle)
# Build: docker build -t <registry>/tessera:0.1.0 .
# BASE_IMAGE is any Debian-like image with python3.11 (`python`, venv); `make images` builds on a
# local Debian one, with no network inside the build (the locked wheels are mounted in instead).
ARG BASE_IMAGE=python:3.11-slim

# --- build: the locked dependencies (binary wheels, checked by hash) and the package, in a virtualenv ---
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tessera
WORKDIR /src
COPY requirements.lock ./
RUN /opt/tessera/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
# Bytecode is compiled here, because the root filesystem is read-only at run time. The build backend
# (setuptools) is the locked one installed above.
RUN /opt/tessera/bin/pip install --no-deps --no-build-isolation . \
 && /opt/tessera/bin/pip uninstall --yes pip setuptools wheel

# --- runtime: the virtualenv only; no compiler, no pip, no sources ---
FROM ${BASE_IMAGE}
ENV PATH=/opt/tessera/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN if python -m pip --version >/dev/null 2>&1; then python -m pip uninstall --yes pip setuptools wheel; fi \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid tessera --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tessera
COPY --from=build /opt/tessera /opt/tessera
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["tessera"]
CMD ["operator"]
