FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config config
COPY core core
COPY accounts accounts
COPY annotate annotate
COPY training training
COPY rounds rounds
COPY templates templates
COPY static static
COPY manage.py ./
RUN pip install '.[train]' && DEBUG=1 python manage.py collectstatic --noinput
# Run alone (`docker run`), the image migrates and serves; docker-compose.yml runs the
# migrations as their own `migrate` service instead and starts web and the workers after it.
CMD ["sh", "-c", "python manage.py migrate --noinput && gunicorn config.wsgi --bind 0.0.0.0:8000"]
