"""Training speed-ups that must not change what training computes: the decoder without a padding mask,
the normalise-then-resize preprocessing, the frozen tower's folded (and compiled) copy, the LM under
mixed precision, and the per-stage wall-time estimate (``mmlc train --estimate``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlc.cli import main
from mmlc.config import apply_overrides
from mmlc.errors import ConfigError
from mmlc.models.loading import build
from mmlc.models.presets import preset
from mmlc.train import examples as ex
from mmlc.train import recipes, trainer
from mmlc.train.frozen_tower import FrozenTower, fold_batchnorm


def _padded_batch(model):
    rng = np.random.default_rng(3)
    batch = trainer.collate(model, [ex.stream_example(rng), ex.align_example(rng), ex.change_example(rng)])
    assert (batch["attention_mask"] == 0).any(), "the examples should differ in length"
    return batch


def test_a_batch_packs_only_where_every_row_is_right_padded():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    packing = trainer._packing(right)
    assert packing.segments == [(0, 3), (3, 7), (7, 8)]
    assert packing.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    x = torch.arange(12.0).reshape(3, 4, 1)
    assert packing.pack(x)[0, :, 0].tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
    assert torch.equal(packing.unpack(packing.pack(x)), x * right[..., None])
    assert trainer._packing(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])) is None       # left padding
    assert trainer._packing(torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]])) is None       # holes


@pytest.mark.parametrize("look", [False, True], ids=["plain", "look-and-copy"])
def test_packed_training_gives_the_padded_loss_and_gradients(tiny_with, look):
    """Packed rows (attention per example, positions restarting) give the loss and every gradient of the
    padded, masked batch; with look heads and the copy head too (they read the tapped layer inputs)."""
    torch.manual_seed(0)
    model = tiny_with()
    heads = []
    if look:
        from mmlc.train.reader import enable_reader
        enable_reader(model)
        trainer.set_copy_head(model, "1.1")
        heads = [("answer", 1, 1), ("name", 0, 1)]
    rng = np.random.default_rng(3)
    examples = [ex.stream_example(rng), ex.look_example(rng), ex.change_example(rng), ex.words_example(rng)]
    batch = trainer.collate(model, examples, look_kinds={k for k, _, _ in heads})
    assert (batch["attention_mask"] == 0).any(), "the examples should differ in length"
    assert not look or "looks" in batch
    model.train()
    params = [p for p in model.lm.parameters()]

    def loss_and_grads(pack: bool):
        for p in params:
            p.grad = None
        parts, _ = trainer.lm_step(model, batch, look_heads=heads, look_weight=0.3 if heads else 0.0, pack=pack)
        parts["loss"].backward()
        return parts, [p.grad.clone() for p in params]

    fast, fast_grads = loss_and_grads(True)
    padded, padded_grads = loss_and_grads(False)
    for key in ("loss", "stream_loss", "text_loss") + (("look_loss",) if look else ()):
        torch.testing.assert_close(fast[key].detach(), padded[key].detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(fast_grads, padded_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert model.lm.config._attn_implementation != "mmlc_packed"    # switched back after the forward


def _reference_preprocess(model, frames: np.ndarray, previous=None) -> torch.Tensor:
    """The preprocessing as first written: resize (antialiased), normalise, then stack the previous frame."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    size = model.config.vision.image_size
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (x - model.pixel_mean) / model.pixel_std
    first = previous[None] if previous is not None else x[:1]
    return torch.cat([x, torch.cat([first, x[:-1]])], dim=1)


@pytest.mark.parametrize("shape", [(5, 10, 12, 3), (4, 40, 30, 3), (3, 16, 16, 3)], ids=["enlarge", "shrink", "same"])
def test_preprocess_equals_resize_then_normalise(tiny_model, shape):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, shape, dtype=np.uint8)
    got = tiny_model.preprocess(torch.from_numpy(frames))
    torch.testing.assert_close(got, _reference_preprocess(tiny_model, frames), rtol=0, atol=1e-5)
    previous = tiny_model.preprocess(torch.from_numpy(frames[:1]))[0, :3] * 0.5
    got = tiny_model.preprocess(torch.from_numpy(frames), previous=previous)
    torch.testing.assert_close(got, _reference_preprocess(tiny_model, frames, previous), rtol=0, atol=1e-5)


@pytest.fixture()
def resnet_model(tokenizer):
    """A tiny model whose tower is a ResNet with BatchNorm (as mmlc-tiny's), its statistics made non-trivial."""
    config = apply_overrides(preset("tiny-test"), {"memory.tokens": 0, "vision.size": 32, "vision.hf": {
        "model_type": "resnet", "num_channels": 6, "embedding_size": 8, "hidden_sizes": [16, 32], "depths": [1, 1],
        "layer_type": "basic", "downsample_in_first_stage": False}})
    model = build(config, tokenizer, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.vision.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    return model.eval()


def _pixels(model, n=6):
    frames = np.random.default_rng(1).integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)
    return model.preprocess(torch.from_numpy(frames))


