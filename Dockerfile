# One image, two entry points:
#   tessera operator   (the chart's Deployment runs this)
#   tessera sidecar    (next to a workload: verifies callers' tokens against the mounted trust bundle)
# Build: docker build -t <registry>/tessera:0.1.0 .

# --- build: the package and its dependencies (all binary wheels) into a virtualenv ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tessera
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# Bytecode is compiled here, because the root filesystem is read-only at run time.
RUN /opt/tessera/bin/pip install . \
 && /opt/tessera/bin/pip uninstall --yes pip setuptools wheel

# --- runtime: the virtualenv only; no compiler, no pip, no sources ---
FROM python:3.11-slim
ENV PATH=/opt/tessera/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid tessera --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tessera
COPY --from=build /opt/tessera /opt/tessera
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["tessera"]
CMD ["operator"]
