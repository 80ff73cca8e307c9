# The project's image: TensorFlow 2 with CUDA, vgg_keras installed, the run_*.py entry points.
#
#   docker build -t vgg-keras .
#   docker run --rm --gpus all -v /data/imagenet:/data:ro -v "$PWD/runs:/app/runs" \
#     vgg-keras python run_train.py --data_dir /data --log_dir runs/vgg16
#
# The base is the official Python image; TensorFlow's "and-cuda" extra brings CUDA and cuDNN
# as pip packages (nvidia-*-cu12), so the host needs only the NVIDIA driver and the NVIDIA
# Container Toolkit (`--gpus all`). Without GPUs the same image trains on the CPU.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# TensorFlow first, in a layer of its own (several GB) that a change to the code keeps; the
# range is pyproject.toml's (tests/test_cluster_files.py checks that they agree).
RUN pip install --no-cache-dir "tensorflow[and-cuda]>=2.16,<2.22"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vgg_keras ./vgg_keras
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 1000 vgg \
    && mkdir runs data && chown vgg:vgg runs data
COPY run_train.py run_eval.py run_export.py run_predict.py ./

# A numeric user, so that Kubernetes can check runAsNonRoot. It writes only under /app/runs and
# /app/data (where `--preset demo` builds its dataset); mount volumes there to keep them.
USER 1000:1000
CMD ["python", "run_train.py", "--help"]
