"""The MMDU format: read the official ``benchmark.json``; write ShapeWorld multi-image sets in it.

MMDU (Liu et al., 2024) stores its dialogues as one JSON file, a list of items (a dict of items is
accepted too; its keys stand in for a missing ``id``)::

    {"id": "...",
     "image": ["dir/a.jpg", "dir/b.jpg", ...],          # relative to the image folder
     "conversations": [{"from": "user", "value": "Image1: <ImageHere>\\nImage2: <ImageHere>\\n..."},
                       {"from": "assistant", "value": "reference answer"},
                       {"from": "user", "value": "follow-up question"}, ...]}

Turns alternate ``user`` / ``assistant``, starting with a user turn and ending with an assistant turn
(the reference answer of the last question). Each ``<ImageHere>`` in a user turn takes the next image
of ``image``, in order, so the placeholders of the whole dialogue must number exactly ``len(image)``.

:func:`read_mmdu` checks the file up front. A broken file (missing, not JSON, neither a list nor a
dict) raises :class:`~mmlc.errors.DataError`. A broken item (a missing or mistyped field, roles that
do not alternate, a placeholder/image count that differs, an image file that does not exist) is a
:class:`DataError` naming the file, the item id and the field: raised with ``strict=True``, else
collected in :attr:`MmduData.invalid` so that a run can skip the item and go on. An image that
exists but cannot be decoded shows at generation time (the eval records that dialogue as failed).

Extra fields are kept and ignored by other readers: ShapeWorld sets put the question kind
(``single`` / ``compare`` / ``followup``) on each assistant turn as ``"kind"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmlc.errors import DataError, MmlcError

PLACEHOLDER = "<ImageHere>"
ROLES = ("user", "assistant")
BENCHMARK_FILE = "benchmark.json"
IMAGE_FOLDER = "images"
_META_FILE = "shapeworld_mmdu.json"


@dataclass
class MmduTurn:
    """One question and its reference answer; ``images`` are the paths its placeholders take."""

    question: str
    answer: str
    images: list[Path] = field(default_factory=list)
    kind: str | None = None


@dataclass
class MmduItem:
    """One dialogue: its id, all its images (resolved paths, in order) and its turns."""

    id: str
    images: list[Path]
    turns: list[MmduTurn]
    index: int = 0          # position in the file
    raw_images: list[str] = field(default_factory=list)  # the paths as the file writes them

    @property
    def file_stem(self) -> str:
        """A file name for this item's per-dialogue outputs (the id, made safe for any file system)."""
        return safe_stem(self.id)


@dataclass
class MmduData:
    """A checked benchmark file: the usable items, and the broken ones (id, DataError)."""

    path: Path
    image_dir: Path
    items: list[MmduItem]
    invalid: list[tuple[str, DataError]] = field(default_factory=list)
    n_total: int = 0

    def __len__(self) -> int:
        return len(self.items)


