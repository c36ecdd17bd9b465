# Crucible's image: the Dagster code location, the run workers K8sRunLauncher starts, and the
# native engine's load pods. The k6 engine's image is separate (its recipe is in k6_driver/).
# Build: docker build -t crucible:0.1.0 .
FROM python:3.11-slim

# uv installs exactly what uv.lock pins; bytecode is compiled at build time because the
# filesystem is read-only for the runtime user.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app

# Dependencies first, in their own layer: they change far less often than the code.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# The package stays an editable install in /app, so the shipped plans/ and k6_driver/ are found
# beside it, where crucible_dagster looks for them.
COPY crucible_dagster/ crucible_dagster/
COPY k6_driver/ k6_driver/
COPY plans/ plans/
COPY workspace.yaml ./
RUN uv sync --frozen --no-dev

# A non-root user; it may write only its CRUCIBLE_HOME (scratch) and DAGSTER_HOME (where the
# Dagster chart mounts dagster.yaml).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/crucible crucible \
    && mkdir -p /var/lib/crucible /opt/dagster/dagster_home \
    && chown crucible:crucible /var/lib/crucible /opt/dagster/dagster_home

ENV PATH=/app/.venv/bin:$PATH \
    CRUCIBLE_HOME=/var/lib/crucible \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DAGSTER_DISABLE_TELEMETRY=true \
    K6_NO_USAGE_REPORT=true

USER 10001

EXPOSE 3030

# The Dagster chart replaces these arguments with its own `dagster code-server start ...` (code
# location) or `dagster api execute_run ...` (run worker); both find `dagster` on PATH.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "3030", "-m", "crucible_dagster.definitions"]
