#!/usr/bin/env bash
# Reproduces the committed tiny toy-sea prior (pipelines/priors/toy-sea-tiny/) end to end on a
# CPU: the data, the autoencoder, the latents, the latent diffusion model and its forecaster
# (the same network with a known-frame input), the export of their weights and the quality
# checks. Seeds are fixed in the configs (toy sea seed 0, loop.seed 0).
# Usage: bash pipelines/train_toy_sea_prior.sh [PRIOR_DIR]   (from the repository root, .venv set up)
set -euo pipefail
APPA=${APPA:-.venv/bin/appa}
PRIOR=${1:-pipelines/priors/toy-sea-tiny}
CONFIGS=pipelines/configs

# 2000-2003 of daily toy-sea states (32 x 64, 22 depth levels) after a year of spin-up:
# train 2000-2001, validate 2002, hold out 2003
[ -d data/toy_sea.zarr ] || "$APPA" toy-sea --years 4 --seed 0 --out data/toy_sea.zarr
"$APPA" train autoencoder --config "$CONFIGS/train_autoencoder_toy_sea.yaml"
"$APPA" encode --config "$CONFIGS/encode_toy_sea.yaml"
"$APPA" train diffusion --config "$CONFIGS/train_diffusion_toy_sea.yaml"
"$APPA" train diffusion --config "$CONFIGS/train_diffusion_toy_sea_forecast.yaml"

# weights only (no optimiser state; the autoencoder keeps its valid cells): the final trained
# weights of each, as the atmosphere's
"$APPA" export-checkpoint runs/autoencoder-toy-sea/checkpoints "$PRIOR/autoencoder" -g model
"$APPA" export-checkpoint runs/diffusion-toy-sea/checkpoints "$PRIOR/diffusion" -g model
"$APPA" export-checkpoint runs/forecaster-toy-sea/checkpoints "$PRIOR/forecast" -g model
"$APPA" prior-check --prior "$PRIOR" --truth data/toy_sea.zarr --period 2003-01-01 2003-12-31
