"""Is a shape's colour lost when it shares a grid cell with another object? State QA split by crowding.

Reads a report of ``mmlc eval narration --data shapeworld:N --json REPORT`` (the generated 120 s, 2 fps
episodes, regenerated here from their ids, so every object's position and extent at the question's
frame is known), and for each "what colour is
the X?" / "how big is the X?" question says whether X's extent touches a cell of the ``GRID`` x
``GRID`` pooling grid that another object also touches. A frame token of mmlc-tiny is the average of
one quadrant (GRID 2) of the tower's map, so two objects in one quadrant are averaged together.

    python benchmarks/grid_binding.py REPORT.json [GRID]

Measured on 20 held-out episodes (README, Training, stage 12): colour right 13-14 of 16 when the shape
is alone in its quadrants, 3-5 of 11 when it shares one; size 3-4 of 10 either way.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from mmlc.data import shapeworld as sw


def cells(obj: dict, frame_size: int, grid: int) -> set[tuple[int, int]]:
    """The grid cells the object's extent (a circle around its centre) touches."""
    r, step = sw._extent(obj["size"], frame_size), frame_size / grid
    xs = range(int(max(obj["x"] - r, 0) // step), int(min(obj["x"] + r, frame_size - 1) // step) + 1)
    ys = range(int(max(obj["y"] - r, 0) // step), int(min(obj["y"] + r, frame_size - 1) // step) + 1)
    return {(x, y) for x in xs for y in ys}


def crowded(state: dict, shape: str, frame_size: int, grid: int) -> bool | None:
    """Whether the (only) object of ``shape`` shares a cell with another; None if not exactly one."""
    mine = [o for o in state["objects"] if o["shape"] == shape]
    if len(mine) != 1:
        return None
    own = cells(mine[0], frame_size, grid)
    return any(cells(o, frame_size, grid) & own for o in state["objects"] if o is not mine[0])


def main(report: str, grid: int = 2) -> dict:
    data = json.load(open(report))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for episode in data["episodes"]:
        seed = int(episode["id"].lstrip("sw"))
        cfg = sw.WorldConfig(duration=120.0, fps=2.0)   # as shapeworld:N generates them
        states = sw.generate_episode(seed, cfg).states
        for a in episode["answers"]:
            q = a["question"]
            if not (q.startswith("what colour is the ") or q.startswith("how big is the ")) or " room" in q:
                continue
            shape = q.rstrip("?").split(" the ", 1)[1]
            frame = min(max(int(round(a["t"] * cfg.fps)) - 1, 0), len(states) - 1)
            c = crowded(states[frame], shape, cfg.size, grid)
            if c is None:
                continue
            key = f"{'colour' if 'colour' in q else 'size'} / {'shares a cell' if c else 'alone'}"
            counts[key][0] += a["prediction"] == a["answer"]
            counts[key][1] += 1
    out = {k: {"right": r, "n": n, "accuracy": round(r / n, 3)} for k, (r, n) in sorted(counts.items())}
    print(json.dumps({"grid": grid, "report": report, "by_crowding": out}, indent=2))
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/grid_binding.py REPORT.json [GRID]  (REPORT from mmlc eval narration "
                 "--data shapeworld:N --json REPORT.json)")
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
