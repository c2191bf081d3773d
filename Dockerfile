FROM python:3.11-slim
WORKDIR /srv/kiln
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY workers workers
COPY migrations migrations
# s3fs for KILN_STORAGE_URL=s3://… (pods and hosts share no filesystem). A GPU image installs
# onnxruntime-gpu in place of onnxruntime on a CUDA base image; see deploy/README.md.
RUN pip install --no-cache-dir -e '.[s3]' \
    && useradd --uid 10001 --create-home --home-dir /data kiln
USER 10001
ENV KILN_HOME=/data
EXPOSE 8000
CMD ["kiln", "api"]
