# One image for every Conveyor process; the command chooses which one runs:
#
#   docker build -t conveyor .
#   docker run conveyor worker conveyor.demo:app --concurrency 20
#   docker run -p 8000:8000 -e CONVEYOR_API_ADMIN_TOKEN=... conveyor api conveyor.demo:app --host 0.0.0.0
#   docker run conveyor scheduler conveyor.demo:app
#
# For your own project, build FROM this image and COPY your code into /srv/app (it is on
# PYTHONPATH), then name your app: `worker myproject.jobs:app`.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/srv/app

WORKDIR /srv/conveyor
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install . \
    && useradd --create-home --uid 10001 conveyor \
    && mkdir -p /srv/app /srv/data \
    && chown conveyor /srv/app /srv/data

USER conveyor
WORKDIR /srv/data
# 8000: `conveyor api`; 3100: a worker's /health/* and /metrics (--health-port).
EXPOSE 8000 3100
# SIGTERM (docker stop, Kubernetes) starts the graceful shutdown; give the container
# longer than --shutdown-timeout to finish (compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["conveyor"]
CMD ["--help"]