def test_frozen_tower_folds_batchnorm_and_gives_the_tower_s_features(resnet_model):
    model = resnet_model
    keys = set(model.state_dict())
    tower = FrozenTower(model.vision, torch.float32, compile=False)
    assert tower.folded == 7   # stem, two blocks of two convolutions, two shortcuts
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.eager.modules())
    px = _pixels(model)
    with torch.no_grad():
        want = model.vision_features(px)
        got = model.frame_features(*model.vision_maps(px, tower=tower))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the model keeps its own tower (and checkpoints its BatchNorm)
    assert set(model.state_dict()) == keys
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.vision.modules()) == 7
    # in bfloat16: what autocast gave, within bfloat16's rounding
    low = FrozenTower(model.vision, torch.bfloat16, compile=False)
    with torch.no_grad():
        got = model.frame_features(*model.vision_maps(px, tower=low)).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.vision_features(px).float()
    scale = want.abs().max()
    assert float((got - want).abs().max() / scale) < 0.05
    assert float((got - auto).abs().max() / scale) < 0.05


def test_fold_batchnorm_leaves_a_tower_without_it_alone(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.vision.state_dict().items()}
    assert fold_batchnorm(tiny_model.vision) == 0    # tiny-test's SigLIP tower has no BatchNorm
    after = tiny_model.vision.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_training_step_through_the_frozen_tower_equals_the_model_s_tower(resnet_model):
    model = resnet_model
    batch = _padded_batch(model)
    tower = FrozenTower(model.vision, torch.float32, compile=False)
    with torch.no_grad():
        want, _ = trainer.lm_step(model, batch)
        got, _ = trainer.lm_step(model, batch, tower=tower)
    for key in ("loss", "stream_loss", "text_loss"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


def test_mixed_precision_lm_step_is_close_and_keeps_float32_weights_and_gradients(tiny_model):
    batch = _padded_batch(tiny_model)
    tiny_model.train()
    full, _ = trainer.lm_step(tiny_model, batch)
    mixed, logits = trainer.lm_step(tiny_model, batch, lm_dtype="bfloat16")
    assert logits.dtype == torch.float32
    assert abs(float(mixed["loss"].detach()) - float(full["loss"].detach())) < 0.03 * float(full["loss"].detach())
    mixed["loss"].backward()
    grads = [p.grad for p in tiny_model.lm.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_recipe_dtypes_are_checked():
    with pytest.raises(ConfigError, match="lm_dtype='half'"):
        recipes.Recipe(name="x", preset="tiny-test", lm_dtype="half")
    with pytest.raises(ConfigError, match="frozen_tower_dtype='int8'"):
        recipes.Recipe(name="x", preset="tiny-test", frozen_tower_dtype="int8")


def test_estimate_times_every_stage_and_writes_no_run(tmp_path, monkeypatch):
    """``mmlc train --estimate`` walks the recipe's stages on a throwaway model and writes nothing but
    the JSON it is asked for."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "estimate.json"
    assert main(["train", "--recipe", "tiny-smoke", "--estimate", "--estimate-steps", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    smoke = recipes.recipe("tiny-smoke")
    assert [row["name"] for row in report["stages"]] == [s.name for s in smoke.stages]
    assert [row["steps"] for row in report["stages"]] == [s.steps for s in smoke.stages]
    assert all(row["s_per_step"] > 0 and row["seconds"] >= row["s_per_step"] * row["steps"] for row in report["stages"])
    assert report["minutes"] == pytest.approx(sum(row["seconds"] for row in report["stages"]) / 60, abs=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["estimate.json"]


def test_estimate_steps_must_be_positive():
    with pytest.raises(ConfigError, match="--estimate-steps 0"):
        trainer.estimate("tiny-smoke", steps=0)


def test_train_without_estimate_needs_an_out_folder(capsys):
    assert main(["train", "--recipe", "tiny-smoke"]) != 0
    assert "--out DIR is required" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_frozen_tower_gives_the_eager_features(resnet_model):
    """torch.compile's tower (needs a C++ compiler) computes the eager copy's features."""
    model = resnet_model
    tower = FrozenTower(model.vision, torch.float32, compile=True)
    for n in (6, 9):   # a second batch size: the compiled graph is dynamic in the batch
        px = _pixels(model, n)
        with torch.no_grad():
            got = model.frame_features(*model.vision_maps(px, tower=tower))
            want = model.vision_features(px)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert tower.compiled_ok is True
