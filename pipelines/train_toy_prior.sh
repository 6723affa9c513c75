#!/usr/bin/env bash
# Reproduces the committed tiny toy-Earth prior (pipelines/priors/toy-earth-tiny/) end to end on
# a CPU: the data, the autoencoder, the latents, the latent diffusion model, the export of their
# weights and the quality checks. Seeds are fixed in the configs (toy Earth seed 0, loop.seed 0).
# Usage: bash pipelines/train_toy_prior.sh [PRIOR_DIR]   (from the repository root, .venv set up)
set -euo pipefail
APPA=${APPA:-.venv/bin/appa}
PRIOR=${1:-pipelines/priors/toy-earth-tiny}
CONFIGS=pipelines/configs

# 2000-2003 of 6-hourly toy-Earth states (64 x 32): train 2000-2001, validate 2002, hold out 2003
[ -d data/toy_earth.zarr ] || "$APPA" toy-earth --years 4 --seed 0 --out data/toy_earth.zarr
"$APPA" train autoencoder --config "$CONFIGS/train_autoencoder_toy_earth.yaml"
"$APPA" encode --config "$CONFIGS/encode_toy_earth.yaml"
"$APPA" train diffusion --config "$CONFIGS/train_diffusion_toy_earth.yaml"

# weights only (no optimiser state): the final trained weights of both. The denoiser's final
# weights (after the cosine decay to 5 % of the peak rate) denoise the validation year as well
# as its EMA and their samples keep more of the data's spread (docs/training.md)
"$APPA" export-checkpoint runs/autoencoder-toy-earth/checkpoints "$PRIOR/autoencoder" -g model
"$APPA" export-checkpoint runs/diffusion-toy-earth/checkpoints "$PRIOR/diffusion" -g model
"$APPA" prior-check --prior "$PRIOR" --truth data/toy_earth.zarr --period 2003-01-01 2003-12-31
