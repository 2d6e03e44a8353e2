# syntax=docker/dockerfile:1
# The one GenSAR Stream image: stream workers, Ray head/worker nodes, learner driver, topic Job.
# It installs exactly like `make install`: a virtualenv, the pinned requirements.lock through uv,
# then the package itself without dependencies. Every version is pinned; the chart refuses `latest`.
#
#   docker build -t registry.example.com/ml/gensar-stream:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Same uv as the development virtualenv (Makefile: uv>=0.9,<1).
ARG UV_VERSION=0.13.9
ENV VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/python" -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first: this layer is reused until requirements.lock changes.
COPY requirements.lock ./
RUN "$VIRTUAL_ENV/bin/uv" pip install --no-cache --python "$VIRTUAL_ENV/bin/python" -r requirements.lock
COPY . .
RUN "$VIRTUAL_ENV/bin/uv" pip install --no-cache --python "$VIRTUAL_ENV/bin/python" --no-deps . \
 && "$VIRTUAL_ENV/bin/gensar" --help > /dev/null

FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GENSAR_STATE_DIR=/var/lib/gensar \
    GENSAR_CACHE_DIR=/var/cache/gensar
# A fixed non-root user (the chart's runAsUser). State and cache are volumes in Kubernetes; the
# directories exist here so the image also runs under plain `docker run`.
RUN groupadd --system --gid 10001 gensar \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/gensar --create-home --shell /bin/bash gensar \
 && install -d -o gensar -g gensar /var/lib/gensar /var/cache/gensar /artifacts \
 # KubeRay starts Ray through `bash -lc`, and Debian's /etc/profile resets PATH for login shells.
 && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/gensar-venv.sh
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/gensar
ENTRYPOINT ["gensar"]
CMD ["--help"]
