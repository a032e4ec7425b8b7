"""ShapeWorld: a procedural world of coloured shapes in rooms, with exact ground truth.

The embedded default model (mmlc-tiny) is trained on this world, so it is built to be learnable from
64x64 frames: saturated object colours on muted rooms, four distinct shapes, and events that show as a
change between one frame and the next. Everything comes from a seed; the generator uses only numpy
and Pillow.

A video episode is a sequence of scenes. A scene is a room (the background colour) holding 1 to
``max_objects`` objects, each with a different shape and colour. Events happen at frame indices: an
event at frame ``i`` is visible as a change between frame ``i - 1`` and frame ``i``:

- ``start`` (frame 0) and ``cut`` (a new scene: new room, new objects),
- ``appear`` / ``leave`` (an object is added / removed),
- ``move`` (the object is displaced by ``speed`` px at frame ``i`` and at every frame until it stops),
- ``stop`` (the object is where it was at ``i - 1``; objects stop by themselves, or at the border,
  or before they would touch another object; every move ends with a stop inside its scene),
- ``colour`` (an object takes a new colour).

Two events (cuts included) are never in the same or in adjacent frames: they are at least
``event_gap_frames`` apart. Each event has exactly one narration sentence, at ``t = i / fps``.
Questions (``qa``) are asked at frames without events and answered from the state at that frame.
A needle (a cross or diamond, never narrated) can be shown briefly at a chosen depth of the video.

Narration uses "a" / "an" as English wants ("an orange circle appears.", "an olive room with ...").

``generate_multi_image`` makes still images (each a room with objects) and a short dialogue about them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from mmlc.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
NEEDLE_SHAPES: tuple[str, ...] = ("cross", "diamond")

# Saturated object colours; every one is far (L2 > 100) from every room colour below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 200, 60),
    "blue": (40, 90, 255),
    "yellow": (250, 225, 30),
    "purple": (170, 50, 230),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
}

# Muted / dark room (background) colours.
ROOMS: dict[str, tuple[int, int, int]] = {
    "gray": (100, 100, 100),
    "brown": (115, 60, 25),
    "navy": (20, 30, 95),
    "olive": (80, 100, 20),
    "teal": (15, 95, 95),
    "black": (10, 10, 10),
}

# Object radius as a fraction of the frame size.
SIZES: dict[str, float] = {"small": 0.09, "large": 0.14}

# Unit steps in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)

# Generator tuning: chance per second of a new event where one is allowed (about 11 events a minute
# with cuts and stops at 2 fps), the mix of event kinds.
_EVENT_RATE = 0.14
_EVENT_WEIGHTS = {"move": 6.5, "colour": 3.0, "appear": 2.5, "leave": 2.5}
_MOVE_FRAMES = (2, 8)  # intended length of a move in frames (shortened by the border or other objects)
_QA_PER_2MIN = (6, 8)
_MEMORY_QA_PROB = 0.3
_MOVING_QA_FRAME_PROB = 0.3  # share of questions asked while something moves (else "nothing." dominates)
_MARGIN_PX = 2.0  # free space kept between objects


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of a ShapeWorld episode; validated on construction (errors name the field).

    ``speed`` is in px per frame; ``None`` means ``0.06 * size``. ``needle_depth`` is the fraction
    of the duration where the needle starts (``None``: random when ``needle`` is on).
    """

    size: int = 64
    fps: float = 2.0
    duration: float = 120.0
    noise: int = 6
    min_scenes: int = 1
    max_scenes: int = 4
    min_scene_seconds: float = 10.0
    max_objects: int = 3
    event_gap_frames: int = 2
    speed: float | None = None
    needle: bool = False
    needle_depth: float | None = None
    needle_seconds: float = 1.5
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    rooms: tuple[str, ...] = tuple(ROOMS)
    needle_shapes: tuple[str, ...] = NEEDLE_SHAPES

    def __post_init__(self) -> None:
        _check_int(self, "size", 16, 1024)
        _check_number(self, "fps", 0.0, 1000.0, low_open=True)
        _check_number(self, "duration", 0.0, 1e6, low_open=True)
        _check_int(self, "noise", 0, 127)
        _check_int(self, "min_scenes", 1, 10_000)
        _check_int(self, "max_scenes", self.min_scenes, 10_000)
        _check_number(self, "min_scene_seconds", 0.0, 1e6, low_open=True)
        _check_int(self, "event_gap_frames", 1, 1000)
        if self.speed is not None:
            _check_number(self, "speed", 0.0, self.size / 4, low_open=True)
        if not isinstance(self.needle, bool):
            _fail("needle", self.needle, "must be True or False")
        if self.needle_depth is not None:
            _check_number(self, "needle_depth", 0.0, 1.0)
        _check_number(self, "needle_seconds", 0.0, 1e6, low_open=True)
        for name, vocab in (("shapes", SHAPES), ("colours", COLOURS), ("rooms", ROOMS),
                            ("needle_shapes", NEEDLE_SHAPES)):
            _check_vocab(self, name, tuple(vocab))
        _check_int(self, "max_objects", 1, min(len(self.shapes), len(self.colours), 10))
        if self.n_frames < 2:
            _fail("duration", self.duration, f"gives {self.n_frames} frame(s) at fps={self.fps}; "
                  "use duration * fps >= 2")
        if self.min_scenes * self.scene_frames > self.n_frames:
            _fail("min_scenes", self.min_scenes,
                  f"{self.min_scenes} scenes of at least min_scene_seconds={self.min_scene_seconds} s "
                  f"do not fit in duration={self.duration} s; lower min_scenes or min_scene_seconds")
        if self.max_scenes > 1 and self.min_scenes < self.max_scenes and len(self.rooms) < 2:
            _fail("rooms", self.rooms, "needs at least 2 rooms when there can be several scenes "
                  "(each scene's room differs from the previous one)")
        if self.min_scenes > 1 and len(self.rooms) < 2:
            _fail("rooms", self.rooms, "needs at least 2 rooms when min_scenes > 1")
        if self.needle and 2 * self.event_gap_frames + self.needle_frames > self.scene_frames:
            _fail("needle_seconds", self.needle_seconds,
                  f"a needle of {self.needle_frames} frames plus {self.event_gap_frames} free frames "
                  f"on each side does not fit in a scene of {self.scene_frames} frames; "
                  "lower needle_seconds or raise min_scene_seconds")

    @property
    def n_frames(self) -> int:
        return round(self.duration * self.fps)

    @property
    def scene_frames(self) -> int:
        """The shortest scene, in frames."""
        return max(1, math.ceil(self.min_scene_seconds * self.fps - 1e-9))

    @property
    def needle_frames(self) -> int:
        return max(1, round(self.needle_seconds * self.fps))

    @property
    def speed_px(self) -> float:
        return self.size * 0.06 if self.speed is None else float(self.speed)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("shapes", "colours", "rooms", "needle_shapes"):
            d[key] = list(d[key])
        return d


