"""A fast inference copy of the frozen vision tower, for the training stages after the vision stage.

From stage 2 on, mmlc-tiny's tower is frozen and in eval mode, and in the memory stages it is most of
a training step (a step folds 1,000-2,400 frames: 2.6 s of a 5.9 s step on this CPU). Its forward is
then a fixed function, so it can be rewritten without changing what it computes:

- BatchNorm in eval mode is an affine map per channel, folded into the convolution before it
  (``w' = w * g / sqrt(v + eps)``, ``b' = b + (beta - m * g / sqrt(v + eps))``; Ioffe and Szegedy 2015,
  the folding every inference runtime does; :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`);
- the weights are cast once to the stage's tower dtype (bfloat16: what autocast did per call);
- the result is compiled with ``torch.compile`` (dynamic batch size), which fuses each convolution with
  the ReLU and residual add after it; where compiling fails (no C++ compiler) or its output differs
  from the eager copy's, the eager copy is used and the reason logged.

Measured on 1,024 ShapeWorld frames (6 x 128 x 128, 2 cores): the tower under bfloat16 autocast 1.23 s,
folded 0.93 s, folded and compiled 0.45 s (2.7x); features equal to the autocast tower's within bfloat16
rounding (``tests/test_train_speed.py``). The model itself is untouched: checkpoints save its own tower.
"""

from __future__ import annotations

import copy

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(tower: torch.nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d into the Conv2d before it, in place, for towers built of
    blocks holding ``convolution`` + ``normalization`` (transformers' ResNet, RegNet, ...). Returns
    how many were folded (0 for towers without such blocks, e.g. ViTs: nothing to do)."""
    n = 0
    for module in tower.modules():
        conv, norm = getattr(module, "convolution", None), getattr(module, "normalization", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d) and norm.track_running_stats:
            module.convolution = fuse_conv_bn_eval(conv, norm)
            module.normalization = torch.nn.Identity()
            n += 1
    return n


class FrozenTower(torch.nn.Module):
    """``FrozenTower(model.vision, torch.bfloat16)(pixel_values=px)``: the tower's output (its
    ``last_hidden_state`` / ``pooler_output``) in ``dtype``, from a folded, cast (and, with
    ``compile``, compiled) copy; ``model.vision`` itself is not changed. Build it after the tower's
    last update: it does not follow later changes of the tower's weights."""

    def __init__(self, tower: torch.nn.Module, dtype: torch.dtype = torch.float32, compile: bool = True, log=print):
        super().__init__()
        eager = copy.deepcopy(tower).eval()
        self.folded = fold_batchnorm(eager)
        for p in eager.parameters():
            p.requires_grad_(False)
        self.eager = eager.to(dtype)
        self.dtype = dtype
        self.log = log
        self._compiled = None
        self._want_compile = compile and hasattr(torch, "compile")
        self.compiled_ok: bool | None = None    # None until the first call decides

    def _run(self, fn, pixels: torch.Tensor):
        with torch.no_grad(), torch.autocast(pixels.device.type, enabled=False):
            return fn(pixel_values=pixels.to(self.dtype).contiguous(memory_format=torch.channels_last))

    def forward(self, pixel_values: torch.Tensor):
        if self.compiled_ok is None and self._want_compile:
            self.compiled_ok = self._try_compile(pixel_values)
        if self.compiled_ok:
            return self._run(self._compiled, pixel_values)
        return self._run(self.eager, pixel_values)

    def _try_compile(self, pixels: torch.Tensor) -> bool:
        """Compile, and keep the compiled tower only if its first output matches the eager copy's."""
        try:
            self._compiled = torch.compile(self.eager, dynamic=True)
            got = self._run(self._compiled, pixels).last_hidden_state.float()
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
            self.log(f"frozen tower: torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                     "running it uncompiled (slower, same features)")
            self._compiled = None
            return False
        want = self._run(self.eager, pixels).last_hidden_state.float()
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2
        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
        if err > tol:
            self.log(f"frozen tower: the compiled tower's features differ from the eager ones by {err:.2g} "
                     f"(> {tol:g} of their largest value); running it uncompiled")
            self._compiled = None
            return False
        return True
