# rotmnist serve: the registry's champion over HTTP (see docs/serving.md, "Container").
# Build: docker build -t rotmnist-serve .
# Run: the lines of docs/serving.md, "Container": the repository's store mounted at its own path, and a token in
# ROTMNIST_SERVE_TOKEN (without one, a server listening on every interface refuses to start).
FROM python:3.11-slim

# The CPU build of the pinned torch (the default wheels bring CUDA libraries the server does not use).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 rotmnist
WORKDIR /app

# The same install as `make setup` (the pinned dependencies of pyproject.toml), without the dev extra.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" .
# params.yaml (serve.* and monitor.model_name) and dvc.yaml (marks the workspace root).
COPY params.yaml dvc.yaml ./
# The request log's folder when the store root is /app (nothing mounted, a tracking server): the image's user
# writes serving/requests.db there. With the repository mounted, ROTMNIST_STORE_ROOT puts it in the repository.
RUN install -d -o rotmnist -g rotmnist /app/serving

USER 10001
EXPOSE 8000
# The same command as `make serve`, listening on every interface of the container: it needs ROTMNIST_SERVE_TOKEN
# (docker run -e ROTMNIST_SERVE_TOKEN passes the shell's), which POST /reload then asks for.
CMD ["rotmnist", "serve", "--host", "0.0.0.0"]
