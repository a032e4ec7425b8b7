"""Shared fixtures: tiny random models (hidden 32, 2 layers, 16 px frames) that run in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
import mmlc
from mmlc.data.tokenizer import train_tokenizer
from mmlc.models.loading import build
from mmlc.models.presets import preset

CORPUS = ["the red circle moves left.", "a teal room with a blue star.", "what colour is the circle?", "red.",
          "how many objects are there?", "two.", "the scene changes to a navy room."] * 4


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS, 300, preset("tiny-test").template)


@pytest.fixture()
def tiny_model(tokenizer):
    """A fresh tiny random model (seeded) with a small trained tokenizer."""
    return build(preset("tiny-test"), tokenizer, seed=0)


@pytest.fixture()
def frames():
    """Eight random 20x24 RGB frames (not the model's size: exercises resizing)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(8)]


__all__ = ["mmlc"]
