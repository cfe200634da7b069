# syntax=docker/dockerfile:1
#
# GPU image of the Qwen-Omni transcription service (every variant except `cpu`, see docker/Dockerfile.cpu).
#
#   docker build -t qwen-omni-asr:gpu .
#   docker run --gpus all --init -p 127.0.0.1:5000:5000 -v qwen-asr-data:/data qwen-omni-asr:gpu
#   docker compose --profile awq up -d          # see docker-compose.yml and .env.example
#
# Configuration is the service's ASR_* environment variables; arguments are passed to the CLI
# (serve/qwen2_5_omni_awq.py). No model weights are in the image: they are downloaded into the Hugging
# Face cache under /data on first use, or pre-downloaded there (see .env.example).
#
# Why python:3.11-slim and not an nvidia/cuda base:
#  * torch 2.14.1 from PyPI is the CUDA 13.0 build (+cu130). It brings the whole CUDA user space it needs
#    (cudart, cuBLAS, cuDNN, NCCL, ...) as nvidia-* wheels and loads them through its RPATH, so a CUDA
#    runtime base would only add a second, unused copy. The NVIDIA Container Toolkit injects the driver;
#    CUDA 13.0 needs driver >= 580, and NVIDIA_REQUIRE_CUDA below makes an older one fail at start.
#  * The project pins and tests Python 3.11. nvidia/cuda:*-ubuntu24.04 ships 3.12, where gptqmodel 7.7.0
#    requires numpy>=2.5.4, which conflicts with the numpy==2.4.6 pin.
#  * The CUDA compiler is installed as wheels of the CUDA release torch pins (cuda-toolkit==13.0.3), so nvcc
#    always matches torch.version.cuda; a devel base would have to be kept in step by hand.
#
# Build arguments:
#   CUDA_KERNELS=1        nvcc (wheels) in the venv and gcc/g++ in the image. gptqmodel (in requirements.txt;
#                         transformers loads AWQ checkpoints through it) compiles its CUDA kernels just in
#                         time: on the first AWQ load on a GPU it picks its fastest kernel for the card
#                         (Marlin on sm80+) and builds it; without nvcc that build fails. The compiled kernels
#                         are cached under /data/cache and reused after restarts. 0 gives a smaller image
#                         for the unquantized and compressed-tensors variants only.
#   FLASH_ATTN=0          1 compiles flash-attn from source in the builder stage (PyPI has no wheels for it);
#                         enable it at run time with ASR_FLASH_ATTN2=1. Compiling takes long and needs about
#                         9 GB of RAM per job: tune MAX_JOBS and FLASH_ATTN_CUDA_ARCHS (80 = A100, 86/89 =
#                         RTX 30/40, 90 = H100/H200, 100/120 = Blackwell).

############################################################################################################
# builder: the virtual environment, built where compilers and headers are at hand.
FROM python:3.11-slim-bookworm AS builder

ARG CUDA_KERNELS=1
ARG FLASH_ATTN=0
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG FLASH_ATTN_CUDA_ARCHS="80;90"
ARG MAX_JOBS=4
# The cuda-toolkit release that torch 2.14.1 pins: nvcc 13.0, the same CUDA version as torch.
ARG CUDA_TOOLKIT_VERSION=13.0.3

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    CUDA_HOME=/opt/venv/lib/python3.11/site-packages/nvidia/cu13
ENV PATH=/opt/venv/bin:$CUDA_HOME/bin:$PATH

# Compilers, and the PCRE2 headers PyPcre (an sdist that gptqmodel depends on) builds against.
# Debian package versions are not pinned: the archive drops superseded ones with each security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libpcre2-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY requirements.txt ./
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir -r requirements.txt

# gptqmodel writes the Marlin kernel sources into its own package on first use; write them now, because
# site-packages is read-only at run time.
RUN python "$VIRTUAL_ENV/lib/python3.11/site-packages/gptqmodel_ext/marlin/generate_kernels.py" \
    && python "$VIRTUAL_ENV/lib/python3.11/site-packages/gptqmodel_ext/marlin/generate_kernels.py" --check

