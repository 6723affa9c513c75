#!/usr/bin/env bash
# The reliability catalogue's cases, run as a user would, on the demo's data.
#
#   make demo                                   # data/toy_earth.zarr, outputs/demo/observations
#   bash benchmarks/reliability_cases.sh OUT    # OUT: an empty work folder
#
# Prints one line per case (exit code, seconds, what the user sees) and scores the archives
# that were written (2 m temperature and 500 hPa geopotential RMSE of the ensemble mean against
# the truth, `appa evaluate`). Each case's full output is in OUT/logs. Run it with another
# checkout's `appa` (APPA=/path/to/appa) to compare versions.
set -uo pipefail
OUT=${1:?usage: reliability_cases.sh OUT}
APPA=${APPA:-appa}
PY=${PY:-python}
TRUTH=${TRUTH:-data/toy_earth.zarr}
OBS=${OBS:-outputs/demo/observations}
mkdir -p "$OUT/logs"
[ -d "$OBS" ] || { echo "no $OBS: run 'make demo' first" >&2; exit 2; }

# the base job: 2 members, 2 days, the demo's network and sampling
cat > "$OUT/base.yaml" <<YAML
task: reanalysis
prior: {path: pipelines/priors/toy-earth-tiny, device: cpu}
observations: [$OBS]
start: 2003-03-01T00:00
end: 2003-03-02T18:00
members: 2
seed: 0
sampling: {sampler: pc, steps: 16, corrections: 1, solver: gmres, iterations: 2, representation_error: true}
output: $OUT/base.zarr
runner: {workers: 2, cpus_per_worker: 1, progress: false}
YAML

# derived inputs: the observations 3 h later, 2 m temperature in degrees Celsius, an
# autoencoder of "another training run" (the committed one's weights perturbed, saved whole)
$PY - "$OBS" "$OUT" <<'PYTHON'
import shutil, sys
import numpy as np
import torch
from appa.io.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from appa.observations.schema import read_observations, write_observations

obs, out = sys.argv[1], sys.argv[2]
table = read_observations(obs).load()
later = table.copy()
later["time"] = ("obs", table["time"].values + np.timedelta64(3, "h"))
write_observations(later, f"{out}/obs_plus3h")
celsius = table.copy()
value = celsius["value"].values.copy()
value[celsius["variable"].values == "2m_temperature"] -= 273.15
celsius["value"] = ("obs", value)
write_observations(celsius, f"{out}/obs_celsius")
shutil.copytree("pipelines/priors/toy-earth-tiny", f"{out}/prior_other_ae")
ae = load_checkpoint(latest_checkpoint(f"{out}/prior_other_ae/autoencoder"))
generator = np.random.default_rng(0)
tensors = {
    group: {
        k: v + 0.05 * v.std() * torch.from_numpy(generator.standard_normal(v.shape)).to(v.dtype)
        if v.is_floating_point() and v.numel() > 1
        else v
        for k, v in values.items()
    }
    for group, values in ae.tensors.items()
}
shutil.rmtree(f"{out}/prior_other_ae/autoencoder")
save_checkpoint(f"{out}/prior_other_ae/autoencoder", ae.step, tensors, ae.metadata)
PYTHON

case_() {  # case_ NAME COMMAND...: runs it, prints exit code, seconds and its last line
    local name=$1; shift
    local start end
    start=$(date +%s.%N)
    "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    end=$(date +%s.%N)
    printf "%-22s rc=%s %5.1f s  %s\n" "$name" "$rc" "$(echo "$end - $start" | bc)" \
        "$(grep -E '^(error|reanalysis|table):|Error' "$OUT/logs/$name.log" | tail -1 | cut -c1-220)"
}
score() {  # score NAME ARCHIVE: 2 m temperature and z500 RMSE of the ensemble mean
    [ -d "$2" ] || return
    "$APPA" evaluate "$2" --truth "$TRUTH" -v 2m_temperature -v geopotential > "$OUT/logs/score_$1.log" 2>&1
    printf "%-22s %s\n" "  scores" "$(grep -E '2m_temp|geopot' "$OUT/logs/score_$1.log" | awk -F'│' '{printf "%s RMSE %s; ", $2, $3}' | tr -s ' ')"
}
RE="$APPA reanalysis -c $OUT/base.yaml"

