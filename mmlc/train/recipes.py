"""Training recipes by name: a model preset plus stages, each with its own steps and batch.

``tiny`` regenerates the shipped mmlc-tiny from scratch on a 2-core CPU (see the README for its wall
time). ``tiny-smoke`` is the same pipeline with a handful of steps, for tests and quick checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mmlc.errors import ConfigError


@dataclass
class Stage:
    """One stage: ``name`` is ``vision`` (tower + auxiliary heads) or an example builder's stage."""

    name: str
    steps: int
    lr: float
    batch_size: int = 16
    max_batch_tokens: int = 0   # > 0: cap tokens a batch (long stream crops make smaller batches)
    max_batch_frames: int = 0   # > 0: cap frames through the vision tower a batch (memory stages fold long streams)
    warmup: int = 50
    eval_examples: int = 32
    new_lr_scale: float = 1.0   # memory stage: lr multiplier of the freshly initialised bridge


@dataclass
class Recipe:
    name: str
    preset: str
    stages: list[Stage] = field(default_factory=list)
    tokenizer_vocab: int = 512
    tokenizer_episodes: int = 400
    seed: int = 0
    save_every: int = 100
    weight_decay: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


def tiny() -> Recipe:
    return Recipe(name="tiny", preset="tiny", stages=[
        Stage("vision", steps=2000, lr=2e-3, batch_size=64, warmup=100, eval_examples=256),
        Stage("align", steps=500, lr=1e-3, batch_size=32, warmup=50),
        Stage("change", steps=600, lr=1e-3, batch_size=32),
        Stage("stream", steps=800, lr=7e-4, batch_size=16, max_batch_tokens=5120, warmup=50, eval_examples=16),
        Stage("chat", steps=450, lr=5e-4, batch_size=16, max_batch_tokens=5120, warmup=30, eval_examples=32),
        Stage("polish", steps=500, lr=3e-4, batch_size=16, max_batch_tokens=5120, warmup=30, eval_examples=32),
        Stage("qa", steps=500, lr=2e-4, batch_size=16, max_batch_tokens=5120, warmup=30, eval_examples=32),
        Stage("memory", steps=450, lr=2e-4, batch_size=12, max_batch_tokens=6144, warmup=30, eval_examples=32,
              new_lr_scale=5.0),
        Stage("memalign", steps=300, lr=2e-4, batch_size=8, max_batch_tokens=6144, warmup=20, eval_examples=32,
              new_lr_scale=5.0),
        Stage("long", steps=200, lr=2e-4, batch_size=6, max_batch_tokens=6144, max_batch_frames=2400, warmup=10,
              eval_examples=16, new_lr_scale=5.0),
        Stage("refresh", steps=150, lr=1.5e-4, batch_size=16, max_batch_tokens=5120, max_batch_frames=1600, warmup=10,
              eval_examples=32),
    ])


def tiny_smoke() -> Recipe:
    return Recipe(name="tiny-smoke", preset="tiny-test", tokenizer_episodes=20, save_every=2, stages=[
        Stage("vision", steps=3, lr=1e-3, batch_size=8, warmup=1, eval_examples=16),
        Stage("align", steps=3, lr=1e-3, batch_size=4, warmup=1, eval_examples=4),
        Stage("change", steps=2, lr=1e-3, batch_size=4, warmup=1, eval_examples=4),
        Stage("stream", steps=2, lr=1e-3, batch_size=2, max_batch_tokens=2048, warmup=1, eval_examples=2),
        Stage("chat", steps=2, lr=1e-3, batch_size=2, max_batch_tokens=2048, warmup=1, eval_examples=2),
        Stage("memory", steps=2, lr=1e-3, batch_size=2, max_batch_tokens=4096, warmup=1, eval_examples=2),
        Stage("memalign", steps=2, lr=1e-3, batch_size=2, max_batch_tokens=4096, warmup=1, eval_examples=2),
    ])


RECIPES = {"tiny": tiny, "tiny-smoke": tiny_smoke}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe '{name}': choose one of {sorted(RECIPES)}")
    return RECIPES[name]()
