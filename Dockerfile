# Slim, non-root image running `realtime-server serve`, installed from the same
# hash-pinned lock as `make` (requirements/main.txt).
# Configure it with REALTIME_* environment variables (at least REALTIME_JWT_SECRET or
# REALTIME_JWT_PUBLIC_KEY); never bake secrets into the image.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/realtime
WORKDIR /src
# 1. The dependencies, from the lock only: this layer is rebuilt when the lock changes,
#    not when the source does.
COPY requirements/main.txt requirements/main.txt
RUN /opt/realtime/bin/pip install --require-hashes --no-deps -r requirements/main.txt
# 2. The project itself, without dependencies (all installed above) and without build
#    isolation (its build backend, setuptools, is pinned in the lock too).
COPY pyproject.toml README.md ./
COPY realtime_server ./realtime_server
RUN /opt/realtime/bin/pip install --no-deps --no-build-isolation . \
    && /opt/realtime/bin/realtime-server --version

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --create-home realtime \
    && mkdir -p /app/data && chown realtime /app/data
COPY --from=build /opt/realtime /opt/realtime
WORKDIR /app
USER realtime
# Both ports listen on every interface of the container, so that `-p 8000:8000` and
# `-p 8001:8001` reach them. The HTTP server API (8001) is on only when REALTIME_API_KEY
# is set; publish it to a private network or to 127.0.0.1 of the host, never publicly.
ENV PATH=/opt/realtime/bin:$PATH \
    REALTIME_HOST=0.0.0.0 \
    REALTIME_PORT=8000 \
    REALTIME_API_HOST=0.0.0.0 \
    REALTIME_API_PORT=8001 \
    REALTIME_SQLITE_PATH=/app/data/realtime-events.db \
    REALTIME_EVENTS_SPILL_PATH=/app/data/realtime-events.spill.jsonl \
    REALTIME_REVOCATIONS_PATH=/app/data/realtime-revocations.jsonl \
    PYTHONUNBUFFERED=1
# The embedded event log and the spill file (kept across container replacements).
VOLUME ["/app/data"]
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REALTIME_PORT', '8000'), timeout=2).status == 200 else 1)"]
ENTRYPOINT ["realtime-server"]
CMD ["serve"]