def safe_stem(ident: str) -> str:
    """``ident`` if it is a plain file name, else a cleaned version with a short hash (no clashes)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", ident)[:100]
    if clean == ident and clean not in ("", ".", ".."):
        return clean
    return f"{clean.strip('.') or 'item'}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------- reading
def _load_json(path: Path):
    fix = "pass the MMDU benchmark.json (or a file written by `mmlc data shapeworld --format mmdu`)"
    if not path.exists():
        raise DataError(f"{path}: MMDU data file not found; {fix}.")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a JSON file; {fix} (e.g. {path / BENCHMARK_FILE}).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as JSON ({exc}); {fix}.") from None


def _raw_items(path: Path, data) -> list[tuple[str | None, object]]:
    """(fallback id, item) pairs: list items have no fallback, dict items fall back on their key."""
    if isinstance(data, list):
        return [(None, item) for item in data]
    if isinstance(data, dict):
        if "conversations" in data and "image" in data:
            raise DataError(f"{path}: holds a single item at the top level; MMDU files hold a list of items "
                            "(or a dict of them): wrap it in [...].")
        return [(str(key), item) for key, item in data.items()]
    raise DataError(f"{path}: expected a list (or a dict) of MMDU items at the top level, got "
                    f"{type(data).__name__}.")


def _parse_item(path: Path, image_dir: Path, index: int, fallback_id: str | None, item,
                check_images: bool) -> MmduItem:
    where = f"{path}: item {index}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: must be an object with 'id', 'image' and 'conversations', got "
                        f"{type(item).__name__}.")
    ident = item.get("id", fallback_id)
    if ident is None:
        raise DataError(f"{where}: missing field 'id'; give every item a unique id.")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or str(ident) == "":
        raise DataError(f"{where}: field 'id' must be a non-empty string or integer, got {ident!r}.")
    ident = str(ident)
    where = f"{path}: item {ident!r}"
    for name in ("image", "conversations"):
        if name not in item:
            raise DataError(f"{where}: missing field {name!r}.")
    images = item["image"]
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise DataError(f"{where}: field 'image' must be a list of image paths (strings), got {item['image']!r:.80}.")
    conv = item["conversations"]
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field 'conversations' must be a non-empty list of turns.")
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: conversations[{j}] must be an object with 'from' and 'value', "
                            f"got {type(turn).__name__}.")
        for name in ("from", "value"):
            if name not in turn:
                raise DataError(f"{where}: conversations[{j}] is missing field {name!r}.")
        if not isinstance(turn["value"], str):
            raise DataError(f"{where}: conversations[{j}].value must be a string, got {type(turn['value']).__name__}.")
        expected = ROLES[j % 2]
        if turn["from"] != expected:
            raise DataError(f"{where}: conversations[{j}].from is {turn['from']!r} but turns must alternate "
                            f"'user', 'assistant', 'user', ... starting with 'user': expected {expected!r}.")
    if len(conv) % 2:
        raise DataError(f"{where}: field 'conversations' ends with a user turn (conversations[{len(conv) - 1}]) "
                        "that has no reference answer: every user turn needs an assistant turn after it.")
    n_markers = [conv[j]["value"].count(PLACEHOLDER) for j in range(0, len(conv), 2)]
    if sum(n_markers) != len(images):
        more = "more" if sum(n_markers) > len(images) else "fewer"
        raise DataError(f"{where}: the user turns hold {sum(n_markers)} {PLACEHOLDER} placeholders, {more} than "
                        f"the {len(images)} images of field 'image': each placeholder takes the next image, so "
                        "the counts must be equal.")
    resolved = [Path(p) if os.path.isabs(p) else image_dir / p for p in images]
    if check_images:
        for k, p in enumerate(resolved):
            if not p.is_file():
                raise DataError(f"{where}: field 'image'[{k}]: image file {str(p)!r} does not exist; check "
                                "--image-dir (default: the data file's folder).")
    turns, used = [], 0
    for t, j in enumerate(range(0, len(conv), 2)):
        kind = conv[j + 1].get("kind")
        turns.append(MmduTurn(conv[j]["value"], conv[j + 1]["value"], resolved[used:used + n_markers[t]],
                              kind if isinstance(kind, str) else None))
        used += n_markers[t]
    return MmduItem(ident, resolved, turns, index, list(images))


def read_mmdu(path, image_dir=None, *, strict: bool = False, check_images: bool = True,
              limit: int | None = None) -> MmduData:
    """Read and check an MMDU-format file.

    ``image_dir`` (default: the file's folder) is where relative image paths start. ``limit`` keeps
    the first N items of the file. With ``strict``, the first broken item raises; otherwise broken
    items go to ``invalid`` (a :class:`DataError` each) and the others are returned.
    """
    path = Path(path)
    image_dir = path.parent if image_dir is None else Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"image folder {str(image_dir)!r} does not exist; pass --image-dir, the folder the "
                        f"'image' paths of {path} start from.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise MmlcError(f"limit={limit!r}: must be a positive integer (the first N dialogues) or None.")
    raw = _raw_items(path, _load_json(path))
    if not raw:
        raise DataError(f"{path}: holds no items.")
    if limit is not None:
        raw = raw[:limit]
    items, invalid, seen, stems = [], [], set(), {}
    for index, (fallback, item) in enumerate(raw):
        try:
            parsed = _parse_item(path, image_dir, index, fallback, item, check_images)
            if parsed.id in seen:
                raise DataError(f"{path}: item {parsed.id!r} (item {index}): field 'id' repeats an earlier "
                                "item's id; ids must be unique.")
            if parsed.file_stem in stems:
                raise DataError(f"{path}: item {parsed.id!r} (item {index}): field 'id' maps to the same file "
                                f"name as item {stems[parsed.file_stem]!r}; make the ids differ in letters or "
                                "digits.")
        except DataError as err:
            if strict:
                raise
            ident = item.get("id", fallback) if isinstance(item, dict) else fallback
            invalid.append((str(ident) if ident is not None else f"#{index}", err))
            continue
        seen.add(parsed.id)
        stems[parsed.file_stem] = parsed.id
        items.append(parsed)
    return MmduData(path, image_dir, items, invalid, len(raw))


# ---------------------------------------------------------------------- ShapeWorld in the MMDU format
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def shapeworld_item(seed: int, size: int = 64, image_prefix: str = IMAGE_FOLDER):
    """One ShapeWorld multi-image set as an MMDU item (dict) and its images ({relative path: array})."""
    from mmlc.data.shapeworld import WorldConfig, generate_multi_image
    from mmlc.data.writer import item_id

    ident = item_id(seed)
    mis = generate_multi_image(seed, config=WorldConfig(size=size))
    order = [k for turn in mis.turns for k in turn["images"]]   # images in the order they are first shown
    names = {k: f"{image_prefix}/{ident}_{k + 1}.png" for k in order}
    conversations = []
    for turn in mis.turns:
        shown = "".join(f"Image{k + 1}: {PLACEHOLDER}\n" for k in turn["images"])
        conversations.append({"from": "user", "value": shown + turn["question"]})
        conversations.append({"from": "assistant", "value": turn["answer"], "kind": turn["kind"]})
    item = {"id": ident, "image": [names[k] for k in order], "conversations": conversations,
            "source": "shapeworld", "seed": int(seed)}
    return item, {names[k]: mis.images[k] for k in order}


def write_shapeworld_mmdu(out_dir, n: int, seed: int, size: int = 64, progress: bool = True) -> Path:
    """Write ``n`` ShapeWorld multi-image dialogues (seeds ``seed .. seed+n-1``) in the MMDU format.

    ``out_dir/benchmark.json`` (a list of items, ``kind`` on each assistant turn) and
    ``out_dir/images/<id>_<k>.png``. Deterministic per seed; resumable: images already written are
    kept (each is written atomically), and ``benchmark.json`` is written last, atomically. Returns the
    path of ``benchmark.json``.
    """
    from PIL import Image
    from tqdm import tqdm

    from mmlc.data.shapeworld import WorldConfig

    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise MmlcError(f"n={n!r}: the number of dialogues to write must be a positive integer; pass e.g. n=100.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MmlcError(f"seed={seed!r}: must be a non-negative integer; pass e.g. seed=0.")
    WorldConfig(size=size)   # checks size (ConfigError naming the field)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MmlcError(f"out_dir={str(out)!r}: exists and is not a folder; pass a folder path.")
    (out / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    meta_path = out / _META_FILE
    meta = {"format": "mmdu", "generator": "shapeworld multi-image", "size": int(size)}
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != meta:
            raise MmlcError(f"out_dir={str(out)!r}: holds a ShapeWorld MMDU set written with other settings "
                            f"({old}); its images would not match. Use another folder, or delete this one.")
    else:
        _atomic_write(meta_path, json.dumps(meta))
    items = []
    for i in tqdm(range(n), desc="shapeworld mmdu", unit="dialogue", disable=not progress, file=sys.stderr):
        item, images = shapeworld_item(seed + i, size)
        for rel, array in images.items():
            target = out / rel
            if not target.is_file():
                tmp = target.with_name(target.stem + ".tmp.png")
                Image.fromarray(array).save(tmp)
                os.replace(tmp, target)
        items.append(item)
    bench = out / BENCHMARK_FILE
    _atomic_write(bench, json.dumps(items, indent=1, ensure_ascii=False) + "\n")
    return bench
