# Triton Inference Server with the Python-based PyTorch backend ("pytorch_python"): the one
# production image (deploy/ runs it on Kubernetes and KServe).
#
#   docker build -t tritonserver-pytorch-python .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v "$PWD/my_model_repository:/models" tritonserver-pytorch-python
#
# Build arguments: TRITON_VERSION (the NGC tritonserver release), TORCH_VERSION and
# TORCH_INDEX_URL (the torch build, matching that release's CUDA). The defaults (Python 3.12 in
# 25.10, torch 2.9.0) are a cell of the tested matrix; only the torch releases listed in the
# README's "Compatibility" are tested (2.9.0, 2.13.0, 2.15.0), and torch < 2.9 is refused.
#
# --shm-size: the Python backend moves every request and response tensor through a region in
# /dev/shm per model instance (starting at its shm-default-byte-size, growing by
# shm-growth-byte-size, both --backend-config=python,... options); batches of large tensors and
# several instances outgrow Docker's default 64 MiB, so give it 1g or more (on Kubernetes: an
# emptyDir with medium: Memory at /dev/shm, as deploy/base does).
#
# Models then say `backend: "pytorch_python"` in config.pbtxt (otherwise written as for Triton's
# C++ PyTorch backend). The example repository needs its artifacts built first
# (`pytorch-backend examples model_repository_examples`, with the same torch version).

# Triton release; 25.10 is based on CUDA 13.0 (Ubuntu 24.04, Python 3.12).
ARG TRITON_VERSION=25.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

# torch is pinned here, not in the package metadata. The default (2.9.0, the CI cell "Python 3.12,
# torch 2.9.0") is the PyTorch-index CUDA build
# matching the image's CUDA 13.0 (cu130 wheels exist from torch 2.9). For another Triton release,
# look up its CUDA version in the release notes and pick the matching index (cu126, cu128, ...),
# or https://download.pytorch.org/whl/cpu for CPU-only serving. Build the .pt/.pt2 artifacts you
# serve with the same torch version.
ARG TORCH_VERSION=2.9.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

# The image's system Python is "externally managed" (PEP 668); this container is its only user.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1

RUN python3 -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# This package (pulls numpy; torch is already satisfied). numpy<2 keeps the Python backend
# stub's NumPy ABI on the safe side.
WORKDIR /opt/pytorch_backend
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m pip install "numpy<2" . && rm -rf /opt/pytorch_backend

# Install the backend: Triton runs <backends>/pytorch_python/model.py through the Python
# backend for every model with `backend: "pytorch_python"`.
COPY src/pytorch_backend/model.py /opt/tritonserver/backends/pytorch_python/model.py
# To serve repositories written for the C++ backend unchanged (platform: "pytorch_libtorch",
# backend: "pytorch") with this plugin instead of the C++ backend, uncomment this line:
# RUN rm -rf /opt/tritonserver/backends/pytorch && cp -r /opt/tritonserver/backends/pytorch_python /opt/tritonserver/backends/pytorch

# HTTP, gRPC and metrics (the ports `pytorch-backend serve` and deploy/ use).
EXPOSE 8000 8001 8002
WORKDIR /opt/tritonserver
CMD ["tritonserver", "--model-repository=/models"]
