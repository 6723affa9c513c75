"""The image U-Net (appa.nn.unet) and the lensing galaxy prior: training, checkpoints, samples."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from appa.io.cards import CardError
from appa.io.checkpoints import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    network_digest,
    save_checkpoint,
)
from appa.jobs.lensing import PosteriorSamplingConfig, TrainConfig
from appa.lensing.galaxies import generate_galaxies
from appa.lensing.posterior import SamplingConfig
from appa.lensing.prior import (
    NETWORK_KEYS,
    SIGMA_MAX,
    SIGMA_MIN,
    GalaxyPrior,
    GalaxyPriorCard,
    TrainSettings,
    build_denoiser,
    read_prior_card,
    train_prior,
)
from appa.nn.unet import ImageUNet, UNetConfig

COMMITTED = Path(__file__).resolve().parents[1] / "pipelines" / "priors" / "lensing-galaxies-tiny"
TINY = {"channels": [8, 16], "attention": [False, True], "groups": 4, "heads": 2, "embedding": 16}


@pytest.mark.parametrize("patch", [1, 2])
def test_unet_maps_images_to_images_and_starts_at_zero(patch):
    net = ImageUNet({**TINY, "patch": patch, "in_channels": 2})
    x = torch.randn(3, 2, 16, 16)
    out = net(x, torch.zeros(3))
    assert out.shape == (3, 2, 16, 16)
    assert torch.count_nonzero(out) == 0  # zero-initialised head: D starts as c_skip x_t
    with torch.no_grad():
        net.head.weight.normal_()
    out = net(x, torch.zeros(3))
    # samples in a batch do not see each other
    torch.testing.assert_close(net(x[1:2], torch.zeros(1)), out[1:2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by"):
        net(torch.randn(1, 2, 9, 9), torch.zeros(1))
    with pytest.raises(ValueError, match=r"expects \(B, 2, H, W\)"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1))


def test_unet_config_errors_name_the_field():
    with pytest.raises(ValueError, match="attention has 1 entries for 2 levels"):
        UNetConfig(channels=[8, 16], attention=[True])
    with pytest.raises(ValueError, match="groups=8 must divide"):
        UNetConfig(channels=[12, 16], attention=[False, False])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny prior trained for 60 steps on 16 x 16 stamps."""
    images, _ = generate_galaxies(64, seed=0, size=16, batch=64)
    settings = TrainSettings(
        steps=60, batch=8, lr=2e-3, warmup=5, validate_every=30, precision="fp32", threads=1
    )
    root = tmp_path_factory.mktemp("prior")
    prior, result = train_prior(
        images[:48],
        images[48:],
        TINY,
        settings,
        pixel=0.05,
        checkpoint_dir=root,
        checkpoint_every=30,
        log=lambda _: None,
    )
    return prior, result, root, [path for _, path in list_checkpoints(str(root))], images


def test_training_lowers_the_validation_loss_and_saves(trained):
    prior, result, _, saved, images = trained
    (_, first), (_, last) = result.validation_loss
    assert last < first
    assert result.cpu_seconds > 0 and result.threads == 1
    assert prior.scale == pytest.approx(float(images[:48].double().std()), rel=1e-6)
    assert len(saved) == 2  # at 30 and at 60


def test_prior_round_trips_through_a_float16_checkpoint(trained, tmp_path):
    prior, *_ = trained
    prior.save(tmp_path / "f16", 60, dtype=torch.float16)
    loaded = GalaxyPrior.load(tmp_path / "f16")
    assert loaded.scale == prior.scale and loaded.size == 16 and loaded.pixel == 0.05
    assert loaded.card.kind == "lensing-galaxy-prior" and loaded.step == 60
    # the whole card comes back, the training record included
    assert loaded.card == prior.card and loaded.card.training.validation_loss[-1][0] == 60
    z = torch.randn(4, 1, 16, 16)
    sigma = torch.tensor([0.05, 0.5, 5.0, 50.0])
    with torch.no_grad():
        # weights rounded to float16, computed in float32
        torch.testing.assert_close(
            loaded.denoiser(z, sigma), prior.denoiser(z, sigma), rtol=0.02, atol=0.02
        )
    draws = loaded.sample(3, steps=4, seed=1, batch=2)
    assert draws.shape == (3, 16, 16) and torch.isfinite(draws).all()
    torch.testing.assert_close(draws, loaded.sample(3, steps=4, seed=1, batch=2))


