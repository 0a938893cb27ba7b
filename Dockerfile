# One image for every Lookaside process: balancer, DNS responder, admin API,
# operator CLI and the routeguide demo. The server parts come with the
# `server` extra; the image has no dev extras.
#
#   docker build -t lookaside .
#   docker run --rm lookaside --help

# --- build: a wheel and the dependencies, in a throw-away stage ------------
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY lookaside_proto ./lookaside_proto
COPY lookaside_registry ./lookaside_registry
COPY server_common ./server_common
COPY balancer_server ./balancer_server
COPY admin_api ./admin_api
COPY dns_responder ./dns_responder
COPY client_lib ./client_lib
COPY lookaside ./lookaside
COPY protos ./protos
RUN python -m venv /opt/lookaside \
 && /opt/lookaside/bin/pip install --no-cache-dir ".[server]"

# --- runtime: the virtualenv only, run as an unprivileged user -------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="lookaside" \
      org.opencontainers.image.description="grpclb lookaside load balancer over Redis"
ENV PATH=/opt/lookaside/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 lookaside \
 && useradd --system --uid 10001 --gid lookaside --home-dir /nonexistent --shell /usr/sbin/nologin lookaside
COPY --from=build /opt/lookaside /opt/lookaside
COPY deploy/compose/pools.json /etc/lookaside/pools.json
COPY deploy/compose/registration-policy.json /etc/lookaside/registration-policy.json
# Where the certificates live (a volume in compose, a Secret in Kubernetes);
# owned by the runtime user, so a fresh volume is writable by `lookaside certs`.
RUN install -d -o 10001 -g 10001 -m 0700 /var/lib/lookaside/tls
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464 8053/udp 8053/tcp 8080 8081
# The balancer's grpc.health.v1 status, over TLS with the CA of the
# production profile (docs/security.md). Other services override the test
# (compose `healthcheck:`, Kubernetes probes) with the same subcommand.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["lookaside", "health-probe", "127.0.0.1:50051", "--tls-ca", "/var/lib/lookaside/tls/ca.pem"]
ENTRYPOINT ["lookaside"]
CMD ["--help"]
