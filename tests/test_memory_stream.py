"""Streaming with the memory bridge: the session's context is the training layout of the memory stage,
the KV cache stays bounded, options are checked, and the memory stage's examples train the bridge."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mmlc
from mmlc.config import apply_overrides
from mmlc.errors import ConfigError
from mmlc.models.layout import Frame, Memory
from mmlc.models.memory import MemoryState
from mmlc.models.presets import preset
from mmlc.train.trainer import set_frames_grid


@pytest.fixture(scope="module", params=[0, 2])
def model(request):
    torch.manual_seed(request.param)          # random weights, but the same ones every run
    return mmlc.load("tiny-test", init="random")


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(n)]


def test_memory_is_on_by_default_for_a_model_with_a_bridge(model):
    assert model.bridge is not None
    s = model.stream()
    assert s.memory and s.max_memories == model.config.memory.max_memories
    assert s._tiler.max_scene_frames == round(model.config.memory.max_scene_seconds * s.fps)
    assert not model.stream(window_seconds=5).memory
    assert not model.stream(memory=False).memory


def test_session_context_equals_the_memory_layout(model):
    """After scenes were closed, the session's last decision logits equal one forward over the layout
    of [Memory per closed scene] + the current scene's frames, with the bridge folding the same features."""
    _assert_context_is_the_memory_layout(model)


def test_session_context_equals_the_memory_layout_with_tagged_memories(tiny_with):
    """The same with word tags on frames and on memories (memory.tags, a rare-shape detector): the
    session folds each scene's tags from the features it kept, as training does."""
    from mmlc.train.reader import enable_rare, enable_reader
    from mmlc.train.trainer import set_memory_tags

    torch.manual_seed(0)
    model = tiny_with(**{"memory.tokens": 8})
    enable_reader(model)
    enable_rare(model)
    assert set_memory_tags(model)
    _assert_context_is_the_memory_layout(model.eval())


def test_a_finer_frame_grid_keeps_the_bridge_on_its_own_grid(model, tmp_path):
    """A stage that moves frames to 4x4 (trainer.set_frames_grid) leaves the bridge folding the 1 + 2x2
    features it was trained on: re-pooled from the 4x4 tokens, they equal the 2x2 model's features, so
    a scene's memory does not change; the session still equals the layout; the config saves and loads."""
    fine = copy.deepcopy(model)
    set_frames_grid(fine, 4)
    assert (fine.tokens_per_frame, fine.layout.tokens_per_frame, fine.config.memory_grid) == (17, 17, 2)
    with torch.inference_mode():
        pixels = model.preprocess(_frames(6))
        feats = fine.vision_features(pixels)
        assert feats.shape[1] == 17
        torch.testing.assert_close(fine.memory_features(feats), model.vision_features(pixels))
        torch.testing.assert_close(MemoryState(fine.bridge).add_scene(fine.memory_features(feats)),
                                   MemoryState(model.bridge).add_scene(model.vision_features(pixels)))
    _assert_context_is_the_memory_layout(fine)
    loaded = mmlc.load(fine.save_pretrained(tmp_path / "fine"))
    assert (loaded.config.frames.grid, loaded.config.memory.grid, loaded.tokens_per_frame) == (4, 2, 17)
    with pytest.raises(ConfigError, match="memory.grid"):
        apply_overrides(preset("tiny-test"), {"memory.grid": -1})


def _assert_context_is_the_memory_layout(model):
    frames = _frames(21)
    s = model.stream(fps=2.0, threshold=0.0, max_scene_seconds=3.0, max_memories=16)  # never speaks; cuts every <= 6 frames
    for f in frames:
        s.push_frame(f)
    starts = s.scene_starts
    assert len(starts) >= 3 and s.stats()["scenes_closed"] == len(starts) - 1

    with torch.inference_mode():
        pixels = model.preprocess(frames)
        feats = model.vision_features(pixels)
        state = MemoryState(model.bridge)
        memories = [model.memory_embeddings(state.add_scene(model.memory_features(feats[a:b])), feats[a:b])[0]
                    for a, b in zip(starts, starts[1:])]
        current = range(starts[-1], len(frames))
        items = [Memory() for _ in memories] + [Frame(k) for k in range(len(current))]
        seq = model.layout.build(items)
        out = model(torch.tensor([seq.ids]), frame_tokens=model.project(feats[starts[-1]:]),
                    memory_tokens=torch.cat(memories))
    assert s.kv_length == len(seq.ids)
    torch.testing.assert_close(s.last_logits, out.logits[0, -1], atol=2e-4, rtol=1e-4)


