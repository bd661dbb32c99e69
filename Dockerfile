# The pop3gw container image.
#
#   docker build -t pop3gw .        (or: podman build --format docker -t pop3gw .)
#   docker run --read-only --tmpfs /tmp --cap-drop ALL -p 8080:8080 \
#       -e POP3GW_DEFAULT_UPSTREAM=pop3s://pop.example.com:995 pop3gw
#
# The base image is a build argument so that CI can build on a locally made base (see
# deploy/check.sh); it needs a Python 3.11 with the venv module. Dependencies are pinned
# with hashes in requirements/runtime.lock (regenerate with scripts/lock.sh).
ARG BASE_IMAGE=python:3.11-slim

# -- build stage: pinned build tools, the project's wheel, a virtualenv to ship ------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

# Dependencies first: this layer is rebuilt only when a lock file changes. The build tools
# (pip, setuptools, wheel) live in /opt/build; /opt/venv, the one that is shipped, gets no
# pip at all.
COPY requirements/build.lock requirements/runtime.lock /src/requirements/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/python -m pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r requirements/build.lock \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python install --no-cache-dir \
        --require-hashes --only-binary=:all: --no-deps -r requirements/runtime.lock

# Then the project, as a wheel built from the repository's sources; `pip check` proves the
# lock satisfies everything the wheel declares.
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
RUN /opt/build/bin/python -m pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /tmp/wheels /src \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python install --no-cache-dir \
        --no-deps --no-index /tmp/wheels/pop3gw-*.whl \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python check \
    && /opt/venv/bin/pop3gw --version

# -- final stage: the interpreter, the virtualenv and nothing to build with ----------------
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="pop3gw" \
      org.opencontainers.image.description="POP3 mailboxes over HTTP/JSON" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid (Kubernetes' runAsNonRoot can check a number). The base's
# own pip, setuptools and wheel, where it has them, are removed: nothing is built or
# installed at run time.
RUN groupadd --system --gid 10001 pop3gw \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pop3gw \
    && rm -rf /usr/local/bin/pip* /usr/local/bin/wheel /usr/local/lib/python3*/site-packages/pip \
        /usr/local/lib/python3*/site-packages/pip-* \
        /usr/local/lib/python3*/site-packages/setuptools \
        /usr/local/lib/python3*/site-packages/setuptools-* \
        /usr/local/lib/python3*/site-packages/wheel \
        /usr/local/lib/python3*/site-packages/wheel-*

COPY --from=builder /opt/venv /opt/venv

# Read-only root filesystem: nothing is written but to /tmp (mount a tmpfs or an emptyDir
# there); bytecode was compiled at install time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp \
    POP3GW_LISTEN=0.0.0.0:8080

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# No curl in the image: the interpreter asks /healthz on the port POP3GW_LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('POP3GW_LISTEN', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# SIGTERM: /readyz turns 503 for POP3GW_SHUTDOWN_DELAY_SECONDS, then requests in flight
# get POP3GW_SHUTDOWN_GRACE_SECONDS; exit status 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/venv/bin/pop3gw", "serve"]
