"""The image U-Net (appa.nn.unet) and the lensing galaxy prior: training, checkpoints, samples."""

import pytest
import torch

from appa.io.checkpoints import CheckpointError, save_checkpoint
from appa.lensing.galaxies import generate_galaxies
from appa.lensing.prior import GalaxyPrior, TrainSettings, build_denoiser, train_prior
from appa.nn.unet import ImageUNet, UNetConfig

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
    saved = []

    def checkpoint(prior, step, result):
        saved.append(prior.save(root, step, extra={"training": result.to_dict()}))

    prior, result = train_prior(
        images[:48],
        images[48:],
        TINY,
        settings,
        pixel=0.05,
        checkpoint=checkpoint,
        checkpoint_every=30,
        log=lambda _: None,
    )
    return prior, result, root, saved, images


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
    assert loaded.card["kind"] == "lensing-galaxy-prior" and loaded.card["step"] == 60
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
    with pytest.raises(CheckpointError, match="not a lensing galaxy prior"):
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
