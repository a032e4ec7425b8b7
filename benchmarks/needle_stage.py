"""The ``needle`` stage tried on top of mmlc-tiny (README, Memory and NIAVH; not in a recipe).

Appends one ``needle`` memory stage (``mmlc.train.examples.needle_example``: needle practice 40%, the
bridge trained again at 5x the LM's rate, the probe's needle heads weighted ``NEEDLE_WEIGHT``) to
recipe ``tiny`` and trains it from MODEL_DIR (a float32 model after stage 17, e.g. a ``mmlc train
--recipe tiny`` run's ``model/``) into OUT (resumable, like ``mmlc train``).

    python benchmarks/needle_stage.py MODEL_DIR OUT [STEPS] [NEEDLE_WEIGHT]

Measured (200 steps, weight 5, 18 minutes on 2 cores): the bridge's memory holds the needle's colour
at 0.63 (``needle_probe.py``; 0.53 before), teacher-forced needle answers 0.08 (0.00), NIAVH at an
answer prior ("a yellow diamond" in all of 30 short cells).
"""

from __future__ import annotations

import sys

from mmlc.train import recipes, trainer
from mmlc.train.recipes import Stage


def main(model_dir: str, out: str, steps: int = 200, needle_weight: float = 5.0) -> None:
    recipe = recipes.tiny()
    recipe.stages.append(Stage("needle", steps=steps, lr=2e-4, batch_size=8, max_batch_tokens=6144,
                               max_batch_frames=2400, warmup=20, eval_examples=16, new_lr_scale=5.0,
                               tower_dtype="bfloat16", look_heads=["name:0.1", "obj:1.0", "via:2.1", "3.2"],
                               look_weight=0.3, probe_needle_weight=needle_weight))
    trainer.Run(recipe, out, start_from=model_dir, start_stage=len(recipe.stages)).train()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], int(a[2]) if len(a) > 2 else 200, float(a[3]) if len(a) > 3 else 5.0)
