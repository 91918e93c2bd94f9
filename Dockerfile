# fused-rnn benchmark image: the project and its benchmark suite on the official PyTorch image
# (CUDA 12.8, cuDNN 9, torch 2.9.0 with its Triton, nvcc for the CuPy kernels' NVRTC headers).
#   docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t fused-rnn-bench .
#   docker run --rm --gpus all -v "$PWD/profiling/results:/results" fused-rnn-bench
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-devel

ARG GIT_COMMIT=unknown
# No .git in the image: the records read the commit from here.
ENV FUSED_RNN_COMMIT=${GIT_COMMIT} \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/fused-rnn
COPY . .
# The image's torch (and the Triton it ships with) satisfy the torch/triton requirements; the
# extras add CuPy for CUDA 12 and matplotlib/tqdm for the benchmark.
RUN python -m pip install -e ".[cuda12,bench]" \
    && python -c "import torch, triton, cupy; print('torch', torch.__version__, 'triton', triton.__version__, 'cupy', cupy.__version__)"

VOLUME ["/results"]
CMD ["python", "-m", "profiling", "--out", "/results"]