# Every later install is constrained by requirements.txt, so no pinned package moves.
# nvcc and the CUDA headers, laid out as a CUDA_HOME under site-packages/nvidia/cu13. torch's extension
# builder links with -lcudart, and the runtime wheel ships only libcudart.so.13: add the linker name.
RUN if [ "$CUDA_KERNELS" = 1 ] || [ "$FLASH_ATTN" = 1 ]; then \
        pip install --no-cache-dir -c requirements.txt "cuda-toolkit[nvcc,cccl]==${CUDA_TOOLKIT_VERSION}" \
        && ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so" \
        && nvcc --version; \
    fi

# FLASH_ATTENTION_FORCE_BUILD stops flash-attn's setup.py from fetching a prebuilt wheel from GitHub.
RUN if [ "$FLASH_ATTN" = 1 ]; then \
        pip install --no-cache-dir -c requirements.txt ninja==1.13.2 wheel==0.48.0 einops==0.8.2 \
        && FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS="$FLASH_ATTN_CUDA_ARCHS" MAX_JOBS="$MAX_JOBS" \
            pip install --no-cache-dir --no-build-isolation -c requirements.txt "flash-attn==${FLASH_ATTN_VERSION}"; \
    fi

############################################################################################################
# runtime
FROM python:3.11-slim-bookworm

ARG CUDA_KERNELS=1

LABEL org.opencontainers.image.title="qwen-omni-asr" \
      org.opencontainers.image.description="Speech transcription HTTP service on Qwen-Omni (GPU)"

# ffmpeg decodes uploads, curl runs the health check, libpcre2-8-0 is PyPcre's library. gcc/g++ are the host
# compilers of gptqmodel's just-in-time kernel builds (nvcc drives them) and of Triton's launcher stubs.
# Debian package versions are not pinned: the archive drops superseded ones with each security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg curl libpcre2-8-0 \
    && if [ "$CUDA_KERNELS" = 1 ]; then apt-get install -y --no-install-recommends gcc g++; fi \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 1000 asr \
    && useradd --uid 1000 --gid asr --home-dir /home/asr --create-home --shell /usr/sbin/nologin asr

COPY --from=builder /opt/venv /opt/venv

# The code is root-owned, so the service cannot change it; bytecode is compiled now for the same reason.
WORKDIR /app
COPY app/ ./app/
COPY serve/ ./serve/
COPY --chmod=0755 docker/entrypoint.sh ./docker/entrypoint.sh
RUN /opt/venv/bin/python -m compileall -q app serve \
    && mkdir -p /data/hf_cache \
    && chown -R asr:asr /data

# /data is the only place the service writes (a read-only root filesystem works): ASR_DATA_DIR (jobs,
# uploads, outputs), the Hugging Face cache, and the caches of compiled kernels, which are also loaded from
# there (/tmp may be a noexec tmpfs). gunicorn's heartbeat file goes to /dev/shm, and its control socket
# (it would live under $HOME) is off.
ENV VIRTUAL_ENV=/opt/venv \
    CUDA_HOME=/opt/venv/lib/python3.11/site-packages/nvidia/cu13
ENV PATH=/opt/venv/bin:$CUDA_HOME/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/data/hf_cache \
    ASR_DATA_DIR=/data \
    ASR_HOST=0.0.0.0 \
    ASR_PORT=5000 \
    XDG_CACHE_HOME=/data/cache \
    TORCH_EXTENSIONS_DIR=/data/cache/torch_extensions \
    GPTQMODEL_TORCH_EXTENSIONS_DIR=/data/cache/gptqmodel/torch_extensions \
    TRITON_CACHE_DIR=/data/cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/data/cache/torchinductor \
    CUDA_CACHE_PATH=/data/cache/nv \
    GUNICORN_CMD_ARGS="--worker-tmp-dir /dev/shm --no-control-socket" \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

VOLUME ["/data"]
USER 1000:1000
EXPOSE 5000

# /health never waits on the model (it is loaded on first use), so a short start period is enough.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS --noproxy '*' -o /dev/null http://127.0.0.1:${ASR_PORT:-5000}/health || exit 1"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
