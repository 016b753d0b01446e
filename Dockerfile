# sci-monitor runtime image: `sci-monitor worker` / `sci-monitor replay ...` (see docker-compose.yml).
#   docker build -t sci-monitor:local .                      # CPU torch (default)
#   docker build -t sci-monitor:local-cuda --build-arg TORCH_INDEX=https://pypi.org/simple \
#                --build-arg SCI_DEVICE=cuda .                # CUDA torch (PyPI's Linux wheels bundle CUDA)
#   docker run --rm sci-monitor:local --help
FROM python:3.11-slim

# Keep in step with the torch pin in pyproject.toml (tests/test_compose.py checks it).
ARG TORCH_VERSION=2.13.0
# Where torch comes from: the CPU-only index by default; the compose `gpu` profile passes PyPI (CUDA wheels).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The worker's device: cpu, or cuda for the GPU image (no silent CPU fallback: cuda fails if no GPU is visible).
ARG SCI_DEVICE=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first (CPU-only from the PyTorch index unless TORCH_INDEX says otherwise): the project install below then
# finds the pin satisfied (2.13.0+cpu matches ==2.13.0) instead of pulling the CUDA wheels from PyPI.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md* ./
COPY models ./models
COPY controller ./controller
COPY streams ./streams
COPY sci_monitor ./sci_monitor
RUN pip install . \
    && sci-monitor --help > /dev/null

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/sci sci \
    && mkdir -p /var/lib/sci-monitor /data \
    && chown sci:sci /var/lib/sci-monitor

ENV SCI_STATE_DIR=/var/lib/sci-monitor \
    SCI_DATA_DIR=/data \
    SCI_DEVICE=${SCI_DEVICE}

USER sci
WORKDIR /home/sci
ENTRYPOINT ["sci-monitor"]
CMD ["--help"]
