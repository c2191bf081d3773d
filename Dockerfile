FROM python:3.11-slim
WORKDIR /srv/kiln
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY workers workers
COPY migrations migrations
RUN pip install --no-cache-dir -e .
ENV KILN_HOME=/data
EXPOSE 8000
CMD ["kiln", "api"]
