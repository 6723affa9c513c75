#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment and installs Appa into it.
#
#   deploy/install.sh [VENV_DIR] [EXTRAS]      e.g. deploy/install.sh .venv dev
#
# torch: on a machine without an NVIDIA GPU the CPU build is installed (from a local wheel
# directory configured for pip when one holds it, else from the PyTorch CPU index); with a GPU,
# set APPA_TORCH_INDEX to the CUDA index of your driver or leave it empty to take PyPI's default
# (a CUDA build on Linux x86_64). APPA_TORCH_VERSION overrides the pinned version.
# APPA_TORCH_DEVICE=cpu|cuda chooses the build instead of looking for a GPU (container builds
# have none: deploy/docker/Dockerfile.gpu sets cuda); the default, auto, looks.
set -euo pipefail

venv=${1:-.venv}
extras=${2:-dev}
torch_version=${APPA_TORCH_VERSION:-2.13.0}
python=${PYTHON:-python3}
torch_device=${APPA_TORCH_DEVICE:-auto}
case "$torch_device" in
    auto)
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            torch_device=cuda
        else
            torch_device=cpu
        fi
        ;;
    cpu | cuda) ;;
    *)
        echo "install: APPA_TORCH_DEVICE=$torch_device: expected auto, cpu or cuda" >&2
        exit 2
        ;;
esac

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

have_torch=$("$venv/bin/python" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have_torch" != "$torch_version" ]; then
    if [ "$torch_device" = cuda ]; then
        echo "install: installing torch==$torch_version (CUDA build)"
        if [ -n "${APPA_TORCH_INDEX:-}" ]; then
            "${pip[@]}" install "torch==$torch_version" --index-url "$APPA_TORCH_INDEX"
        else
            "${pip[@]}" install "torch==$torch_version"
        fi
    else
        tmp=$(mktemp -d)
        # A CPU wheel in pip's configured local wheel directories avoids any download.
        if "${pip[@]}" download --no-deps --no-index -d "$tmp" "torch==$torch_version" >/dev/null 2>&1 \
            && ls "$tmp" | grep -q '+cpu'; then
            echo "install: installing the local CPU build of torch==$torch_version"
            "${pip[@]}" install "$tmp"/torch-*.whl
        else
            echo "install: installing torch==$torch_version from the PyTorch CPU index"
            "${pip[@]}" install "torch==$torch_version" \
                --index-url "${APPA_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
                --extra-index-url https://pypi.org/simple
        fi
        rm -rf "$tmp"
    fi
fi

"${pip[@]}" install -e ".[${extras}]"
if [[ ",${extras}," == *,dev,* ]]; then
    # sbibm ships the reference posteriors the NPE tests compare against; its own dependencies
    # (an older torch among them) are not needed to read those files.
    "${pip[@]}" install --no-deps sbibm
fi
"$venv/bin/python" -c "import torch, appa; print(f'install: appa {appa.__version__}, torch {torch.__version__}, cuda {torch.version.cuda}')"
