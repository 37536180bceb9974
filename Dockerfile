# emolive, CPU image. Installs exactly as scripts/install.sh does on a fresh Debian machine
# (system packages, then .venv with torch first, the package with [dev], mediapipe --no-deps):
# the image runs that script, so the two cannot drift apart.
#
#   docker build -t emolive .
#   docker run --rm --network host -v emolive-data:/data -e EMOLIVE_API_KEY="$(openssl rand -hex 24)" emolive
#
# The server listens on 0.0.0.0, so it needs an API key (EMOLIVE_API_KEY, or EMOLIVE_API_KEY_FILE
# naming a file such as a Docker secret, /run/secrets/...) and refuses to start without one.
# It runs as the unprivileged user "emolive", which owns /data.
#
# WebRTC media flows over UDP between the browser and the ICE candidates the server offers
# (the container's own addresses). --network host is the simple way to make them reachable;
# otherwise put a TURN server in EMOLIVE_ICE_SERVERS. The REST/WebSocket API needs only the
# published TCP port (-p 8000:8000).
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    EMOLIVE_DATA_DIR=/data \
    EMOLIVE_CACHE_DIR=/data/cache

WORKDIR /opt/emolive
COPY . .
RUN ./scripts/install.sh && rm -rf /var/lib/apt/lists/* /root/.cache
ENV PATH=/opt/emolive/.venv/bin:$PATH

# A new named volume copies the ownership of the image's /data.
RUN useradd --system --create-home --home-dir /home/emolive emolive \
    && mkdir -p /data && chown emolive:emolive /data
USER emolive
VOLUME /data
EXPOSE 8000
CMD ["emolive", "serve", "--host", "0.0.0.0"]
