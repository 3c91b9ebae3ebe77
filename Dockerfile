# vae-serve: the inference service, and (target `trainer`) the training CLI.
#
#   docker build -t vae-serve .                                     CPU PyTorch (default)
#   docker build --build-arg TORCH_INDEX=cu128 -t vae-serve:cuda .  a CUDA build of PyTorch
#   docker build --target trainer -t vae-serve-trainer .            `python -m training`
#   docker run --rm -p 8000:8000 vae-serve                          serves the baked models/mnist
#   docker run --rm -p 8000:8000 -v "$PWD/models/mine:/srv/models/mnist:ro" vae-serve
#                                   another artifact, mounted over the baked one (or anywhere,
#                                   with -e VAE_MODEL_DIR=<that path>)
#
# TORCH_INDEX names a wheel index of the PyTorch project (cpu, cu126, cu128, ...). A CUDA build
# brings its CUDA libraries as wheels, so the runtime stays on the slim base; the host needs only
# the NVIDIA driver and container toolkit.
ARG PYTHON_IMAGE=python:3.11-slim

# --- deps: one virtual environment with PyTorch and the service's dependencies -----------------
FROM ${PYTHON_IMAGE} AS deps
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# torch first and alone from its own index: pyproject's range then accepts it, so the next step
# installs nothing of PyTorch's from PyPI (where the default build is the multi-GB CUDA one).
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml ./
# The dependencies alone, read from pyproject, so that editing app/ reuses this layer.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

# --- trainer: `docker compose --profile train run --rm trainer` ---------------------------------
FROM deps AS trainer
ARG APP_UID=10001
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['optional-dependencies']['train']))" > requirements-train.txt \
    && pip install --no-cache-dir -r requirements-train.txt \
    && groupadd --system --gid "${APP_UID}" vae \
    && useradd --system --uid "${APP_UID}" --gid vae --home-dir /srv --no-create-home vae \
    && mkdir -p /srv/artifacts /srv/runs \
    && chown "${APP_UID}:${APP_UID}" /srv/artifacts /srv/runs
WORKDIR /srv
COPY app ./app
COPY training ./training
ENV PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER ${APP_UID}:${APP_UID}
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# --- runtime (default target): the service ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
LABEL org.opencontainers.image.title="vae-serve" \
      org.opencontainers.image.description="Variational autoencoder inference over HTTP with dynamic batching" \
      org.opencontainers.image.licenses="MIT"
# /srv/artifacts is owned by the service user so that an empty named volume mounted there takes
# that ownership, and a trainer running as the same user can write into it.
RUN groupadd --system --gid "${APP_UID}" vae \
    && useradd --system --uid "${APP_UID}" --gid vae --home-dir /srv --no-create-home vae \
    && mkdir -p /srv/artifacts \
    && chown "${APP_UID}:${APP_UID}" /srv/artifacts
COPY --from=deps /opt/venv /opt/venv
# /srv is laid out like the repository root, so the command below is the README's command.
WORKDIR /srv
COPY app ./app
COPY models/mnist ./models/mnist
# HOST, PORT, WORKERS, KEEP_ALIVE_S and MAX_CONNECTIONS are the Makefile's names (the last two:
# uvicorn's idle timeout and its cap on open connections, enforced with the app's own head, body
# and header limits by app.connections). VAE_DRAIN_TIMEOUT_S bounds both uvicorn's wait for open
# requests and the app's own drain of its batch queue; an orchestrator's grace period must exceed
# the sum of the two (see deploy/k8s/base/deployment.yaml). Whole seconds: uvicorn's
# --timeout-graceful-shutdown and --timeout-keep-alive take integers.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    WORKERS=1 \
    KEEP_ALIVE_S=5 \
    MAX_CONNECTIONS=1000 \
    VAE_MODEL_DIR=/srv/models/mnist \
    VAE_DRAIN_TIMEOUT_S=20
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
# No curl in the slim image: the interpreter does the request; any error or non-2xx fails it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
# `exec` makes uvicorn PID 1, so it receives SIGTERM itself and drains. The service writes its
# own JSON access log, hence --no-access-log.
CMD ["sh", "-c", "exec uvicorn app.main:app --host ${HOST} --port ${PORT} --workers ${WORKERS} --timeout-graceful-shutdown ${VAE_DRAIN_TIMEOUT_S} --no-access-log --http app.connections:Protocol --timeout-keep-alive ${KEEP_ALIVE_S} --limit-concurrency ${MAX_CONNECTIONS}"]
