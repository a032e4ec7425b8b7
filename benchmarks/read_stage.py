"""Stage 25 of the README (Training): tiny-words plus a 4th words pass with a class-restricted read head.

    python benchmarks/read_stage.py RUN/stages/21-words OUT [HEADS]
"""
import dataclasses
import sys
from pathlib import Path

from mmlc.train.recipes import tiny_words
from mmlc.train.trainer import Run

heads = sys.argv[3].split(",") if len(sys.argv) > 3 else ["name:0.1", "obj:1.0", "via:2.1", "3.2", "read:3.2"]
rec = tiny_words()
rec.name = "tiny-words-read"
rec.stages.append(dataclasses.replace(rec.stages[-1], look_heads=heads))   # the last words pass, plus the read
Run(rec, Path(sys.argv[2]), start_from=sys.argv[1], start_stage=len(rec.stages), keep_stages=True).train()
