# One image for every Lookaside process: balancer, DNS responder, admin API,
# lab, and the routeguide demo.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lookaside ./lookaside
COPY balancer_server ./balancer_server
COPY client_lib ./client_lib
COPY admin_api ./admin_api
COPY protos ./protos
RUN pip install --no-cache-dir '.[server]'
ENTRYPOINT ["lookaside"]
