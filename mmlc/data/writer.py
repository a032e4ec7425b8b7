"""Write ShapeWorld episodes to disk (video + JSON, or PNG images + JSON), resumably; read them back.

Layout of ``out_dir`` for item ``i`` (id ``sw{seed + i:08d}``, generated from seed ``seed + i``):

- ``kind="video"``: ``<id>.mp4`` (mp4v at the episode's fps) and ``<id>.json`` (the ground truth of
  :meth:`Episode.truth` plus ``"id"`` and ``"video"``),
- ``kind="multi-image"``: ``<id>/image1.png ...`` and ``<id>.json`` (:meth:`MultiImageSet.truth` plus
  ``"id"`` and ``"images"``, paths relative to ``out_dir``).

The JSON is written last, atomically, so an item is finished exactly when its JSON exists: a rerun
skips finished items and rewrites the others.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from mmlc.data.shapeworld import WorldConfig, generate_episode, generate_multi_image
from mmlc.errors import DataError, MmlcError

KINDS = ("video", "multi-image")


def item_id(seed: int) -> str:
    return f"sw{seed:08d}"


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")))
    os.replace(tmp, path)


def _write_video(path: Path, frames, fps: float, size: int) -> None:
    import cv2

    tmp = path.with_name(path.stem + ".tmp.mp4")  # OpenCV picks the container from the extension
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (size, size))
    if not writer.isOpened():
        raise DataError(f"{tmp}: OpenCV cannot open an mp4v video writer here; check that the folder is "
                        "writable and that opencv-python(-headless) has video support.")
    try:
        for _, frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # RGB -> BGR
    finally:
        writer.release()
    os.replace(tmp, path)


def _write_images(folder: Path, images: list[np.ndarray]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images, start=1):
        tmp = folder / f"image{k}.tmp.png"
        Image.fromarray(image).save(tmp)
        os.replace(tmp, folder / f"image{k}.png")


def write_shapeworld(out_dir, n: int, seed: int, *, kind: str = "video", duration: float = 120.0,
                     fps: float = 2.0, size: int = 64, needle: bool = False,
                     progress: bool = True) -> list[Path]:
    """Write ``n`` ShapeWorld items to ``out_dir`` and return the paths of their JSON files.

    Items whose JSON already exists are skipped (resume). Scenes last at least
    ``min(10 s, duration)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise MmlcError(f"n={n!r}: the number of items to write must be a positive integer; pass e.g. n=100.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MmlcError(f"seed={seed!r}: must be a non-negative integer; pass e.g. seed=0.")
    if kind not in KINDS:
        raise MmlcError(f"kind={kind!r}: unknown kind of ShapeWorld data; use one of {KINDS}.")
    config = WorldConfig(duration=duration, fps=fps, size=size, needle=needle,
                         min_scene_seconds=min(10.0, float(duration)))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MmlcError(f"out_dir={str(out)!r}: exists and is not a folder; pass a folder path.")
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    paths = []
    for i in tqdm(range(int(n)), desc=f"shapeworld {kind}", unit="item", disable=not progress, file=sys.stderr):
        ident = item_id(int(seed) + i)
        json_path = out / f"{ident}.json"
        paths.append(json_path)
        if json_path.exists():
            continue
        if kind == "video":
            episode = generate_episode(int(seed) + i, config)
            _write_video(out / f"{ident}.mp4", episode.frames(), config.fps, config.size)
            data = episode.truth() | {"id": ident, "video": f"{ident}.mp4"}
        else:
            images = generate_multi_image(int(seed) + i, config=config)
            _write_images(out / ident, images.images)
            names = [f"{ident}/image{k}.png" for k in range(1, len(images.images) + 1)]
            data = images.truth() | {"id": ident, "images": names}
        _write_json_atomic(json_path, data)
    return paths


_REQUIRED = {
    "seed": (int,),
    "fps": (int, float),
    "duration": (int, float),
    "size": (int,),
    "scenes": (list,),
    "narration": (list,),
    "qa": (list,),
}
_ITEM_FIELDS = {
    "scenes": {"start": (int, float), "end": (int, float), "background": (str,)},
    "narration": {"t": (int, float), "text": (str,)},
    "qa": {"t": (int, float), "question": (str,), "answer": (str,), "kind": (str,)},
}


def _type_ok(value, types: tuple) -> bool:
    return not isinstance(value, bool) and isinstance(value, types)


def read_episode_json(path) -> dict:
    """Read and check a video episode JSON written by :func:`write_shapeworld`; DataError names the
    file and the field that is missing or malformed."""
    path = Path(path)
    fix = "regenerate it with `mmlc data shapeworld` (or write_shapeworld)"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: episode JSON not found; check the path or {fix}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc}); {fix}.") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}; {fix}.")
    for field, types in _REQUIRED.items():
        if field not in data:
            raise DataError(f"{path}: missing field {field!r}; {fix}.")
        if not _type_ok(data[field], types):
            names = " or ".join(t.__name__ for t in types)
            raise DataError(f"{path}: field {field!r} must be {names}, got {type(data[field]).__name__}; {fix}.")
    for field in ("fps", "duration", "size"):
        if data[field] <= 0:
            raise DataError(f"{path}: field {field!r} must be positive, got {data[field]!r}; {fix}.")
    for field, item_fields in _ITEM_FIELDS.items():
        for j, item in enumerate(data[field]):
            if not isinstance(item, dict):
                raise DataError(f"{path}: {field}[{j}] must be an object, got {type(item).__name__}; {fix}.")
            for key, types in item_fields.items():
                if key not in item:
                    raise DataError(f"{path}: {field}[{j}] is missing field {key!r}; {fix}.")
                if not _type_ok(item[key], types):
                    names = " or ".join(t.__name__ for t in types)
                    raise DataError(f"{path}: field {field}[{j}].{key} must be {names}, "
                                    f"got {type(item[key]).__name__}; {fix}.")
    return data
