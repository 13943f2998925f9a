# The example deployment's image: the sagas library, the example workers and celeryconfig.py.
# docker compose builds it once (image sagas-example) and runs every process from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # celeryconfig.py and workers/ (the deployment) sit at the project root, outside the
    # installed package; saga retry/cancel publish with the example app.
    PYTHONPATH=/app \
    SAGAS_CELERY_APP=workers.app

WORKDIR /app

# Dependencies first (cached while only the code changes), then the code.
COPY pyproject.toml README.md LICENSE ./
COPY sagas ./sagas
COPY workers ./workers
COPY celeryconfig.py alembic.ini ./
RUN pip install '.[all]'

RUN useradd --system --create-home --uid 10001 --user-group sagas
USER sagas

CMD ["saga", "--help"]
