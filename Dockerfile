# shadowproxy in a container.
#
#   docker build -t shadowproxy .
#   docker run --rm -p 8080:8080 \
#       -v "$PWD/config/minimal.yaml:/etc/shadowproxy/config.yaml:ro" shadowproxy
#
# The config is mounted, not built in; config/minimal.yaml and config/example.yaml are starting
# points. The discrepancy log goes to standard output unless log.path names a file: point it
# into /var/lib/shadowproxy and mount a volume there to keep it.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    SHADOWPROXY_CONFIG=/etc/shadowproxy/config.yaml

# tini as PID 1: it passes signals on and reaps orphans. A worker that dies leaves its
# comparison helpers (forkserver, resource tracker) to PID 1, which Python does not reap.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# The package with the `speed` extra (uvloop). The sources are only needed to build it.
COPY pyproject.toml README.md /tmp/shadowproxy/
COPY shadowproxy /tmp/shadowproxy/shadowproxy
RUN pip install --no-cache-dir "/tmp/shadowproxy[speed]" \
    && rm -rf /tmp/shadowproxy

# An unprivileged user, owning only the directory a log file may be written to.
RUN useradd --system --user-group --uid 10001 --no-create-home \
        --home-dir /var/lib/shadowproxy --shell /usr/sbin/nologin shadowproxy \
    && mkdir -p /etc/shadowproxy /var/lib/shadowproxy \
    && chown shadowproxy:shadowproxy /var/lib/shadowproxy
USER shadowproxy
WORKDIR /var/lib/shadowproxy

# The proxy listener and the admin listener of the default config. The admin listener binds
# loopback unless the config says otherwise (admin: 0.0.0.0:9901 to scrape /metrics from
# outside the container).
EXPOSE 8080 9901

# GET /healthz on the admin listener from inside the container (slim images have no curl),
# at the address the config ($SHADOWPROXY_CONFIG) names, read by the proxy's own parser.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["shadowproxy", "healthcheck"]

# tini passes the SIGTERM of `docker stop` (and SIGHUP) on to the proxy, which drains
# requests under way, flushes the log and exits. Give it time: shutdown_timeout (15 s by
# default) plus mirror.shutdown_grace, e.g. `docker stop -t 20`.
ENTRYPOINT ["/usr/bin/tini", "--"]
# The config is $SHADOWPROXY_CONFIG, as for the health check: `-e SHADOWPROXY_CONFIG=...`
# moves both.
CMD ["shadowproxy", "run"]
