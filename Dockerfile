# rotmnist serve: the registry's champion over HTTP (see docs/serving.md).
# Build: docker build -t rotmnist-serve .   Run: see docs/serving.md, "Container" (mount the tracking store).
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

USER 10001
EXPOSE 8000
# The same command as `make serve`, listening on every interface of the container.
CMD ["rotmnist", "serve", "--host", "0.0.0.0"]