case_ base $RE --out "$OUT/base.zarr"; score base "$OUT/base.zarr"
# 1. an existing folder that is not an archive, and evaluate --out over one
mkdir -p "$OUT/photos" && echo precious > "$OUT/photos/holiday.jpg"
case_ 1-folder $RE --out "$OUT/photos"
case_ 1-folder-overwrite $RE --out "$OUT/photos" --set overwrite=true
echo "  photos/ now holds: $(ls "$OUT/photos" | head -4 | tr '\n' ' ')"
mkdir -p "$OUT/tables" && echo precious > "$OUT/tables/notes.txt"
case_ 1-evaluate-out "$APPA" evaluate "$OUT/base.zarr" --truth "$TRUTH" --out "$OUT/tables"
echo "  tables/ now holds: $(ls "$OUT/tables" | head -4 | tr '\n' ' ')"
# 2. the observation store replaced at the same path, the job rerun
cp -r "$OBS" "$OUT/obs_copy"
case_ 2-first $RE --out "$OUT/resume.zarr" --set "observations=[$OUT/obs_copy]"
rm -rf "$OUT/obs_copy" && cp -r "$OUT/obs_plus3h" "$OUT/obs_copy"
case_ 2-replaced-store $RE --out "$OUT/resume.zarr" --set "observations=[$OUT/obs_copy]"
# 3. observations at 03, 09, 15, 21 UTC; a period past the last observation
case_ 3-off-time $RE --out "$OUT/offtime.zarr" --set "observations=[$OUT/obs_plus3h]"
score off-time "$OUT/offtime.zarr"
case_ 3-unobserved-days $RE --out "$OUT/unobserved.zarr" --set start=2003-03-03T00:00 --set end=2003-03-06T18:00
# 4. 2 m temperature in degrees Celsius
case_ 4-celsius $RE --out "$OUT/celsius.zarr" --set "observations=[$OUT/obs_celsius]"
score celsius "$OUT/celsius.zarr"
# 5. a chunk of a finished archive truncated, the job rerun, the archive scored
cp -r "$OUT/base.zarr" "$OUT/damaged.zarr"
chunk=$(ls "$OUT/damaged.zarr/2m_temperature/" | grep -v '^\.' | head -1)
truncate -s 10 "$OUT/damaged.zarr/2m_temperature/$chunk"
cp -r "$OUT/damaged.zarr" "$OUT/damaged-copy.zarr"
case_ 5-evaluate-damaged "$APPA" evaluate "$OUT/damaged-copy.zarr" --truth "$TRUTH" -v 2m_temperature
case_ 5-rerun-damaged $RE --out "$OUT/damaged.zarr"
score repaired "$OUT/damaged.zarr"
# 6. an autoencoder of another training run with the committed denoiser
case_ 6-other-autoencoder $RE --out "$OUT/other_ae.zarr" --set "prior.path=$OUT/prior_other_ae"
score other-autoencoder "$OUT/other_ae.zarr"
# 7. a truncated tensor file, a truncated partition index, an unreachable cluster, a bad date
cp -r pipelines/priors/toy-earth-tiny "$OUT/prior_broken"
truncate -s 1000 "$(ls "$OUT"/prior_broken/diffusion/step-*/*.safetensors | head -1)"
case_ 7-broken-checkpoint $RE --out "$OUT/broken_ckpt.zarr" --set "prior.path=$OUT/prior_broken"
cp -r "$OBS" "$OUT/obs_broken"
part=$(ls -d "$OUT"/obs_broken/2003-03-01* | head -1)
head -c 20 "$part/.zmetadata" > "$part/.zm" && mv "$part/.zm" "$part/.zmetadata"
case_ 7-broken-store $RE --out "$OUT/broken_obs.zarr" --set "observations=[$OUT/obs_broken]"
case_ 7-no-cluster timeout 120 $RE --out "$OUT/address.zarr" --address ray://nohost:10001
case_ 7-bad-date $RE --out "$OUT/date.zarr" --set end=2003-02-30