def test_kv_is_bounded_and_old_memories_leave(model):
    s = model.stream(fps=2.0, threshold=0.0, max_scene_seconds=2.0, max_memories=2)
    kv = []
    for f in _frames(120, seed=1):
        s.push_frame(f)
        kv.append(s.kv_length)
    stats = s.stats()
    assert stats["memories_kept"] == 2 and stats["scenes_closed"] >= 25
    per_frame = model.tokens_per_frame + 1
    bound = s.prefix_length + 2 * model.config.memory.tokens + 8 * per_frame
    assert max(kv) <= bound
    assert max(kv[-40:]) == max(kv[40:80])      # flat once memories are evicted
    plain = model.stream(fps=2.0, threshold=0.0, memory=False)
    for f in _frames(120, seed=1):
        plain.push_frame(f)
    assert plain.kv_length > 3 * max(kv)


def test_words_of_a_closed_scene_stay_in_its_memory_block(model):
    """A question answered in a scene is replayed after the scene's memory tokens (as unlabelled text)."""
    s = model.stream(fps=2.0, threshold=0.0, max_scene_seconds=3.0, max_reply_tokens=3)
    frames = _frames(12, seed=2)
    for f in frames[:3]:
        s.push_frame(f)
    ans = s.ask("how many objects are there?")
    asked = model.layout.question_prompt("how many objects are there?").ids
    for f in frames[3:]:
        s.push_frame(f)
    assert s.stats()["scenes_closed"] >= 1 and ans.kind == "answer"
    blocks = s._blocks
    # the first block: memory tokens, then the question prompt, answer tokens and {end}
    length = blocks[0][1] - blocks[0][0]
    assert model.config.memory.tokens + len(asked) + 1 <= length <= model.config.memory.tokens + len(asked) + 4


def test_bad_memory_options(model):
    with pytest.raises(ConfigError, match="use one"):
        model.stream(memory=True, window_seconds=10)
    with pytest.raises(ConfigError, match="max_memories"):
        model.stream(max_memories=0)
    plain = mmlc.load("tiny-test", init="random", **{"memory.tokens": 0})
    assert plain.bridge is None and not plain.stream().memory
    with pytest.raises(ConfigError, match="no memory bridge|has none"):
        plain.stream(memory=True)


def test_memory_stage_examples_train_the_bridge(model):
    from mmlc.train import examples as ex
    from mmlc.train.trainer import collate, lm_step

    rng = np.random.default_rng(0)
    batch = []
    while len(batch) < 2:
        e = ex.memory_stream_example(rng)
        if e.memory_spans:
            batch.append(e)
    for e in batch:
        n_mem = sum(isinstance(i, Memory) for i in e.items)
        n_frames = sum(isinstance(i, Frame) for i in e.items)
        assert n_mem == len(e.memory_spans) and e.frame_offset + n_frames == len(e.frames)
        assert e.memory_spans[0][0] == 0 and e.memory_spans[-1][1] == e.frame_offset
    model.train()
    try:
        parts, _ = lm_step(model, collate(model, batch))
        parts["loss"].backward()
    finally:
        model.eval()
    assert model.bridge.initial.grad is not None and model.bridge.initial.grad.abs().sum() > 0
    assert model.memory_offset.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_memory_probe_targets_and_gradients(model):
    """memalign examples carry what each scene's memory should hold; the probe's loss reaches the bridge."""
    from mmlc.train import examples as ex
    from mmlc.train.trainer import MemoryProbe, collate, lm_step

    rng = np.random.default_rng(4)
    batch = [e for e in (ex.memory_align_example(rng) for _ in range(6)) if e.memory_spans][:3]
    for e in batch:
        assert len(e.meta["memory_targets"]) == len(e.memory_spans)
        for t in e.meta["memory_targets"]:
            assert set(t) == set(ex.MEMORY_TARGETS) and all(0 <= t[k] < n for k, n in ex.MEMORY_TARGETS.items())
        questions = [i for i in e.items if isinstance(i, ex.Question)]
        assert questions and all(q.answer for q in questions)
    probe = MemoryProbe(model.config.memory.tokens, model.config.vision.hidden_size)
    data = collate(model, batch)
    assert data["memory_targets"].shape == (sum(len(e.memory_spans) for e in batch), len(ex.MEMORY_TARGETS))
    parts, _ = lm_step(model, data, probe=probe)
    assert float(parts["memory_probe_loss"].detach()) > 0
    parts["memory_probe_loss"].backward()
    assert model.bridge.initial.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
