# The arena's image: the board, the scheduler and the GPU workers of docker-compose.yml all run it.
# Build: docker-compose build (or: docker build -t arena .). CPU-only torch for a smaller image:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t arena .
FROM python:3.11-slim

# bubblewrap confines plugin code (arena/sandbox.py); where the container may not create namespaces,
# the sandbox falls back and says so
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap git \
 && rm -rf /var/lib/apt/lists/*

ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://pypi.org/simple
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "$TORCH"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY arena arena
COPY leaderboard leaderboard
COPY plugins plugins
# the package carries the built-in plugins (as arena/builtin); torchattacks (the built-in autoattack's APGD, APGD-T and
# Square) goes in without its dependencies, whose torchvision would pull another torch build (see arena/contract/extras.py)
RUN pip install --no-cache-dir ".[postgres,distributed]" \
 && pip install --no-cache-dir --no-deps "torchattacks==3.5.1"

RUN useradd --create-home --uid 1000 arena && mkdir -p /var/lib/arena && chown arena /var/lib/arena
USER arena
ENV ARENA_HOME=/var/lib/arena PYTHONUNBUFFERED=1
CMD ["arena", "--help"]