def test_loading_something_else_fails_clearly(tmp_path):
    save_checkpoint(str(tmp_path / "other"), 1, {"model": {"w": torch.zeros(2)}}, {"kind": "x"})
    with pytest.raises(CardError, match=r"other/step-000000001/checkpoint.json: not a lensing"):
        GalaxyPrior.load(tmp_path / "other")
    with pytest.raises(ValueError, match="precision must be"):
        train_prior(
            torch.zeros(4, 16, 16),
            torch.zeros(2, 16, 16),
            TINY,
            TrainSettings(precision="fp8"),
            pixel=0.05,
        )
    assert isinstance(build_denoiser(TINY).backbone, ImageUNet)


def _resumable_run(root, steps=20, stop_at=None, **changes):
    images, _ = generate_galaxies(40, seed=3, size=16, batch=40)
    settings = TrainSettings(
        steps=steps, batch=4, lr=2e-3, warmup=3, validate_every=10, precision="fp32", threads=1
    )
    for key, value in changes.items():
        setattr(settings, key, value)

    def stop(step, _):
        if step == stop_at:
            raise KeyboardInterrupt  # as a killed run: the steps after the last checkpoint lost

    return train_prior(
        images[:32],
        images[32:],
        TINY,
        settings,
        pixel=0.05,
        checkpoint_dir=root,
        checkpoint_every=5,
        log=lambda _: None,
        callback=stop,
    )


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    _resumable_run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(tmp_path / "pieces", stop_at=13)
    assert [s for s, _ in list_checkpoints(str(tmp_path / "pieces"))] == [5, 10]
    with pytest.raises(KeyboardInterrupt):  # stopped again right after a resume
        _resumable_run(tmp_path / "pieces", stop_at=11)
    prior, result = _resumable_run(tmp_path / "pieces")
    whole = load_checkpoint(str(tmp_path / "whole"))
    pieces = load_checkpoint(str(tmp_path / "pieces"))
    assert whole.step == pieces.step == 20
    for group in ("model", "raw"):  # EMA and optimised weights, bitwise
        assert whole.tensors[group].keys() == pieces.tensors[group].keys()
        for name, tensor in whole.tensors[group].items():
            assert torch.equal(tensor, pieces.tensors[group][name]), (group, name)
    for name, tensor in prior.denoiser.backbone.state_dict().items():
        assert torch.equal(tensor, whole.tensors["model"][name])
    # the record: no step lost or counted twice
    a, b = whole.metadata["training"], pieces.metadata["training"]
    assert a["train_loss"] == b["train_loss"] and a["validation_loss"] == b["validation_loss"]
    assert [s for s, _ in result.validation_loss] == [10, 20]
    history = json.loads((tmp_path / "pieces" / "history.json").read_text())
    assert history["train_loss"] == b["train_loss"]
    # a finished run is not trained further
    manifest = (tmp_path / "pieces" / "step-000000020" / "checkpoint.json").read_bytes()
    again, _ = _resumable_run(tmp_path / "pieces")
    assert (tmp_path / "pieces" / "step-000000020" / "checkpoint.json").read_bytes() == manifest
    for name, tensor in again.denoiser.backbone.state_dict().items():
        assert torch.equal(tensor, whole.tensors["model"][name])


