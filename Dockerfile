# Slim, non-root image running `realtime-server serve`.
# Configure with REALTIME_* environment variables (at least REALTIME_JWT_SECRET or
# REALTIME_JWT_PUBLIC_KEY); never bake secrets into the image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY realtime_server ./realtime_server
RUN pip install --no-cache-dir --prefix=/install '.[redis,postgres]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --create-home realtime \
    && mkdir -p /app/data && chown realtime /app/data
COPY --from=build /install /usr/local
WORKDIR /app
USER realtime
ENV REALTIME_HOST=0.0.0.0 \
    REALTIME_PORT=8000 \
    REALTIME_SQLITE_PATH=/app/data/realtime-events.db \
    REALTIME_EVENTS_SPILL_PATH=/app/data/realtime-events.spill.jsonl \
    PYTHONUNBUFFERED=1
# The embedded event log and the spill file (kept across container replacements).
VOLUME ["/app/data"]
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REALTIME_PORT', '8000'), timeout=2).status == 200 else 1)"]
ENTRYPOINT ["realtime-server"]
CMD ["serve"]
