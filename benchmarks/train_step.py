"""One training step of chosen stages of recipe tiny, timed four ways on the same batches, interleaved:
padded or packed (mmlc.train.packing), the LM in float32 or bfloat16 (Recipe.lm_dtype). The shipped
mmlc-tiny stands in for the model of each stage (its structure is that of the last stages: the 4x4
grid, the reader, the copy head), so the absolute times are those of late stages; the ratios are what
this measures. The frozen tower is the folded copy (mmlc.train.frozen_tower), uncompiled.

    python benchmarks/train_step.py [STAGES] [BATCHES] [--json OUT]

STAGES: 1-based stage numbers of recipe tiny (default 4,13,14,19,25); BATCHES per stage (default 6).
Prints a JSON of seconds per step (forward + backward, data excluded) and the ratios to padded float32.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

import mmlc
from mmlc.train import recipes, trainer
from mmlc.train.frozen_tower import FrozenTower
from mmlc.train.look import parse_heads


def main(argv: list[str]) -> dict:
    out = argv[argv.index("--json") + 1] if "--json" in argv else None
    args = [a for i, a in enumerate(argv) if a != "--json" and (i == 0 or argv[i - 1] != "--json")]
    stages = [int(s) for s in (args[0] if args else "4,13,14,19,25").split(",")]
    n_batches = int(args[1]) if len(args) > 1 else 6
    torch.manual_seed(0)
    model = mmlc.load()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in list(model.connector.parameters()) + list(model.lm.parameters()):
        p.requires_grad_(True)
    trainer._train_mode(model, vision_stage=False)
    tower = FrozenTower(model.vision, torch.bfloat16, compile=False)
    ways = {"padded_fp32": (False, "float32"), "packed_fp32": (True, "float32"),
            "padded_bf16": (False, "bfloat16"), "packed_bf16": (True, "bfloat16")}
    report = {"stages": {}}
    for number in stages:
        stage = recipes.tiny().stages[number - 1]
        lm = model.lm.config
        heads = parse_heads(stage.look_heads, lm.num_hidden_layers, lm.num_attention_heads)
        seconds = {w: 0.0 for w in ways}
        real = padded = 0
        for b in range(n_batches + 1):   # the first batch warms up, untimed
            rng = np.random.default_rng([0, number, b])
            batch = trainer.collate(model, trainer.draw_batch(model, stage, rng), look_kinds={k for k, _, _ in heads},
                                    stream_hops=stage.stream_hops)
            if b:
                real += int(batch["attention_mask"].sum())
                padded += batch["attention_mask"].numel()
            for way, (pack, dtype) in ways.items():
                t = time.perf_counter()
                parts, _ = trainer.lm_step(model, batch, tower=tower, look_heads=heads, look_weight=stage.look_weight,
                                           read_weight=stage.read_weight, lm_dtype=dtype, pack=pack)
                parts["loss"].backward()
                if b:
                    seconds[way] += time.perf_counter() - t
                model.zero_grad(set_to_none=True)
        per_step = {w: round(s / n_batches, 4) for w, s in seconds.items()}
        report["stages"][f"{number}-{stage.name}"] = {
            "s_per_step": per_step, "real_token_share": round(real / padded, 3),
            "ratio_to_padded_fp32": {w: round(per_step["padded_fp32"] / v, 2) for w, v in per_step.items()}}
        print(number, stage.name, json.dumps(report["stages"][f"{number}-{stage.name}"]), flush=True)
    total = {w: sum(r["s_per_step"][w] for r in report["stages"].values()) for w in ways}
    report["ratio_to_padded_fp32"] = {w: round(total["padded_fp32"] / v, 2) for w, v in total.items()}
    print(json.dumps(report["ratio_to_padded_fp32"]))
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