def test_resuming_with_other_settings_names_the_keys(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(tmp_path, stop_at=6)
    with pytest.raises(CheckpointError, match=r"differ in \['settings.lr', 'settings.steps'\]"):
        _resumable_run(tmp_path, steps=30, lr=1e-3)
    # a prior's checkpoint without the training state cannot be resumed
    prior = GalaxyPrior.load(tmp_path)
    prior.save(tmp_path / "weights-only", 5)
    with pytest.raises(CheckpointError, match="holds no training state"):
        _resumable_run(tmp_path / "weights-only")


def test_the_committed_prior_loads_samples_and_says_what_it_is():
    root = COMMITTED
    ckpt = load_checkpoint(str(root))
    assert {t.dtype for t in ckpt.tensors["model"].values()} == {torch.float16}
    assert set(ckpt.tensors) == {"model"} and not ckpt.states  # weights only, no training state
    prior = GalaxyPrior.load(root)
    card = prior.card
    assert card.kind == "lensing-galaxy-prior" and prior.step == 4000
    assert card.weights == "EMA" and card.dtype == "float16"
    assert card.schedule_steps == card.config["train"]["steps"] == 4000
    assert card.complete is True and "step 4000 of a 4000-step schedule" in card.state
    assert [s for s, _ in card.training.validation_loss][-1] == 4000
    assert card.exported_from.step == 4000 and card.resume is None
    assert (prior.size, prior.pixel) == (64, 0.05) and prior.scale > 0
    assert prior.sigma_min < prior.sigma_max
    draws = prior.sample(1, steps=2, seed=0)
    assert draws.shape == (1, 64, 64) and torch.isfinite(draws).all()


def test_the_committed_card_reads_and_writes_back_as_stored():
    manifest = json.loads(next(COMMITTED.glob("step-*/checkpoint.json")).read_text())
    stored = manifest["metadata"]
    card = read_prior_card(stored)
    written = card.model_dump(mode="json")
    # every stored entry comes back as it was; the entries it lacks are written as null
    assert {k: written[k] for k in stored} == stored
    assert {k for k in written if k not in stored} <= {"resume"} and written["resume"] is None
    # so a prior saved from it keeps the network digest its weights were written with
    assert network_digest(written, NETWORK_KEYS) == manifest["network"]["sha256"]
    assert GalaxyPriorCard.model_validate(written) == card


def test_a_bad_card_is_refused_naming_the_entry():
    stored = json.loads(next(COMMITTED.glob("step-*/checkpoint.json")).read_text())["metadata"]
    missing = {k: v for k, v in stored.items() if k != "scale"}
    cases = [
        (missing, r"prior\.json: invalid card:\n  scale: Field required"),
        ({**stored, "size": "64"}, r"size: Input should be a valid integer"),
        ({**stored, "scale": -1.0}, r"scale: Input should be greater than 0"),
        ({**stored, "colour": "red"}, r"colour: Extra inputs are not permitted"),
        ({**stored, "unet": {**stored["unet"], "width": 3}}, r"unet.width: Unexpected keyword"),
        ({**stored, "unet": {**stored["unet"], "groups": 7}}, r"unet: .*groups=7 must divide"),
        ({**stored, "sigma_min": 1e3}, r"sigma_min 1000.0 must be below sigma_max 100.0"),
        ({**stored, "dtype": "float8"}, r"dtype: Input should be 'float16'"),
        ({**stored, "training": {**stored["training"], "threads": "two"}}, r"training.threads"),
        ({**stored, "kind": "diffusion"}, r"prior\.json: not a lensing galaxy prior \(kind 'diff"),
        ({k: v for k, v in stored.items() if k != "kind"}, r"not a lensing .* \(kind None"),
    ]
    for metadata, message in cases:
        with pytest.raises(CardError, match=message):
            read_prior_card(metadata, "prior.json")


def test_loading_a_checkpoint_with_a_bad_card_names_the_checkpoint(trained, tmp_path):
    prior, *_ = trained
    # written without the card's network digest, as by hand: the card's own checks catch it
    metadata = prior.card.model_dump(mode="json")
    del metadata["sigma_max"]
    weights = {"model": prior.denoiser.backbone.state_dict()}
    save_checkpoint(str(tmp_path / "hand"), 7, weights, metadata)
    with pytest.raises(CardError, match=r"hand/step-000000007/checkpoint.json: invalid card:\n"):
        GalaxyPrior.load(tmp_path / "hand")
    # an entry outside the network digest, edited in the file
    saved = Path(prior.save(tmp_path / "edited", 60))
    shutil.copytree(saved, tmp_path / "copy" / saved.name)
    path = tmp_path / "copy" / saved.name / "checkpoint.json"
    manifest = json.loads(path.read_text())
    manifest["metadata"]["training"]["train_loss"] = "falling"
    path.write_text(json.dumps(manifest))
    message = r"copy/step-000000060/checkpoint.json: invalid card:\n  training.train_loss: "
    with pytest.raises(CardError, match=message):
        GalaxyPrior.load(tmp_path / "copy")
    GalaxyPrior.load(saved)  # the untouched one loads


def test_the_noise_range_default_is_defined_once():
    assert (SIGMA_MIN, SIGMA_MAX) == (1e-2, 1e2)
    for config in (TrainSettings(), SamplingConfig(), TrainConfig()):
        assert (config.sigma_min, config.sigma_max) == (SIGMA_MIN, SIGMA_MAX), config
    # posterior sampling in a job defaults to the range of the prior it samples
    assert PosteriorSamplingConfig().sigma_min is None
    assert PosteriorSamplingConfig().sigma_max is None
