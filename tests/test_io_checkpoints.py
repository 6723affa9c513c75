"""Checkpoints: exact round trips, atomic commits, pruning, clear errors, fsspec URLs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from torch import nn

from appa.io import (
    CheckpointError,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
    unflatten_state,
)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 3))


def _optimizer_state(model: nn.Module) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    return opt.state_dict()


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and set(a) == set(b)
            and all(type(k) is type(kb) for k, kb in zip(sorted(a), sorted(b), strict=True))
            and all(_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b and type(a) is type(b)


def test_flatten_round_trip_keeps_int_keys_tuples_and_dtypes():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3).bfloat16()}},
        "param_groups": [{"params": [0, 1], "betas": (0.9, 0.95), "lr": 1e-3, "x": None}],
        "rng": torch.get_rng_state(),
    }
    skeleton, tensors = flatten_state(state)
    json.dumps(skeleton)  # JSON-able
    assert set(tensors) == {"state/0/step", "state/0/m", "rng"}
    assert _equal(unflatten_state(json.loads(json.dumps(skeleton)), tensors), state)
    with pytest.raises(TypeError, match="cannot store"):
        flatten_state({"f": object()})


def test_round_trip_model_optimizer_metadata(tmp_path: Path):
    model = _model()
    opt_state = _optimizer_state(model)
    meta = {"config": {"lr": 1e-3, "name": "x"}, "stats": {"mean": [0.5, 1.25]}}
    path = save_checkpoint(
        str(tmp_path / "run"),
        7,
        {"model": model.state_dict()},
        metadata=meta,
        states={"optimizer": opt_state},
    )
    assert Path(path).name == "step-000000007"
    ckpt = load_checkpoint(str(tmp_path / "run"))  # a run folder resolves to its latest
    assert ckpt.step == 7 and ckpt.metadata == meta
    assert ckpt.versions["torch"] == torch.__version__
    assert _equal(ckpt.tensors["model"], dict(model.state_dict()))
    assert _equal(ckpt.states["optimizer"], opt_state)
    # the rebuilt optimiser state loads into a fresh optimiser
    fresh = _model()
    load_module_state(fresh, ckpt.tensors["model"])
    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt.load_state_dict(ckpt.states["optimizer"])
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_no_pickle_in_checkpoint_files(tmp_path: Path):
    model = _model()
    path = save_checkpoint(str(tmp_path), 1, {"model": model.state_dict()})
    for f in Path(path).iterdir():
        head = f.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"\x80\x02", f  # pickle protocol headers


def test_keep_last_n_and_overwrite_same_step(tmp_path: Path):
    root = str(tmp_path / "run")
    for step in range(5):
        save_checkpoint(root, step, {"w": {"x": torch.full((2,), float(step))}}, keep=2)
    assert [s for s, _ in list_checkpoints(root)] == [3, 4]
    save_checkpoint(root, 4, {"w": {"x": torch.full((2,), 40.0)}}, keep=2)
    assert load_checkpoint(root).tensors["w"]["x"].tolist() == [40.0, 40.0]
    assert sorted(p.name for p in Path(root).iterdir()) == ["step-000000003", "step-000000004"]


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path: Path, monkeypatch):
    root = str(tmp_path / "run")
    save_checkpoint(root, 1, {"w": {"x": torch.ones(3)}})

    import appa.io.checkpoints as ck

    calls = {"n": 0}
    real = fsspec.implementations.local.LocalFileSystem.pipe_file

    def failing(self, path, value, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the tensors are written, the manifest is not
            raise OSError("disk full")
        return real(self, path, value, **kw)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "pipe_file", failing)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(root, 2, {"w": {"x": torch.zeros(3)}})
    monkeypatch.undo()
    assert latest_checkpoint(root).endswith("step-000000001")
    assert load_checkpoint(root).tensors["w"]["x"].tolist() == [1.0, 1.0, 1.0]
    # the next good save cleans up the leftover temporary folder
    save_checkpoint(root, 3, {"w": {"x": torch.zeros(3)}})
    assert not [p for p in Path(root).iterdir() if p.name.startswith(".")]


def test_corrupt_truncated_and_missing_files_are_named(tmp_path: Path):
    root = str(tmp_path / "run")
    path = Path(save_checkpoint(root, 2, {"model": _model().state_dict()}))
    target = path / "model.safetensors"
    blob = target.read_bytes()

    target.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_checkpoint(str(path))
    # without verification the safetensors parser still refuses it, naming the file
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*not a readable"):
        load_checkpoint(str(path), verify=False)

    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    target.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*SHA-256"):
        load_checkpoint(str(path))

    target.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing"):
        load_checkpoint(str(path))

    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoint\.json.*not valid JSON"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "empty"))


def test_mismatched_model_lists_keys_and_shapes(tmp_path: Path):
    path = save_checkpoint(str(tmp_path), 0, {"model": _model().state_dict()})
    ckpt = load_checkpoint(path)
    other = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 5), nn.Linear(5, 1))
    with pytest.raises(CheckpointError) as info:
        load_module_state(other, ckpt.tensors["model"], f"{path}/model.safetensors")
    text = str(info.value)
    assert "model.safetensors" in text and "missing keys" in text and "3.weight" in text
    assert "shape 2.weight: checkpoint (3, 8) vs model (5, 8)" in text


def test_memory_filesystem_url():
    root = f"memory://ckpt-test-{uuid.uuid4().hex[:8]}/run"
    model = _model()
    for step in (10, 20):
        save_checkpoint(root, step, {"model": model.state_dict()}, metadata={"s": step}, keep=1)
    assert [s for s, _ in list_checkpoints(root)] == [20]
    latest = latest_checkpoint(root)
    assert latest.startswith("memory://")
    ckpt = load_checkpoint(latest)
    assert ckpt.metadata == {"s": 20}
    assert _equal(ckpt.tensors["model"], dict(model.state_dict()))


def test_export_keeps_weights_and_drops_optimiser_state(tmp_path: Path):
    from appa.io.checkpoints import export_checkpoint

    model = _model()
    run = str(tmp_path / "run")
    for step in (10, 20):
        save_checkpoint(
            run,
            step,
            {"model": model.state_dict(), "ema": model.state_dict(), "rng": {"s": torch.ones(2)}},
            metadata={"kind": "autoencoder", "config": {"a": 1}},
            states={"optimizer": _optimizer_state(model)},
        )
    out = tmp_path / "prior"
    save_checkpoint(str(out), 99, {"model": model.state_dict()})  # stale: replaced
    path = export_checkpoint(run, str(out), ["ema"])
    assert [step for step, _ in list_checkpoints(str(out))] == [20]
    exported = load_checkpoint(str(out))
    assert exported.path == path and exported.step == 20
    assert set(exported.tensors) == {"ema"} and exported.states == {}
    assert _equal(exported.tensors["ema"], model.state_dict())
    assert exported.metadata["config"] == {"a": 1}
    assert exported.metadata["exported_from"]["step"] == 20
    assert exported.metadata["weights"] == "ema"  # one group kept: the one to sample with
    assert not list(Path(path).glob("state-*"))
    with pytest.raises(CheckpointError, match="no tensor group"):
        export_checkpoint(run, str(tmp_path / "x"), ["missing"])