def _fail(name: str, value, why: str) -> None:
    raise ConfigError(f"WorldConfig.{name}={value!r}: {why}.")


def _check_int(cfg: WorldConfig, name: str, low: int, high: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        _fail(name, value, f"must be an integer in [{low}, {high}]")
    if not low <= value <= high:
        _fail(name, value, f"must be in [{low}, {high}]")


def _check_number(cfg: WorldConfig, name: str, low: float, high: float, low_open: bool = False) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        _fail(name, value, "must be a number")
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        _fail(name, value, f"must be in {bracket}{low}, {high}]")


def _check_vocab(cfg: WorldConfig, name: str, known: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        _fail(name, value, f"must be a tuple of names from {known}")
    value = tuple(value)
    unknown = [v for v in value if v not in known]
    if unknown:
        _fail(name, value, f"has unknown name(s) {unknown}; choose from {known}")
    if not value or len(set(value)) != len(value):
        _fail(name, value, "must be non-empty without repeats")
    object.__setattr__(cfg, name, value)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def object_radius(size_name: str, frame_size: int) -> int:
    """Radius in px of an object of size ``"small"`` / ``"large"`` in a ``frame_size`` frame."""
    return max(2, round(SIZES[size_name] * frame_size))


def _extent(size_name: str, frame_size: int) -> float:
    """Radius of a circle around the centre that holds any shape of this size (for placement)."""
    return 1.25 * object_radius(size_name, frame_size) + 0.5


def object_box(obj: dict, frame_size: int) -> tuple[float, float, float, float]:
    """The square (x0, y0, x1, y1), in fractions of the frame, that holds the object ``obj``."""
    ext = _extent(obj["size"], frame_size)
    return tuple(min(max(v / frame_size, 0.0), 1.0)
                 for v in (obj["x"] - ext, obj["y"] - ext, obj["x"] + ext, obj["y"] + ext))


def _colour_rgb(name: str) -> tuple[int, int, int]:
    return COLOURS[name]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: int, fill) -> None:
    cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = round(0.85 * r)
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        big = 1.2 * r
        half = big * math.sqrt(3) / 2
        pts = [(cx, cy - big), (cx + half, cy + big / 2), (cx - half, cy + big / 2)]
        draw.polygon([(round(px), round(py)) for px, py in pts], fill=fill)
    elif shape == "star":
        outer, inner = 1.25 * r, 0.625 * r
        pts = []
        for k in range(10):
            rad = outer if k % 2 == 0 else inner
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((round(cx + rad * math.cos(ang)), round(cy + rad * math.sin(ang))))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        arm, w = round(1.15 * r), max(1, round(0.35 * r))
        draw.rectangle((cx - arm, cy - w, cx + arm, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - arm, cx + w, cy + arm), fill=fill)
    elif shape == "diamond":
        d = round(1.2 * r)
        draw.polygon([(cx, cy - d), (cx + d, cy), (cx, cy + d), (cx - d, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES + NEEDLE_SHAPES}")


def render_state(state: dict, size: int, rng: np.random.Generator | None = None, noise: int = 0) -> np.ndarray:
    """Draw one state as a (size, size, 3) uint8 RGB image.

    The room colour fills the frame, objects are drawn in list order, the needle (if any) last, then
    uniform integer noise in [-noise, noise] is added to every pixel and channel (when ``rng`` is given).
    """
    img = Image.new("RGB", (size, size), ROOMS[state["room"]])
    draw = ImageDraw.Draw(img)
    for obj in state["objects"]:
        _draw_shape(draw, obj["shape"], obj["x"], obj["y"], object_radius(obj["size"], size),
                    _colour_rgb(obj["colour"]))
    needle = state.get("needle")
    if needle:
        _draw_shape(draw, needle["shape"], needle["x"], needle["y"], object_radius(needle["size"], size),
                    _colour_rgb(needle["colour"]))
    arr = np.asarray(img)
    if rng is None or noise <= 0:
        return arr.copy()
    noisy = arr.astype(np.int16) + rng.integers(-noise, noise + 1, size=arr.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Language
# --------------------------------------------------------------------------------------------------


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


NEEDLE_QUESTION = "what rare object appeared?"


def needle_answer(needle: dict) -> str:
    """The answer to :data:`NEEDLE_QUESTION`: "a red cross."."""
    return f"{article(needle['colour'])} {needle['colour']} {needle['shape']}."


def _a_obj(obj: dict) -> str:
    return f"{article(obj['colour'])} {obj['colour']} {obj['shape']}"


def _the_obj(obj: dict) -> str:
    return f"the {obj['colour']} {obj['shape']}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _left_to_right(objects: list[dict]) -> list[dict]:
    return sorted(objects, key=lambda o: (o["x"], o["y"]))


def describe_state(state: dict) -> str:
    """The sentence for a whole state: "a gray room with a red circle and a blue star."

    Objects are listed left to right; an empty room is "an empty gray room.".
    """
    room = state["room"]
    objects = _left_to_right(state["objects"])
    if not objects:
        return f"an empty {room} room."
    return f"{article(room)} {room} room with {_join([_a_obj(o) for o in objects])}."


def narrate(event: dict, state: dict) -> str:
    """The narration sentence of one event; ``state`` is the state at the event's frame."""
    kind = event["type"]
    if kind == "start":
        return describe_state(state)
    if kind == "cut":
        return "the scene changes to " + describe_state(state)
    if kind == "appear":
        return f"{_a_obj(event)} appears."
    if kind == "leave":
        return f"{_the_obj(event)} leaves."
    if kind == "move":
        return f"{_the_obj(event)} moves {event['dir']}."
    if kind == "stop":
        return f"{_the_obj(event)} stops."
    if kind == "colour":
        return f"the {event['old']} {event['shape']} turns {event['new']}."
    raise ValueError(f"unknown event type {kind!r}")


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


# --------------------------------------------------------------------------------------------------
# The world simulation
# --------------------------------------------------------------------------------------------------


class _Obj:
    """An object during generation. While moving, (x, y) is where it was before the move."""

    __slots__ = ("shape", "colour", "size", "x", "y", "ext", "dir", "start", "length", "reason")

    def __init__(self, shape: str, colour: str, size: str, x: float, y: float, ext: float):
        self.shape, self.colour, self.size = shape, colour, size
        self.x, self.y, self.ext = x, y, ext
        self.dir: str | None = None
        self.start = 0
        self.length = 0
        self.reason = ""  # why the planned stop happens: "border" (it would cross) or "chosen"

    @property
    def stop_frame(self) -> int:
        return self.start + self.length

    def at(self, j: int, speed: float) -> tuple[float, float]:
        """Planned centre at frame j (>= the current frame)."""
        if self.dir is None:
            return self.x, self.y
        k = min(max(j - self.start + 1, 0), self.length)
        dx, dy = DIRECTIONS[self.dir]
        return self.x + dx * k * speed, self.y + dy * k * speed

    def public(self, j: int, speed: float) -> dict:
        x, y = self.at(j, speed)
        moving = self.dir if self.dir is not None and self.start <= j < self.stop_frame else None
        return {"shape": self.shape, "colour": self.colour, "size": self.size,
                "x": round(x, 2), "y": round(y, 2), "moving": moving}


class _World:
    """Generates one episode frame by frame; every draw comes from one numpy Generator."""

    def __init__(self, seed: int, cfg: WorldConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.n = cfg.n_frames
        self.gap = cfg.event_gap_frames
        self.v = cfg.speed_px
        self.objs: list[_Obj] = []
        self.room: str | None = None
        self.scene = -1
        self.last_event = -10**9
        self.states: list[dict] = []
        self.events: list[list[dict]] = [[] for _ in range(self.n)]
        self.cuts = self._plan_cuts()
        self.needle_start, self.blocked = self._plan_needle()
        self.needle: dict | None = None

    # --- plans made before the simulation ----------------------------------------------------------

    def _plan_cuts(self) -> list[int]:
        """Scene start frames (the first is 0); every scene lasts at least ``scene_frames``."""
        cfg, m = self.cfg, self.cfg.scene_frames
        k_max = min(cfg.max_scenes, self.n // m)
        k = int(self.rng.integers(cfg.min_scenes, k_max + 1))
        slack = self.n - k * m
        extra = np.sort(self.rng.integers(0, slack + 1, size=k - 1))  # slack shared out among the scenes
        return [0] + [j * m + int(extra[j - 1]) for j in range(1, k)]

    def _plan_needle(self) -> tuple[int | None, set[int]]:
        """The needle's first frame (inside one scene, clear of events) and the frames events avoid."""
        cfg = self.cfg
        if not cfg.needle:
            return None, set()
        depth = cfg.needle_depth if cfg.needle_depth is not None else float(self.rng.uniform(0.0, 1.0))
        nf, gap = cfg.needle_frames, self.gap
        bounds = self.cuts + [self.n]
        valid = []
        for c, c_next in zip(bounds[:-1], bounds[1:]):
            # gap free frames before it and after it; in the last scene, one frame after it for the question
            last = c_next - gap - nf if c_next < self.n else self.n - 1 - nf
            valid.extend(range(c + gap, last + 1))
        if not valid:  # only for unusual configs; WorldConfig checks the common ones
            raise ConfigError(f"WorldConfig.needle_seconds={cfg.needle_seconds!r}: the needle does not fit "
                              "in any scene with free frames around it; lower needle_seconds.")
        target = depth * self.n
        f0 = min(valid, key=lambda f: (abs(f - target), f))
        blocked = set(range(f0 - gap + 1, f0 + nf + gap))
        return f0, blocked

    # --- timeline rules ----------------------------------------------------------------------------

    def _next_cut(self, i: int) -> int | None:
        for c in self.cuts:
            if c > i:
                return c
        return None

    def _reserved(self) -> list[int]:
        return [o.stop_frame for o in self.objs if o.dir is not None]

    def _frame_free(self, f: int, since: int) -> bool:
        """Can an event be at frame f, given the last event at ``since`` and the planned ones?"""
        if f >= self.n or f in self.blocked or f - since < self.gap:
            return False
        nxt = self._next_cut(f - 1)
        if nxt is not None and nxt - f < self.gap:
            return False
        return all(abs(r - f) >= self.gap for r in self._reserved())

    # --- geometry ------------------------------------------------------------------------------------

    def _horizon(self, i: int) -> int:
        return max([i] + self._reserved())

    def _clear(self, path, ext: float, others: list[_Obj], j0: int, j1: int) -> bool:
        for j in range(j0, j1 + 1):
            x, y = path(j)
            for o in others:
                ox, oy = o.at(j, self.v)
                if math.hypot(x - ox, y - oy) < ext + o.ext + _MARGIN_PX:
                    return False
        return True

    def _place(self, size_name: str, others: list[_Obj], i: int, tries: int = 40) -> tuple[float, float] | None:
        size = self.cfg.size
        ext = _extent(size_name, size)
        lo, hi = ext, size - 1 - ext
        if hi <= lo:
            return None
        j1 = self._horizon(i)
        for _ in range(tries):
            x, y = float(self.rng.uniform(lo, hi)), float(self.rng.uniform(lo, hi))
            if self._clear(lambda j: (x, y), ext, others, i, j1):
                return round(x, 2), round(y, 2)
        return None

    def _new_object(self, i: int, shapes: list[str], colours: list[str]) -> _Obj | None:
        shape = shapes[int(self.rng.integers(len(shapes)))]
        colour = colours[int(self.rng.integers(len(colours)))]
        size_name = "small" if self.rng.random() < 0.5 else "large"
        pos = self._place(size_name, self.objs, i)
        if pos is None:
            return None
        return _Obj(shape, colour, size_name, pos[0], pos[1], _extent(size_name, self.cfg.size))

    # --- events ----------------------------------------------------------------------------------------

    def _emit(self, i: int, event: dict) -> None:
        self.events[i].append(event)
        self.last_event = i

    def _obj_event(self, kind: str, o: _Obj, i: int, **extra) -> dict:
        x, y = o.at(i, self.v)
        ev = {"type": kind, "shape": o.shape, "colour": o.colour, "size": o.size,
              "x": round(x, 2), "y": round(y, 2)}
        ev.update(extra)
        return ev

    def _new_scene(self, i: int) -> None:
        cfg = self.cfg
        rooms = [r for r in cfg.rooms if r != self.room] or list(cfg.rooms)
        self.room = rooms[int(self.rng.integers(len(rooms)))]
        self.scene += 1
        self.objs = []
        count = int(self.rng.integers(1, cfg.max_objects + 1))
        shapes = [str(s) for s in self.rng.permutation(list(cfg.shapes))]
        colours = [str(c) for c in self.rng.permutation(list(cfg.colours))]
        for shape, colour in zip(shapes[:count], colours[:count]):
            obj = self._new_object(i, [shape], [colour])
            if obj is not None:
                self.objs.append(obj)
        objects = [o.public(i, self.v) for o in _sorted_objs(self.objs)]
        for o in objects:
            del o["moving"]
        self._emit(i, {"type": "start" if i == 0 else "cut", "room": self.room, "objects": objects})

    def _try_move(self, i: int) -> bool:
        size, gap = self.cfg.size, self.gap
        nxt = self._next_cut(i)
        end = (nxt - gap) if nxt is not None else self.n - 1
        candidates = [(o, d) for o in self.objs if o.dir is None for d in DIRECTIONS]
        order = self.rng.permutation(len(candidates))
        want = int(self.rng.integers(_MOVE_FRAMES[0], _MOVE_FRAMES[1] + 1))
        for idx in order:
            o, d = candidates[int(idx)]
            dx, dy = DIRECTIONS[d]
            pos = o.x if dx else o.y
            room = (pos - o.ext) if (dx + dy) < 0 else (size - 1 - o.ext - pos)
            border = int(math.floor(room / self.v + 1e-9))
            others = [p for p in self.objs if p is not o]
            for length in range(min(want, border), gap - 1, -1):
                e = i + length
                if e > end or not self._frame_free(e, i):
                    continue
                x0, y0, v = o.x, o.y, self.v

                def path(j, length=length):
                    k = min(max(j - i + 1, 0), length)
                    return x0 + dx * k * v, y0 + dy * k * v

                if not self._clear(path, o.ext, others, i, max(e, self._horizon(i))):
                    continue
                o.dir, o.start, o.length = d, i, length
                o.reason = "border" if length == border else "chosen"
                self._emit(i, self._obj_event("move", o, i, dir=d))
                return True
        return False

    def _try_appear(self, i: int) -> bool:
        if len(self.objs) >= self.cfg.max_objects:
            return False
        shapes = [s for s in self.cfg.shapes if s not in {o.shape for o in self.objs}]
        colours = [c for c in self.cfg.colours if c not in {o.colour for o in self.objs}]
        if not shapes or not colours:
            return False
        obj = self._new_object(i, shapes, colours)
        if obj is None:
            return False
        self.objs.append(obj)
        self._emit(i, self._obj_event("appear", obj, i))
        return True

    def _try_leave(self, i: int) -> bool:
        still = [o for o in self.objs if o.dir is None]
        if not still:
            return False
        o = still[int(self.rng.integers(len(still)))]
        self.objs.remove(o)
        self._emit(i, self._obj_event("leave", o, i))
        return True

    def _try_colour(self, i: int) -> bool:
        still = [o for o in self.objs if o.dir is None]
        colours = [c for c in self.cfg.colours if c not in {o.colour for o in self.objs}]
        if not still or not colours:
            return False
        o = still[int(self.rng.integers(len(still)))]
        new = colours[int(self.rng.integers(len(colours)))]
        old, o.colour = o.colour, new
        self._emit(i, self._obj_event("colour", o, i, old=old, new=new))
        return True

    def _maybe_event(self, i: int) -> None:
        if self.rng.random() >= min(1.0, _EVENT_RATE / self.cfg.fps):
            return
        weights = dict(_EVENT_WEIGHTS)
        n_obj = len(self.objs)
        if n_obj == 0:
            weights["appear"] *= 20.0
        if n_obj == 1:
            weights["leave"] *= 0.1
        tries = {"move": self._try_move, "colour": self._try_colour,
                 "appear": self._try_appear, "leave": self._try_leave}
        while weights:
            names = list(weights)
            p = np.array([weights[k] for k in names], dtype=float)
            kind = names[int(self.rng.choice(len(names), p=p / p.sum()))]
            if tries[kind](i):
                return
            del weights[kind]

    def _stops(self, i: int) -> None:
        for o in self.objs:
            if o.dir is not None and o.stop_frame == i:
                x, y = o.at(i, self.v)
                o.x, o.y, o.dir = x, y, None
                self._emit(i, self._obj_event("stop", o, i, reason=o.reason))

    def _place_needle(self, i: int) -> None:
        cfg, rng = self.cfg, self.rng
        shape = cfg.needle_shapes[int(rng.integers(len(cfg.needle_shapes)))]
        used = {o.colour for o in self.objs}
        colours = [c for c in cfg.colours if c not in used] or list(cfg.colours)
        colour = colours[int(rng.integers(len(colours)))]
        size_name = "small" if rng.random() < 0.5 else "large"
        ext = _extent(size_name, cfg.size)
        lo, hi = ext, cfg.size - 1 - ext
        j1 = i + cfg.needle_frames - 1
        pos = None
        for _ in range(200):
            x, y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
            if self._clear(lambda j: (x, y), ext, self.objs, i, j1):
                pos = (round(x, 2), round(y, 2))
                break
        if pos is None:  # no free spot: draw it anyway (on top of the objects)
            pos = (round(cfg.size / 2, 2), round(cfg.size / 2, 2))
        self.needle = {"shape": shape, "colour": colour, "size": size_name, "x": pos[0], "y": pos[1]}

    # --- the loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        cut_set = set(self.cuts)
        nf = self.cfg.needle_frames
        for i in range(self.n):
            if i in cut_set:
                self._new_scene(i)
            else:
                self._stops(i)
                if not self.events[i] and self._frame_free(i, self.last_event):
                    self._maybe_event(i)
            if self.needle_start is not None and i == self.needle_start:
                self._place_needle(i)
            showing = self.needle_start is not None and self.needle_start <= i < self.needle_start + nf
            self.states.append({
                "room": self.room,
                "scene": self.scene,
                "objects": [o.public(i, self.v) for o in self.objs],
                "needle": dict(self.needle) if showing else None,
            })


def _sorted_objs(objs: list[_Obj]) -> list[_Obj]:
    return sorted(objs, key=lambda o: (o.x, o.y))


# --------------------------------------------------------------------------------------------------
# Questions about a video
# --------------------------------------------------------------------------------------------------


def _moving_answer(state: dict) -> str:
    movers = _left_to_right([o for o in state["objects"] if o["moving"]])
    return (_join([_the_obj(o) for o in movers]) + ".") if movers else "nothing."


def _pick(rng: np.random.Generator, weighted: dict[str, float]) -> str:
    names = [k for k, w in weighted.items() if w > 0]
    p = np.array([weighted[k] for k in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


# The state questions about one object, by the attribute they ask for (one template each: the
# generators write them, question_subject reads them back)
OBJECT_QUESTIONS: dict[str, str] = {"colour": "what colour is the {shape}?", "size": "how big is the {shape}?"}


def _object_qa(attr: str, obj: dict) -> tuple[str, str]:
    return OBJECT_QUESTIONS[attr].format(shape=obj["shape"]), f"{obj[attr]}."


def question_subject(state: dict, question: str) -> dict | None:
    """The object of ``state`` that a state question names ("what colour is the square?"), or None
    for a question about the whole frame (the count, what is moving, the room)."""
    return next((o for o in state["objects"] for t in OBJECT_QUESTIONS.values()
                 if question == t.format(shape=o["shape"])), None)


def state_questions(state: dict) -> list[tuple[str, str]]:
    """Every "state" question a single state answers, as (question, answer) pairs: the colour and the
    size of each object, the count, what is moving, the room."""
    pairs = []
    for obj in _left_to_right(state["objects"]):
        pairs.append(_object_qa("colour", obj))
        pairs.append(_object_qa("size", obj))
    pairs.append(("how many objects are there?", f"{_number(len(state['objects']))}."))
    pairs.append(("what is moving?", _moving_answer(state)))
    pairs.append(("what colour is the room?", f"{state['room']}."))
    return pairs


def _state_question(rng: np.random.Generator, state: dict) -> tuple[str, str]:
    objects = state["objects"]
    moving = any(o["moving"] for o in objects)
    kind = _pick(rng, {"colour": 0.25 if objects else 0.0, "count": 0.2, "moving": 0.6 if moving else 0.2,
                       "room": 0.15, "size": 0.15 if objects else 0.0})
    if kind in ("colour", "size"):
        return _object_qa(kind, objects[int(rng.integers(len(objects)))])
    if kind == "count":
        return "how many objects are there?", f"{_number(len(objects))}."
    if kind == "moving":
        return "what is moving?", _moving_answer(state)
    return "what colour is the room?", f"{state['room']}."


def memory_question(rng: np.random.Generator, previous: dict) -> tuple[str, str]:
    objects = previous["objects"]
    if objects and rng.random() < 0.6:
        obj = objects[int(rng.integers(len(objects)))]
        return f"what colour was the {obj['shape']} in the previous scene?", f"{obj['colour']}."
    return "what colour was the room before?", f"{previous['room']}."


def _make_qa(rng: np.random.Generator, cfg: WorldConfig, states: list[dict], events: list[list[dict]],
             scene_starts: list[int], needle_start: int | None, needle: dict | None) -> list[dict]:
    """Questions at random frames without events (and without the needle on screen)."""
    n, nf = len(states), cfg.needle_frames
    showing = set(range(needle_start, needle_start + nf)) if needle_start is not None else set()
    free = [i for i in range(1, n) if not events[i] and i not in showing]
    lo, hi = _QA_PER_2MIN
    count = max(1, round(int(rng.integers(lo, hi + 1)) * cfg.duration / 120.0))
    count = min(count, len(free))
    with_motion = [i for i in free if any(o["moving"] for o in states[i]["objects"])]
    chosen: set[int] = set()
    while len(chosen) < count:
        pool = with_motion if with_motion and rng.random() < _MOVING_QA_FRAME_PROB else free
        pool = [i for i in pool if i not in chosen] or [i for i in free if i not in chosen]
        chosen.add(int(pool[int(rng.integers(len(pool)))]))
    frames = sorted(chosen)
    qa = []
    for f in frames:
        state = states[f]
        scene = state["scene"]
        if scene >= 1 and rng.random() < _MEMORY_QA_PROB:
            question, answer = memory_question(rng, states[scene_starts[scene] - 1])
            kind = "memory"
        else:
            question, answer = _state_question(rng, state)
            kind = "state"
        qa.append({"frame": f, "question": question, "answer": answer, "kind": kind})
    if needle is not None:
        after = [i for i in free if i >= needle_start + nf]
        unused = [i for i in after if i not in set(frames)] or after
        f = int(unused[int(rng.integers(len(unused)))])
        qa.append({"frame": f, "question": NEEDLE_QUESTION, "answer": needle_answer(needle), "kind": "needle"})
    qa.sort(key=lambda q: q["frame"])
    return [{"t": _t(q["frame"], cfg.fps), **q} for q in qa]


def _t(frame: int, fps: float) -> float:
    return round(frame / fps, 4)


# --------------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------------


class Episode:
    """One generated video: per-frame states and events, ground truth, and frames rendered on demand."""

    def __init__(self, seed: int, config: WorldConfig, states: list[dict], events: list[list[dict]],
                 scene_starts: list[int], qa: list[dict], needle_start: int | None):
        self.seed = seed
        self.config = config
        self.n_frames = len(states)
        self.states = states
        self.events = events
        self.scene_starts = scene_starts
        self.qa = qa
        self.needle_start = needle_start

    @property
    def narration(self) -> list[dict]:
        """One sentence per event: {"t", "frame", "type", "text"}."""
        fps = self.config.fps
        return [{"t": _t(i, fps), "frame": i, "type": ev["type"], "text": narrate(ev, self.states[i])}
                for i, evs in enumerate(self.events) for ev in evs]

    @property
    def scenes(self) -> list[dict]:
        cfg = self.config
        bounds = self.scene_starts + [self.n_frames]
        out = []
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            end = round(float(cfg.duration), 4) if b == self.n_frames else _t(b, cfg.fps)
            out.append({"index": k, "start": _t(a, cfg.fps), "end": end, "start_frame": a, "end_frame": b,
                        "background": self.states[a]["room"]})
        return out

    @property
    def needles(self) -> list[dict]:
        if self.needle_start is None:
            return []
        f0, nf, fps = self.needle_start, self.config.needle_frames, self.config.fps
        needle = self.states[f0]["needle"]
        return [{"t_start": _t(f0, fps), "t_end": _t(f0 + nf, fps), "frame_start": f0, "frame_end": f0 + nf,
                 **needle}]

    def truth(self) -> dict:
        """JSON-serialisable ground truth; ``json.dumps(truth, sort_keys=True)`` depends only on the seed
        and the config."""
        cfg = self.config
        return {
            "kind": "video",
            "seed": self.seed,
            "fps": float(cfg.fps),
            "duration": float(cfg.duration),
            "size": cfg.size,
            "n_frames": self.n_frames,
            "scenes": self.scenes,
            "events": [{"t": _t(i, cfg.fps), "frame": i, **ev} for i, evs in enumerate(self.events) for ev in evs],
            "narration": self.narration,
            "qa": [dict(q) for q in self.qa],
            "needles": self.needles,
            "states": self.states,
            "config": cfg.to_dict(),
        }

    def frame(self, i: int) -> np.ndarray:
        """Frame i as a (size, size, 3) uint8 RGB array; the noise is seeded by (seed, i)."""
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame index {i} is out of range for an episode of {self.n_frames} frames")
        rng = np.random.default_rng([self.seed, i])
        return render_state(self.states[i], self.config.size, rng, self.config.noise)

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """(t, frame) for every frame, rendered lazily."""
        for i in range(self.n_frames):
            yield i / self.config.fps, self.frame(i)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r}: must be a non-negative integer; pass e.g. seed=0.")
    return int(seed)


def generate_episode(seed: int, config: WorldConfig | None = None) -> Episode:
    """Generate the episode of ``seed`` (deterministic for a given seed and config)."""
    seed = _check_seed(seed)
    cfg = config if config is not None else WorldConfig()
    world = _World(seed, cfg)
    world.run()
    needle = world.states[world.needle_start]["needle"] if world.needle_start is not None else None
    qa = _make_qa(world.rng, cfg, world.states, world.events, world.cuts, world.needle_start, needle)
    return Episode(seed, cfg, world.states, world.events, world.cuts, qa, world.needle_start)


# --------------------------------------------------------------------------------------------------
# Multi-image dialogues
# --------------------------------------------------------------------------------------------------


class MultiImageSet:
    """Still images (each a room with objects) and a dialogue about them.

    ``turns[j]["images"]`` lists the (0-based) images first shown in turn j (all of them in turn 0);
    the question text has no image placeholders, the caller places them. Text numbers images from 1.
    """

    def __init__(self, seed: int, config: WorldConfig, states: list[dict], turns: list[dict]):
        self.seed = seed
        self.config = config
        self.states = states
        self.turns = turns
        self.images = [render_state(s, config.size, np.random.default_rng([seed, _MULTI_TAG, k]), config.noise)
                       for k, s in enumerate(states)]

    def truth(self) -> dict:
        return {"kind": "multi-image", "seed": self.seed, "size": self.config.size,
                "n_images": len(self.states), "states": self.states,
                "turns": [dict(t) for t in self.turns], "config": self.config.to_dict()}


_MULTI_TAG = 0x4D49  # separates the multi-image random streams from the video ones


def _still_state(rng: np.random.Generator, cfg: WorldConfig, room: str) -> dict:
    count = int(rng.integers(1, cfg.max_objects + 1))
    shapes = [str(s) for s in rng.permutation(list(cfg.shapes))[:count]]
    colours = [str(c) for c in rng.permutation(list(cfg.colours))[:count]]
    placed: list[tuple[float, float, float]] = []
    objects = []
    for shape, colour in zip(shapes, colours):
        size_name = "small" if rng.random() < 0.5 else "large"
        ext = _extent(size_name, cfg.size)
        lo, hi = ext, cfg.size - 1 - ext
        for _ in range(60):
            x, y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
            if all(math.hypot(x - px, y - py) >= ext + pe + _MARGIN_PX for px, py, pe in placed):
                placed.append((x, y, ext))
                objects.append({"shape": shape, "colour": colour, "size": size_name,
                                "x": round(x, 2), "y": round(y, 2), "moving": None})
                break
    return {"room": room, "scene": 0, "objects": objects, "needle": None}


def _attribute(attr: str, shape: str | None, state: dict) -> str | None:
    """The answer to an attribute question about one image, or None when it has no answer there."""
    if attr == "count":
        return f"{_number(len(state['objects']))}."
    if attr == "room":
        return f"{state['room']}."
    for obj in state["objects"]:
        if obj["shape"] == shape:
            return f"{obj['colour']}."
    return None


def _single_text(attr: str, shape: str | None, k: int) -> str:
    if attr == "count":
        return f"how many objects are in image {k + 1}?"
    if attr == "room":
        return f"what colour is the room in image {k + 1}?"
    return f"what colour is the {shape} in image {k + 1}?"


def _compare_options(states: list[dict]) -> list[tuple[str, str, list[int], list]]:
    """(question, answer, images it refers to, what the answer is read from: [image, shape or None])."""
    options = []
    counts = [len(s["objects"]) for s in states]
    best = max(counts)
    if counts.count(best) == 1:
        k = counts.index(best)
        everything = [[j, None] for j in range(len(states))]
        options.append(("which image has more objects?", f"image {k + 1}.", list(range(len(states))), everything))
    where: dict[tuple[str, str], list[int]] = {}
    for k, s in enumerate(states):
        for obj in s["objects"]:
            where.setdefault((obj["colour"], obj["shape"]), []).append(k)
    for (colour, shape), ks in sorted(where.items()):
        if len(ks) == 1:
            options.append((f"which image has {article(colour)} {colour} {shape}?", f"image {ks[0] + 1}.",
                            list(range(len(states))), [[ks[0], shape]]))
    for a in range(len(states)):
        for b in range(a + 1, len(states)):
            same = "yes." if states[a]["room"] == states[b]["room"] else "no."
            options.append((f"do image {a + 1} and image {b + 1} have the same room colour?", same, [a, b],
                            [[a, None], [b, None]]))
    return options


def generate_multi_image(seed: int, n_images: int | None = None, config: WorldConfig | None = None,
                         n_turns: tuple[int, int] | None = None) -> MultiImageSet:
    """2-4 still images (each its own room with 1..max_objects objects) and a 3-6 turn dialogue.

    ``n_turns`` = (low, high) draws the dialogue's length from [low, high) instead (training's dense
    dialogues); a dialogue stops early when the images leave no new question to ask.
    """
    seed = _check_seed(seed)
    if n_turns is not None and not (isinstance(n_turns, (tuple, list)) and len(n_turns) == 2
                                    and all(isinstance(v, int) and not isinstance(v, bool) for v in n_turns)
                                    and 1 <= n_turns[0] < n_turns[1]):
        raise ConfigError(f"n_turns={n_turns!r}: must be (low, high) integers with 1 <= low < high")
    cfg = config if config is not None else WorldConfig()
    rng = np.random.default_rng([seed, _MULTI_TAG])
    if n_images is None:
        n_images = int(rng.integers(2, 5))
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or not 2 <= n_images <= 10:
        raise ConfigError(f"n_images={n_images!r}: must be an integer in [2, 10] (or None for 2-4).")
    rooms: list[str] = []
    for k in range(n_images):
        if k > 0 and rng.random() < 0.35:
            rooms.append(rooms[int(rng.integers(k))])  # repeat a room so "same room colour?" is sometimes yes
        else:
            rooms.append(cfg.rooms[int(rng.integers(len(cfg.rooms)))])
    states = [_still_state(rng, cfg, room) for room in rooms]

    n_turns = int(rng.integers(*(n_turns or (3, 7))))
    turns: list[dict] = []
    asked: set[str] = set()
    previous: tuple[str, str | None] | None = None  # the attribute of the last single/followup turn
    for _ in range(n_turns * 4):
        if len(turns) == n_turns:
            break
        kinds = {"single": 0.35, "compare": 0.3, "followup": 0.35 if previous else 0.0}
        kind = _pick(rng, kinds)
        if kind == "compare":
            options = [o for o in _compare_options(states) if o[0] not in asked]
            if not options:
                continue
            question, answer, refers, about = options[int(rng.integers(len(options)))]
            previous = None
        else:
            if kind == "followup":
                attr, shape = previous
                ks = [k for k in range(n_images) if _attribute(attr, shape, states[k]) is not None
                      and _single_text(attr, shape, k) not in asked]
            else:
                k = int(rng.integers(n_images))
                attr = _pick(rng, {"colour": 0.45, "count": 0.3, "room": 0.25})
                shape = None
                if attr == "colour":
                    objects = states[k]["objects"]
                    shape = objects[int(rng.integers(len(objects)))]["shape"]
                ks = [k] if _single_text(attr, shape, k) not in asked else []
            if not ks:
                continue
            k = ks[int(rng.integers(len(ks)))]
            asked.add(_single_text(attr, shape, k))
            question = _single_text(attr, shape, k) if kind == "single" else f"and in image {k + 1}?"
            answer, refers, previous = _attribute(attr, shape, states[k]), [k], (attr, shape)
            about = [[k, shape]]
        asked.add(question)
        turns.append({"question": question, "answer": answer, "kind": kind,
                      "images": list(range(n_images)) if not turns else [], "refers": refers, "about": about})
    return MultiImageSet(seed, cfg, states, turns)
