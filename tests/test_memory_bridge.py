"""MemoryBridge: shapes, recurrence (a scene's content reaches later memories), the retriever's cache
bound, gradients through every scene, and config validation."""

from __future__ import annotations

import pytest
import torch

from mmlc.errors import ConfigError
from mmlc.models.memory import MemoryBridge, MemoryConfig, MemoryState


@pytest.fixture()
def bridge():
    torch.manual_seed(0)
    return MemoryBridge(32, MemoryConfig(tokens=4, layers=1, heads=4, max_cached=3)).eval()


def test_fold_shapes_and_state(bridge):
    state = MemoryState(bridge)
    for n in (5, 1, 12):
        mem = state.add_scene(torch.randn(n, 32))
        assert mem.shape == (1, 4, 32) and torch.isfinite(mem).all()
    assert state.scenes == 3 and len(state.cache) == 3


def test_recurrence_carries_earlier_scenes(bridge):
    """Changing the first scene changes the memory after the third (information flows forward)."""
    torch.manual_seed(1)
    s1, s2, s3 = torch.randn(6, 32), torch.randn(6, 32), torch.randn(6, 32)
    with torch.no_grad():
        a = bridge([s1[None], s2[None], s3[None]])[-1]
        b = bridge([torch.randn(6, 32)[None], s2[None], s3[None]])[-1]
        c = bridge([s1[None], s2[None], s3[None]])[-1]
    assert not torch.allclose(a, b, atol=1e-4)
    torch.testing.assert_close(a, c)   # deterministic


def test_retrieval_cache_is_bounded(bridge):
    state = MemoryState(bridge)
    with torch.no_grad():
        for _ in range(10):
            state.add_scene(torch.randn(3, 32))
    assert len(state.cache) == 3 and state.scenes == 10


def test_gradients_reach_every_scene_and_parameter():
    torch.manual_seed(2)
    bridge = MemoryBridge(16, MemoryConfig(tokens=2, layers=2, heads=2))
    scenes = [torch.randn(1, 4, 16, requires_grad=True) for _ in range(3)]
    loss = bridge(scenes)[-1].pow(2).sum()
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scenes)
    assert bridge.initial.grad is not None and bridge.initial.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bridge.retriever.parameters())


def test_bad_config_and_shapes():
    with pytest.raises(ConfigError, match="memory.tokens"):
        MemoryConfig(tokens=-1)
    with pytest.raises(ConfigError, match="at least 1 memory token"):
        MemoryBridge(16, MemoryConfig(tokens=0))
    with pytest.raises(ConfigError, match="must divide the vision width"):
        MemoryBridge(30, MemoryConfig(tokens=2, heads=8))
    b = MemoryBridge(16, MemoryConfig(tokens=2, heads=2))
    with pytest.raises(ValueError, match=r"\(B, \*, 16\)"):
        b.fold(b.initial_memory(), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="built for 1 a frame"):
        b.fold(b.initial_memory(), torch.randn(1, 3, 2, 16))


def test_order_inside_a_scene_matters():
    """Age embeddings: the same frames in another order give another memory (the last state counts)."""
    torch.manual_seed(3)
    b = MemoryBridge(16, MemoryConfig(tokens=2, heads=2), slots=3)
    with torch.no_grad():
        b.age.normal_()
        b.slot.normal_()
        frames = torch.randn(1, 4, 3, 16)
        a = b.fold(b.initial_memory(), frames)
        r = b.fold(b.initial_memory(), frames.flip(1))
    assert not torch.allclose(a, r, atol=1e-4)
