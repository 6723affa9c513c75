"""The prior's parts are checked as a pair, and a card as the description of its own weights:
an autoencoder the denoiser was not trained with, or a card edited after its weights were
written, is refused wherever a prior or a checkpoint is loaded, naming the culprit."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import zarr

from appa.assimilation import LatentPrior, PriorMismatchError
from appa.io.checkpoints import (
    CheckpointError,
    export_checkpoint,
    inspect_checkpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from appa.jobs.assimilate import AssimilateConfig, plan_archive

ROOT = Path(__file__).resolve().parents[2]
PRIOR = ROOT / "pipelines" / "priors" / "toy-earth-tiny"
AE_STEP = "autoencoder/step-000001800"
DN_STEP = "diffusion/step-000005000"
LENSING = ROOT / "pipelines" / "priors" / "lensing-galaxies-tiny" / "step-000004000"


def _copy(source: Path, tmp_path: Path, name: str = "prior") -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def _edit(manifest: Path, change) -> None:
    """Edits a checkpoint.json in place, as a user with a text editor would."""
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data, indent=1))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _other_autoencoder(tmp_path: Path) -> str:
    """An autoencoder of another training run: the committed one's card (architecture, state
    spec, statistics), other weights."""
    ckpt = load_checkpoint(str(PRIOR / "autoencoder"))
    g = torch.Generator().manual_seed(1)
    weights = {}
    for name in sorted(ckpt.tensors["model"]):
        t = ckpt.tensors["model"][name]
        if t.is_floating_point() and t.numel() > 1:
            t = t + 0.05 * t.std() * torch.randn(t.shape, generator=g)
        weights[name] = t
    metadata = {k: v for k, v in ckpt.metadata.items() if k != "exported_from"}
    return save_checkpoint(str(tmp_path / "other-ae"), 1800, {"model": weights}, metadata)


def test_an_autoencoder_from_another_run_is_refused_with_the_committed_denoiser(base, tmp_path):
    """A denoiser samples latents of the autoencoder it was trained on: another autoencoder of
    the same architecture, spec and statistics is refused, by the prior and by the job before
    it plans an archive, naming both checkpoints and both digests."""
    other = _other_autoencoder(tmp_path)
    committed = _sha256(PRIOR / AE_STEP / "model.safetensors")
    other_sha = _sha256(Path(other) / "model.safetensors")
    with pytest.raises(PriorMismatchError) as info:
        LatentPrior.from_checkpoints(other, str(PRIOR / "diffusion"))
    message = str(info.value)
    for part in (other, str(PRIOR / DN_STEP), committed, other_sha):
        assert part in message
    base["prior"] = {"autoencoder": other, "diffusion": str(PRIOR / "diffusion"), "device": "cpu"}
    with pytest.raises(PriorMismatchError, match=other_sha):
        plan_archive(AssimilateConfig.model_validate(base))
    assert not Path(base["output"]).exists()


def test_the_committed_prior_is_a_verified_pair(base):
    """The committed denoiser records the weights of the committed autoencoder (the run and
    step it was exported from), so the committed prior loads, and its archives say so."""
    ae = json.loads((PRIOR / AE_STEP / "checkpoint.json").read_text())
    dn = json.loads((PRIOR / DN_STEP / "checkpoint.json").read_text())
    made = dn["metadata"]["run"]["data"]["provenance"]
    origin = ae["metadata"]["exported_from"]
    assert (made["checkpoint"], made["checkpoint_step"]) == (origin["path"], origin["step"])
    weights = _sha256(PRIOR / AE_STEP / "model.safetensors")
    assert made["checkpoint_sha256"] == weights == origin["sha256"]["model"]
    assert ae["files"]["model.safetensors"]["sha256"] == weights
    prior = LatentPrior.from_checkpoints(str(PRIOR / "autoencoder"), str(PRIOR / "diffusion"))
    assert prior.provenance["pair"] == "verified"
    archive = plan_archive(AssimilateConfig.model_validate(base))
    assert zarr.open_group(archive.url, mode="r").attrs["prior_pair"] == "verified"


def test_a_denoiser_that_does_not_name_its_autoencoder_needs_an_explicit_opt_out(base, tmp_path):
    """An older denoiser that does not record its autoencoder's weights is refused with what to
    do; `prior.unverified_pair: true` runs it anyway, and the archive says the pair is
    unverified (the opt-out is not part of what the archive holds: its config is unchanged)."""
    prior = _copy(PRIOR, tmp_path)
    _edit(
        prior / DN_STEP / "checkpoint.json",
        lambda m: m["metadata"]["run"]["data"]["provenance"].pop("checkpoint_sha256"),
    )
    base["prior"]["path"] = str(prior)
    with pytest.raises(PriorMismatchError, match=r"does not record.*prior\.unverified_pair"):
        plan_archive(AssimilateConfig.model_validate(base))
    assert not Path(base["output"]).exists()
    with pytest.raises(PriorMismatchError, match="does not record"):
        LatentPrior.from_checkpoints(str(prior / "autoencoder"), str(prior / "diffusion"))
    loaded = LatentPrior.from_checkpoints(
        str(prior / "autoencoder"), str(prior / "diffusion"), unverified_pair=True
    )
    assert loaded.provenance["pair"] == "unverified"

    base["prior"]["unverified_pair"] = True
    archive = plan_archive(AssimilateConfig.model_validate(base))
    attrs = zarr.open_group(archive.url, mode="r").attrs
    assert attrs["prior_pair"] == "unverified"
    assert "unverified_pair" not in json.dumps(attrs["appa_config"])
    # a recorded digest that differs is refused even with the opt-out
    _edit(
        prior / DN_STEP / "checkpoint.json",
        lambda m: m["metadata"]["run"]["data"]["provenance"].update(checkpoint_sha256="0" * 64),
    )
    with pytest.raises(PriorMismatchError, match="0" * 64):
        LatentPrior.from_checkpoints(
            str(prior / "autoencoder"), str(prior / "diffusion"), unverified_pair=True
        )


def test_encoding_records_the_weights_training_carries_them_and_export_keeps_them(world, tmp_path):
    """`appa encode` records the digest of the autoencoder weights it encodes with, diffusion
    training copies it into the denoiser's card, and the prior then checks the pair; exporting
    a checkpoint copies its weights byte for byte, so the digest still names them."""
    from appa.jobs.encode import EncodeConfig, run_encode
    from appa.jobs.train import TrainDiffusionConfig, run_training

    exported = export_checkpoint(str(PRIOR / "autoencoder"), str(tmp_path / "exported"))
    for name in ("model.safetensors",):
        assert (Path(exported) / name).read_bytes() == (PRIOR / AE_STEP / name).read_bytes()
    weights = _sha256(PRIOR / AE_STEP / "model.safetensors")
    assert inspect_checkpoint(exported).files["model.safetensors"]["sha256"] == weights
    assert read_metadata(exported)["exported_from"]["sha256"]["model"] == weights

    latents = str(tmp_path / "latents.zarr")
    encode = {
        "checkpoint": exported,
        "source": world["truth"],
        "source_format": "gridded",
        "output": latents,
        "block": 8,
        "runner": {"backend": "local"},
    }
    run_encode(EncodeConfig.model_validate(encode))
    assert zarr.open_group(latents, mode="r").attrs["provenance"]["checkpoint_sha256"] == weights

    job = TrainDiffusionConfig.model_validate(
        {
            "overrides": [
                "denoiser.channels=8", "denoiser.window=4", "denoiser.width=24",
                "denoiser.heads=2", "denoiser.depth=1", "denoiser.mod_features=16",
            ],
            "data": {"path": latents, "variable": "latent"},
            "latent_stats": "store",
            "val_sigmas": 2,
            "loop": {"steps": 1, "batch_size": 2, "val_every": 1, "val_batches": 1,
                     "progress": False, "compile": False},
            "run_dir": str(tmp_path / "dit"),
            "runner": {"backend": "local"},
        }
    )  # fmt: skip
    run_training(job)
    denoiser = str(tmp_path / "dit" / "checkpoints")
    made = read_metadata(denoiser)["run"]["data"]["provenance"]
    assert made["checkpoint_sha256"] == weights
    prior = LatentPrior.from_checkpoints(str(PRIOR / "autoencoder"), denoiser, weights="model")
    assert prior.provenance["pair"] == "verified"
    with pytest.raises(PriorMismatchError, match=weights):
        LatentPrior.from_checkpoints(_other_autoencoder(tmp_path), denoiser, weights="model")


def test_a_card_edited_after_its_weights_were_written_is_refused(base, tmp_path):
    """A card describes the network its weights belong to: a field edited afterwards, even
    one that changes no shape (the denoiser's rope base, the autoencoder's saturation bound),
    is refused by the job before it plans an archive and by the prior, naming the file."""
    for part, change in (
        (DN_STEP, lambda m: m["metadata"]["card"]["denoiser"].update(rope_base=10000.0)),
        (AE_STEP, lambda m: m["metadata"]["card"]["autoencoder"].update(saturation_bound=4.0)),
    ):
        prior = _copy(PRIOR, tmp_path, part.split("/")[0])
        _edit(prior / part / "checkpoint.json", change)
        job = AssimilateConfig.model_validate({**base, "prior": {"path": str(prior)}})
        edited = rf"{prior / part}/checkpoint\.json: its card's network description"
        with pytest.raises(CheckpointError, match=edited):
            plan_archive(job)
        assert not Path(base["output"]).exists()
        with pytest.raises(CheckpointError, match=edited):
            LatentPrior.from_checkpoints(str(prior / "autoencoder"), str(prior / "diffusion"))


def test_a_card_whose_network_does_not_fit_its_weights_is_refused_before_any_worker(
    base, tmp_path, monkeypatch
):
    """A card whose network has other parameters than its weights (an older checkpoint, whose
    manifest does not record its card's digest, given another width) is refused by the job's
    driver from the weights' header alone, naming the file and the first parameter that
    differs, whether the network is built on the CPU or (large ones) on the meta device."""
    import appa.assimilation.prior as prior_module

    prior = _copy(PRIOR, tmp_path)

    def widen(manifest: dict) -> None:
        manifest.pop("network")  # as written before the digest existed
        manifest["metadata"]["card"]["denoiser"]["width"] = 48

    _edit(prior / DN_STEP / "checkpoint.json", widen)
    job = AssimilateConfig.model_validate({**base, "prior": {"path": str(prior)}})
    expected = rf"{prior / DN_STEP}/model\.safetensors does not match the network its card "
    first = r"describes: in_proj\.weight is \(96, 32\) in the weights, \(48, 32\) in the network"
    for meta_bytes in (prior_module._META_BYTES, 0):
        monkeypatch.setattr(prior_module, "_META_BYTES", meta_bytes)
        with pytest.raises(CheckpointError, match=expected + first):
            plan_archive(job)
    assert not Path(base["output"]).exists()
    with pytest.raises(CheckpointError, match="does not match the model"):
        LatentPrior.from_checkpoints(str(prior / "autoencoder"), str(prior / "diffusion"))


def test_every_checkpoint_reader_refuses_an_edited_card(tmp_path):
    """The rule holds wherever a card is read with its weights: the lensing galaxy prior (its
    pixel scale edited) and a neural posterior estimator (its prior bounds edited) are refused
    on load; a newly saved estimator records its card's digest."""
    from appa.lensing.prior import GalaxyPrior
    from appa.npe import (
        BoxUniform,
        EstimatorConfig,
        build_estimator,
        load_estimator,
        save_estimator,
    )

    GalaxyPrior.load(LENSING)  # the committed one loads
    lensing = _copy(LENSING, tmp_path, "lensing")
    _edit(
        lensing / "checkpoint.json",
        lambda m: m["metadata"].update(scale=2 * m["metadata"]["scale"]),
    )
    with pytest.raises(CheckpointError, match=r"network description .*was edited"):
        GalaxyPrior.load(lensing)

    prior = BoxUniform([-1.0, 0.0], [1.0, 4.0])
    estimator = build_estimator(prior, (2,), EstimatorConfig(kind="flow"))
    saved = save_estimator(tmp_path / "npe", estimator)
    load_estimator(saved)
    (manifest,) = Path(saved).glob("step-*/checkpoint.json")
    assert "network" in json.loads(manifest.read_text())
    _edit(manifest, lambda m: m["metadata"]["members"][0]["prior"].update(high=[1.0, 9.0]))
    with pytest.raises(CheckpointError, match="was edited after the weights were written"):
        load_estimator(saved)
