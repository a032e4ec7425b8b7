"""``mmlc eval niavh``: needle in a video haystack (after VideoLLaMB's NIAVH), resumably, in parallel.

A *needle* is shown briefly at depth ``d`` % of a *haystack* video of length ``L`` seconds; after the
last frame the model is asked one question about it. The grid is lengths x depths (x ``--seeds``
repeats); every cell streams its haystack through a fresh :class:`~mmlc.streaming.session.StreamSession`
(the model narrates as it would live), then the question is asked at ``t = L``.

Depth: with ``n`` haystack frames (``round(L * fps)``) and a needle of ``k`` frames, the needle's
first frame is ``round(d / 100 * (n - k))``: 0 % starts at the first frame, 100 % ends at the last.

Haystacks and needles:

- ``--haystack shapeworld`` (default): an episode of length ``L`` generated offline from seed
  ``--seed + repeat`` with ShapeWorld's own needle (a cross or diamond, never narrated) aimed at that
  depth (``WorldConfig(needle=True, needle_depth=...)``; the generator keeps a couple of event-free
  frames around it and inside one scene, so the actual depth, recorded per cell, can differ by a few
  frames); question and answer are the generator's needle question ("what rare object appeared?").
  With ``--needle`` the episode has no ShapeWorld needle and the user's needle is used instead.
- ``--haystack FILE``: the first ``L`` seconds of the user's video, resampled to ``--fps``, with
  ``--needle`` (an image shown full-frame for ``--needle-seconds``, default 3 s; a short video clip,
  shown for its own length unless ``--needle-seconds`` cuts it; or ``text:SOME WORDS``, a caption
  rendered with Pillow onto the haystack frames for ``--needle-seconds``) and ``--question``/``--answer``.
  The needle replaces (image, clip) or marks (text) haystack frames: the haystack keeps its length.

Scoring: exact match after :func:`mmlc.evals.metrics.normalize_text` (as ShapeWorld QA accuracy);
optionally (``--judge``) a 1-10 score from an LLM judge through an OpenAI-compatible endpoint
(:class:`~mmlc.evals.judge.JudgeClient`), with the NIAVH / needle-in-a-haystack rubric; the judge
returns ``{"score": n}``. A failed request is recorded (``"status": "error"``) and retried on the
next run; an unparsable reply is recorded as ``"unparsed"``.

Memory: ``--no-memory`` is the baseline, the same model streaming with a sliding window of the last
``--window-seconds`` of frames (``model.stream(window_seconds=W)``); without it the session streams
with the model's memory bridge (scenes folded into memory tokens, ``model.stream(memory=True)``), or
keeps its whole KV cache for a model without a bridge. Each cell records the session's
``scenes_closed`` and ``memories_kept``.

Files: each cell is saved at once as ``OUTPUT_DIR/cells/L<L>_d<d>_r<r>.json`` (atomically), so a rerun
skips finished cells (and only judges those without a judgement). ``OUTPUT_DIR/results.json`` (and
``--json OUT``) holds the summary, every cell and the full config; ``--plot OUT.png`` a heatmap of
lengths x depths like the NIAVH figures (matplotlib). Under ``accelerate launch`` / ``torchrun`` cell i
goes to process ``i % num_processes`` and the main process merges from the cell files.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmlc.errors import ConfigError, DataError, SourceError
from mmlc.evals.judge import JudgeClient, JudgeError, last_braces
from mmlc.evals.metrics import normalize_text
from mmlc.evals.common import (distributed, empty_cache, oom_errors, read_json, run_cli, shard_items, warn,
                               write_json)
from mmlc.evals.mmdu import make_judge

CELLS = "cells"
RESULTS = "results.json"
EVAL_SEED = 1_000_000_000          # held-out seeds, as mmlc eval narration
DEFAULT_LENGTHS = "60,300,900"
DEFAULT_DEPTHS = "0,25,50,75,100"
IMAGE_NEEDLE_SECONDS = 3.0         # image / text needles, unless --needle-seconds
SHAPEWORLD_NEEDLE_SECONDS = 1.5    # WorldConfig's default
MEMORY_FULL = "memory bridge (the whole KV cache for a model without one)"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_EPS = 1e-6

NIAVH_RUBRIC = """\
You are an impartial judge. An AI assistant watched a video and answered a question about it. Rate how \
well its answer matches the reference answer, on a scale from 1 to 10:
Score 1: the answer is completely unrelated to the reference.
Score 3: the answer has minor relevance but does not align with the reference.
Score 5: the answer has moderate relevance but contains inaccuracies.
Score 7: the answer aligns with the reference but has minor omissions.
Score 10: the answer is completely accurate and aligns perfectly with the reference.
Reply with only a JSON object holding the integer score, for example {"score": 7}.
"""


# ---------------------------------------------------------------------- the grid
def parse_grid(text, flag: str, *, low: float, high: float | None = None, low_open: bool = True) -> list[float]:
    """``"60,300,900"`` (or a list of numbers) -> floats, validated and deduplicated in order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    example = "--lengths 60,300,900" if flag == "--lengths" else "--depths 0,25,50,75,100"
    values: list[float] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            v = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} {text!r}: {item!r} is not a number: pass e.g. {example}") from None
        if not math.isfinite(v):
            raise ConfigError(f"{flag} {text!r}: {item!r} is not a finite number: pass e.g. {example}")
        if v < low or (low_open and v == low) or (high is not None and v > high):
            what = (f"must be > {low:g} seconds" if flag == "--lengths" else
                    f"must be a percentage in {low:g}-{high:g}")
            raise ConfigError(f"{flag} {text!r}: {v:g} {what}: pass e.g. {example}")
        if v not in values:
            values.append(v)
    if not values:
        raise ConfigError(f"{flag} {text!r}: the grid is empty: pass e.g. {example}")
    return values


def parse_lengths(text) -> list[float]:
    return parse_grid(text, "--lengths", low=0.0)


def parse_depths(text) -> list[float]:
    return parse_grid(text, "--depths", low=0.0, high=100.0, low_open=False)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: haystack length (s), needle depth (%), repeat number."""

    index: int
    length: float
    depth: float
    repeat: int

    @property
    def name(self) -> str:
        return f"L{self.length:g}_d{self.depth:g}_r{self.repeat}"


def plan_cells(lengths: list[float], depths: list[float], repeats: int) -> list[Cell]:
    """Cells in (length, depth, repeat) order; cell i runs on process ``i % num_processes``."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"--seeds {repeats!r}: must be an integer >= 1 (repeats per cell)")
    cells = []
    for length in lengths:
        for depth in depths:
            for r in range(repeats):
                cells.append(Cell(len(cells), float(length), float(depth), r))
    return cells


def n_haystack_frames(length: float, fps: float) -> int:
    return max(1, round(length * fps))


def needle_span(n_frames: int, needle_frames: int, depth: float) -> tuple[int, int]:
    """Frames ``[start, end)`` of a needle of ``needle_frames`` at ``depth`` % of ``n_frames``."""
    start = round(depth / 100.0 * (n_frames - needle_frames))
    return start, start + needle_frames


# ---------------------------------------------------------------------- needles
@functools.lru_cache(maxsize=16)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):   # Pillow < 10.1 or without FreeType: the bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [text]


def overlay_text(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame`` with ``text`` in white on a black band across its middle (wrapped to the width)."""
    h, w = frame.shape[:2]
    img = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(img)
    size = max(8, h // 12)
    font = _font(size)
    pad = max(1, size // 4)
    lines = _wrap(draw, text, font, w - 2 * pad)
    box = draw.textbbox((0, 0), "Ag", font=font)
    line_h = max(size, box[3] - box[1]) + max(1, size // 5)
    band = len(lines) * line_h + 2 * pad
    y0 = max(0, (h - band) // 2)
    draw.rectangle((0, y0, w - 1, min(h - 1, y0 + band)), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        x = max(pad, (w - draw.textlength(line, font=font)) / 2)
        draw.text((x, y0 + pad + i * line_h), line, fill=(255, 255, 255), font=font)
    return np.asarray(img).copy()


def _fit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if image.shape[:2] == (h, w):
        return image.copy()
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)).copy()


@dataclass
class Needle:
    """A user needle: ``kind`` image / clip / text; ``frames`` the clip's frames at the eval's fps."""

    kind: str
    source: str
    seconds: float
    image: np.ndarray | None = None
    frames: list | None = None

    def n_frames(self, fps: float) -> int:
        if self.kind == "clip":
            return len(self.frames)
        return max(1, round(self.seconds * fps))

    def apply(self, frame: np.ndarray, j: int) -> np.ndarray:
        """Haystack ``frame`` as shown at the needle's ``j``-th frame."""
        if self.kind == "text":
            return overlay_text(frame, self.source)
        pic = self.image if self.kind == "image" else self.frames[j]
        return _fit(pic, frame.shape[:2])

    def describe(self) -> dict:
        d = {"kind": self.kind, "seconds": round(self.seconds, 4)}
        d["text" if self.kind == "text" else "path"] = self.source
        return d


def load_needle(spec: str, seconds: float | None, fps: float) -> Needle:
    """``--needle``: ``text:WORDS``, an image file, or a video clip (read now, resampled to ``fps``)."""
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--needle-seconds {seconds!r}: must be > 0 seconds (how long the needle is shown)")
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--needle is empty: pass an image, a short video clip, or text:SOME WORDS")
    if spec.startswith("text:"):
        text = " ".join(spec[5:].split())
        if not text:
            raise ConfigError("--needle 'text:' has no text: pass e.g. --needle 'text:the password is apple'")
        return Needle("text", text, float(seconds) if seconds else IMAGE_NEEDLE_SECONDS)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--needle {spec!r}: no such file: pass an image, a short video clip, or text:SOME WORDS "
                        "for a text overlay")
    from mmlc.streaming.images import load_image
    from mmlc.streaming.sources import open_source

    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            image = load_image(path)
        except SourceError as err:
            raise DataError(f"--needle {spec!r}: cannot be read as an image ({err}): pass a PNG/JPEG file") from None
        return Needle("image", str(path), float(seconds) if seconds else IMAGE_NEEDLE_SECONDS, image=image)
    try:
        with open_source(str(path), fps=fps) as src:
            frames = [np.ascontiguousarray(f) for _, f in src]
    except SourceError as err:
        raise DataError(f"--needle {spec!r}: cannot be read as an image or a video clip ({err}): pass a "
                        "PNG/JPEG image, a short video, or text:SOME WORDS") from None
    if not frames:
        raise DataError(f"--needle {spec!r}: the clip has no frames at --fps {fps:g}")
    if seconds is not None:
        want = max(1, round(seconds * fps))
        if want > len(frames):
            raise ConfigError(f"--needle-seconds {seconds:g} is longer than the clip {spec!r} ({len(frames) / fps:g} s "
                              f"at --fps {fps:g}): leave --needle-seconds out to show the whole clip, or lower it")
        frames = frames[:want]
    return Needle("clip", str(path), len(frames) / fps, frames=frames)


# ---------------------------------------------------------------------- haystacks
@dataclass
class CellInput:
    """What one cell streams: ``frames`` (an iterator of ``(t, frame)``), the question, its answer."""

    frames: Iterable
    n_frames: int
    question: str
    answer: str
    needle: dict


def _overlay(frames: Iterable, needle: Needle, start: int, end: int) -> Iterator[tuple[float, np.ndarray]]:
    for k, (t, frame) in enumerate(frames):
        yield t, (needle.apply(frame, k - start) if start <= k < end else frame)


def _span_info(n: int, start: int, end: int, fps: float, depth: float) -> dict:
    return {"frame_start": start, "frame_end": end, "t_start": round(start / fps, 4), "t_end": round(end / fps, 4),
            "depth": depth, "depth_actual": round(100.0 * start / (n - (end - start)), 2) if n > end - start else 0.0}


class ShapeWorldHaystack:
    """ShapeWorld episodes generated from seeds (``seed + repeat``) with the generator's needle, or with a
    user ``needle`` (then ``question``/``answer`` are needed and the episode has no ShapeWorld needle)."""

    kind = "shapeworld"

    def __init__(self, fps: float = 2.0, size: int = 64, seed: int = EVAL_SEED, needle: Needle | None = None,
                 question: str | None = None, answer: str | None = None, needle_seconds: float | None = None):
        _check_fps(fps)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"--seed {seed!r}: must be an integer >= 0 (the first ShapeWorld seed)")
        if needle is None and (question is not None or answer is not None):
            raise ConfigError("--question/--answer are for your own needle (--needle ...): with the ShapeWorld needle "
                              "the question and answer come from the generator; drop them, or pass --needle")
        if needle is not None:
            _check_qa(question, answer, "--haystack shapeworld --needle ...")
        if needle_seconds is not None and not (math.isfinite(needle_seconds) and needle_seconds > 0):
            raise ConfigError(f"--needle-seconds {needle_seconds!r}: must be > 0 seconds")
        self.fps, self.size, self.seed, self.needle = float(fps), size, seed, needle
        self.question, self.answer = question, answer
        self.needle_seconds = (needle.seconds if needle is not None else
                               float(needle_seconds) if needle_seconds else SHAPEWORLD_NEEDLE_SECONDS)

    def world(self, length: float, depth: float):
        from mmlc.data.shapeworld import WorldConfig

        n = n_haystack_frames(length, self.fps)
        nf = max(1, round(self.needle_seconds * self.fps))
        own = self.needle is None
        target = depth / 100.0 * (n - nf) / n if own and n > nf else 0.0
        return WorldConfig(size=self.size, fps=self.fps, duration=float(length), min_scene_seconds=min(10.0, length),
                           needle=own, needle_depth=min(1.0, max(0.0, target)) if own else None,
                           needle_seconds=self.needle_seconds)

    def check(self, lengths: list[float], depths: list[float]) -> None:
        """Every length works at this fps, size and needle (errors name the flags), before any work."""
        for length in lengths:
            n = n_haystack_frames(length, self.fps)
            nf = self.needle.n_frames(self.fps) if self.needle else max(1, round(self.needle_seconds * self.fps))
            if nf >= n:
                raise ConfigError(_too_long(self.needle, self.needle_seconds, nf, length, n, self.fps))
            try:
                self.world(length, depths[0])
            except ConfigError as err:
                raise ConfigError(f"--haystack shapeworld at --lengths {length:g}, --fps {self.fps:g}, --size "
                                  f"{self.size}, --needle-seconds {self.needle_seconds:g}: {err} (lower "
                                  "--needle-seconds or use longer --lengths)") from None

    def cell(self, cell: Cell) -> CellInput:
        from mmlc.data.shapeworld import generate_episode

        episode = generate_episode(self.seed + cell.repeat, self.world(cell.length, cell.depth))
        n = episode.n_frames
        if self.needle is None:
            truth = episode.truth()
            needle = truth["needles"][0]
            qa = next(q for q in truth["qa"] if q["kind"] == "needle")
            info = _span_info(n, needle["frame_start"], needle["frame_end"], self.fps, cell.depth)
            info.update(kind="shapeworld", shape=needle["shape"], colour=needle["colour"], size=needle["size"])
            return CellInput(episode.frames(), n, qa["question"], qa["answer"], info)
        start, end = needle_span(n, self.needle.n_frames(self.fps), cell.depth)
        info = _span_info(n, start, end, self.fps, cell.depth) | {"kind": self.needle.kind}
        return CellInput(_overlay(episode.frames(), self.needle, start, end), n, self.question, self.answer, info)

    def describe(self) -> dict:
        d = {"kind": "shapeworld", "seed": self.seed, "size": self.size, "fps": self.fps}
        d["needle"] = self.needle.describe() if self.needle else {"kind": "shapeworld", "seconds": self.needle_seconds}
        if self.needle is not None:
            d.update(question=self.question, answer=self.answer)
        return d


class FileHaystack:
    """The first ``L`` seconds of a video file at ``fps``, with a user ``needle``, ``question`` and ``answer``."""

    kind = "file"

    def __init__(self, path, needle: Needle | None, question: str | None, answer: str | None, fps: float = 2.0):
        _check_fps(fps)
        if needle is None:
            raise ConfigError(f"--haystack {str(path)!r} needs a needle: pass --needle IMAGE, --needle CLIP or "
                              "--needle 'text:SOME WORDS' (and --question, --answer)")
        _check_qa(question, answer, f"--haystack {str(path)!r}")
        from mmlc.streaming.sources import open_source

        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"--haystack {str(path)!r}: no such file: pass a video file, or --haystack shapeworld")
        try:
            with open_source(str(p), fps=fps) as src:
                n = src.n_frames
                self.duration = src.duration
                if n is None:
                    n = sum(1 for _ in src)
        except SourceError as err:
            raise DataError(f"--haystack {str(path)!r}: cannot be read as a video ({err})") from None
        self.path, self.needle, self.question, self.answer, self.fps = p, needle, question, answer, float(fps)
        self.available_frames = int(n)

    def check(self, lengths: list[float], depths: list[float]) -> None:
        for length in lengths:
            n = n_haystack_frames(length, self.fps)
            nf = self.needle.n_frames(self.fps)
            if nf >= n:
                raise ConfigError(_too_long(self.needle, self.needle.seconds, nf, length, n, self.fps))
            if n > self.available_frames:
                have = self.available_frames / self.fps
                raise DataError(f"--haystack {str(self.path)!r} lasts {have:g} s at --fps {self.fps:g}, shorter than "
                                f"--lengths {length:g}: use lengths up to {math.floor(have + _EPS):d} s, or a "
                                "longer video")

    def cell(self, cell: Cell) -> CellInput:
        n = n_haystack_frames(cell.length, self.fps)
        start, end = needle_span(n, self.needle.n_frames(self.fps), cell.depth)
        info = _span_info(n, start, end, self.fps, cell.depth) | {"kind": self.needle.kind}
        return CellInput(_overlay(self._frames(n), self.needle, start, end), n, self.question, self.answer, info)

    def _frames(self, n: int) -> Iterator[tuple[float, np.ndarray]]:
        from mmlc.streaming.sources import open_source

        k = 0
        with open_source(str(self.path), fps=self.fps) as src:
            for t, frame in src:
                if k >= n:
                    return
                yield t, frame
                k += 1
        if k < n:
            raise SourceError(f"{self.path}: the video ended after {k} frames, before the haystack's {n}")

    def describe(self) -> dict:
        return {"kind": "file", "path": str(self.path), "fps": self.fps, "needle": self.needle.describe(),
                "question": self.question, "answer": self.answer}


def _check_fps(fps) -> None:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"--fps {fps!r}: must be > 0 frames per second (e.g. --fps 2)")


def _check_qa(question, answer, what: str) -> None:
    missing = [f for f, v in (("--question", question), ("--answer", answer))
               if not isinstance(v, str) or not v.strip()]
    if missing:
        raise ConfigError(f"{what} needs {' and '.join(missing)}: pass the question asked after the video and its "
                          "reference answer, e.g. --question 'what word was shown?' --answer 'apple'")


def _too_long(needle: Needle | None, seconds: float, nf: int, length: float, n: int, fps: float) -> str:
    clip = needle is not None and needle.kind == "clip"
    what = f"--needle {needle.source!r}" if clip else f"--needle-seconds {seconds:g}"
    return (f"{what}: the needle ({nf} frames at --fps {fps:g}) is not shorter than the haystack of --lengths "
            f"{length:g} ({n} frames): use a shorter needle or longer --lengths")


# ---------------------------------------------------------------------- one cell
def exact_match(prediction, answer) -> bool:
    """Normalised exact match (:func:`~mmlc.evals.metrics.normalize_text`), as ShapeWorld QA accuracy."""
    return normalize_text(prediction if isinstance(prediction, str) else "") == normalize_text(answer)


def run_cell(model, inp: CellInput, fps: float, stream_options: dict) -> dict:
    """Stream one haystack, ask the question at its end; the prediction and what the stream did."""
    session = model.stream(fps=fps, **stream_options)
    t_question = round(inp.n_frames / fps, 6)
    session.ask(inp.question, t=t_question)
    start = time.perf_counter()
    events = list(session.feed(inp.frames, fps=fps))
    events += session.finish()
    wall = time.perf_counter() - start
    answers = [e for e in events if e.kind == "answer" and e.question == inp.question]
    errors = [e.text for e in events if e.kind == "error"]
    stats = session.stats()
    out = {"prediction": answers[-1].text if answers else "", "t_question": t_question,
           "frames": session.frames_seen, "n_replies": sum(e.kind == "reply" for e in events),
           "kv_length": stats.get("kv_length"), "scenes_closed": stats.get("scenes_closed"),
           "memories_kept": stats.get("memories_kept"), "wall_s": round(wall, 3),
           "stream_fps": round(session.frames_seen / max(wall, 1e-9), 2)}
    if errors:
        out["error"] = errors[0]
    elif session.frames_seen < inp.n_frames:
        out["error"] = f"the stream stopped after {session.frames_seen} of {inp.n_frames} frames"
    return out


# ---------------------------------------------------------------------- judge
def niavh_prompt(question: str, reference: str, answer: str, rubric: str = NIAVH_RUBRIC) -> str:
    return (f"{rubric}\n[Question]\n{question}\n\n[Reference Answer]\n{reference}\n\n"
            f"[Assistant's Answer]\n{answer}")


_SCORE = re.compile(r"""["']?score["']?\s*[:=]\s*["']?(-?\d+(?:\.\d+)?)""", re.IGNORECASE)


def parse_score(text) -> tuple[float | None, str | None]:
    """``(score, None)`` from the judge's reply (its last ``{"score": n}``, a ``score: n``, or a bare
    number), or ``(None, why)``. Scores must be within 1-10. Never evaluates the reply."""
    if not isinstance(text, str) or not text.strip():
        return None, "the judge's reply is empty"
    value = None
    block = last_braces(text)
    if block is not None:
        try:
            data = json.loads(block)
        except (json.JSONDecodeError, RecursionError, ValueError):
            data = None
        if isinstance(data, dict):
            for key, v in data.items():
                if str(key).strip().lower() == "score":
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        value = float(v)
                    elif isinstance(v, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", v):
                        value = float(v)
    if value is None:
        found = _SCORE.findall(block if block is not None else text) or _SCORE.findall(text)
        if found:
            value = float(found[-1])
        elif re.fullmatch(r"\s*(?:score\s*)?(-?\d+(?:\.\d+)?)\s*\.?\s*", text, re.IGNORECASE):
            value = float(re.search(r"-?\d+(?:\.\d+)?", text).group())
    if value is None:
        return None, f"the judge's reply has no score: {text[:200]!r}"
    if not math.isfinite(value) or not 1 <= value <= 10:
        return None, f"the judge's score {value:g} is outside 1-10"
    return value, None


def _judge_key(judge: JudgeClient, prompt: str) -> str:
    return hashlib.sha1(json.dumps([judge.model, prompt]).encode("utf-8")).hexdigest()


def judge_cell(judge: JudgeClient, question: str, reference: str, prediction: str) -> dict:
    """One judge request; the record to save (``status`` ok / unparsed / error)."""
    prompt = niavh_prompt(question, reference, prediction)
    key = _judge_key(judge, prompt)
    try:
        text, attempts = judge.complete(prompt)
    except JudgeError as err:
        return {"status": "error", "score": None, "reply": None, "error": str(err), "attempts": err.attempts,
                "key": key}
    score, why = parse_score(text)
    return {"status": "ok" if score is not None else "unparsed", "score": score, "reply": text, "error": why,
            "attempts": attempts, "key": key}


def _needs_judging(record: dict, judge: JudgeClient) -> bool:
    old = record.get("judge")
    if not isinstance(old, dict) or old.get("status") not in ("ok", "unparsed"):
        return True
    return old.get("key") != _judge_key(judge, niavh_prompt(record["question"], record["answer"],
                                                            record["prediction"]))


# ---------------------------------------------------------------------- summary and plot
def _is_done(record) -> bool:
    return isinstance(record, dict) and isinstance(record.get("prediction"), str) and not record.get("error")


def _mean(values: list[float]) -> float | None:
    return round(math.fsum(values) / len(values), 4) if values else None


def summarize(records: list[dict | None], cells: list[Cell], lengths: list[float], depths: list[float],
              judged: bool = False) -> dict:
    """Exact-match accuracy (and mean judge score) overall, per length, per depth and per grid cell
    (``grid[...][i][j]``: length i, depth j, mean over repeats; None where nothing finished)."""
    done = [(c, r) for c, r in zip(cells, records) if _is_done(r)]
    out: dict = {"exact_match": _mean([float(r["exact"]) for _, r in done]), "n_cells": len(cells),
                 "n_done": len(done), "n_pending": sum(r is None for r in records),
                 "n_errors": sum(isinstance(r, dict) and bool(r.get("error")) for r in records)}

    def by(metric: Callable[[dict], float | None], pick: Callable[[Cell], bool]) -> float | None:
        return _mean([v for c, r in done if pick(c) for v in [metric(r)] if v is not None])

    exact = lambda r: float(r["exact"])   # noqa: E731
    out["by_length"] = {f"{L:g}": by(exact, lambda c, L=L: c.length == L) for L in lengths}
    out["by_depth"] = {f"{d:g}": by(exact, lambda c, d=d: c.depth == d) for d in depths}
    grid = {"lengths": lengths, "depths": depths,
            "exact_match": [[by(exact, lambda c, L=L, d=d: c.length == L and c.depth == d) for d in depths]
                            for L in lengths]}
    if judged:
        def score(r):
            j = r.get("judge")
            return j["score"] if isinstance(j, dict) and j.get("status") == "ok" else None

        statuses = [r.get("judge", {}).get("status") if isinstance(r.get("judge"), dict) else None for _, r in done]
        out["judge"] = {"mean_score": by(score, lambda c: True),
                        "n_ok": statuses.count("ok"), "n_unparsed": statuses.count("unparsed"),
                        "n_errors": statuses.count("error"), "n_pending": statuses.count(None),
                        "by_length": {f"{L:g}": by(score, lambda c, L=L: c.length == L) for L in lengths},
                        "by_depth": {f"{d:g}": by(score, lambda c, d=d: c.depth == d) for d in depths}}
        grid["judge_score"] = [[by(score, lambda c, L=L, d=d: c.length == L and c.depth == d) for d in depths]
                               for L in lengths]
    out["grid"] = grid
    walls = [r["wall_s"] for _, r in done if isinstance(r.get("wall_s"), (int, float))]
    out["stream_seconds"] = round(math.fsum(walls), 2)
    return out


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which is not installed: pip install matplotlib "
                          "(or leave --plot out)") from None
    return matplotlib


def plot_heatmap(results: dict, out, metric: str = "auto") -> Path:
    """A heatmap of the grid, lengths (x) by depths (y), like the NIAVH figures: exact-match accuracy
    (0-1) or, with ``metric="judge"`` (``auto``: when judged), the mean judge score (1-10)."""
    _matplotlib()
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    grid = results["summary"]["grid"]
    if metric == "auto":
        metric = "judge" if "judge_score" in grid else "exact"
    if metric == "judge" and "judge_score" not in grid:
        raise ConfigError("the heatmap of judge scores needs a judged run: pass --judge")
    values = grid["judge_score" if metric == "judge" else "exact_match"]
    lengths, depths = grid["lengths"], grid["depths"]
    data = np.array([[np.nan if values[i][j] is None else values[i][j] for i in range(len(lengths))]
                     for j in range(len(depths))], dtype=float)     # rows: depths, columns: lengths
    vmin, vmax = (1.0, 10.0) if metric == "judge" else (0.0, 1.0)
    cmap = LinearSegmentedColormap.from_list("niavh", ["#F0496E", "#EBB839", "#0CD79F"])
    cmap = cmap.with_extremes(bad="#dddddd")
    fig = Figure(figsize=(max(4.0, 1.1 * len(lengths) + 2.5), max(3.0, 0.55 * len(depths) + 1.8)), dpi=120)
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for j in range(len(depths)):
        for i in range(len(lengths)):
            v = data[j, i]
            ax.text(i, j, "-" if np.isnan(v) else (f"{v:.1f}" if metric == "judge" else f"{v:.2f}"),
                    ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [f"{L:g}" for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("haystack length (s)")
    ax.set_ylabel("needle depth (%)")
    cfg = results.get("config", {})
    ax.set_title(f"NIAVH {'judge score' if metric == 'judge' else 'exact match'} - {cfg.get('model', '')}, "
                 f"{cfg.get('memory', '')}", fontsize=9)
    fig.colorbar(im, ax=ax, label="score (1-10)" if metric == "judge" else "accuracy")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


# ---------------------------------------------------------------------- the run
def memory_label(no_memory: bool, window_seconds: float | None) -> str:
    return f"sliding-window {window_seconds:g} s" if no_memory else MEMORY_FULL


def _cell_path(output_dir: Path, cell: Cell) -> Path:
    return output_dir / CELLS / f"{cell.name}.json"


def _settings(haystack, cell: Cell, cfg: dict) -> dict:
    return {"haystack": haystack.describe(), "length": cell.length, "depth": cell.depth, "repeat": cell.repeat,
            **{k: cfg[k] for k in ("model", "memory", "window_seconds", "threshold", "max_reply_tokens")},
            "weights": cfg.get("weights")}


def _check_settings(record, settings: dict, path: Path) -> dict | None:
    """The saved record if it belongs to these settings; None if unusable (redo); an error if it is from
    another run's settings (another model, memory, haystack...)."""
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        return None
    old = record["settings"]
    if old != json.loads(json.dumps(settings)):
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(json.dumps(settings.get(k))))
        raise ConfigError(f"{path}: holds a cell of a run with other settings ({', '.join(diff)} differ): use "
                          f"another --output-dir for these settings (or delete {path.parent})")
    return record


def run_niavh(model_loader, haystack, *, lengths, depths, repeats: int = 1, output_dir=None, fps: float | None = None,
              no_memory: bool = False, window_seconds: float = 60.0, threshold: float | None = None,
              max_reply_tokens: int | None = None, judge: JudgeClient | None = None, model_name: str | None = None,
              json_out=None, plot=None, progress: bool = True, shard: tuple[int, int] | None = None,
              merge: bool = True, config: dict | None = None) -> dict:
    """Run the NIAVH grid on ``haystack`` (:class:`ShapeWorldHaystack` or :class:`FileHaystack`).

    ``model_loader``: a model, or a callable returning one (called only if a cell is to be computed).
    ``lengths``/``depths``: lists of numbers or ``"60,300"`` strings. ``shard=(index, count)``: run that
    share only (default: accelerate's process, or all); ``merge=False``: do not aggregate. Returns (and on
    the main process writes to ``OUTPUT_DIR/results.json``, ``json_out`` and ``plot``) the results.
    """
    lengths, depths = parse_lengths(lengths), parse_depths(depths)
    cells = plan_cells(lengths, depths, repeats)
    fps = haystack.fps if fps is None else float(fps)
    if fps != haystack.fps:
        raise ConfigError(f"fps {fps:g} differs from the haystack's {haystack.fps:g}: build the haystack at that fps")
    if no_memory and not (isinstance(window_seconds, (int, float)) and math.isfinite(window_seconds)
                          and window_seconds > 0):
        raise ConfigError(f"--window-seconds {window_seconds!r}: must be > 0 seconds (the sliding window of "
                          "--no-memory)")
    haystack.check(lengths, depths)
    if plot:
        _matplotlib()
    if shard is None:
        index, count, barrier, _ = distributed()
    else:
        index, count = shard
        barrier = lambda: None   # noqa: E731
    main = index == 0
    if output_dir is None:
        if json_out:
            output_dir = Path(str(json_out) + ".cells")
        elif count == 1:
            output_dir = Path(tempfile.mkdtemp(prefix="mmlc-niavh-"))
        else:
            raise ConfigError("several processes need a shared --output-dir DIR (or --json OUT: cells go to "
                              "OUT.cells)")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {str(output_dir)!r} exists and is not a folder")
    (output_dir / CELLS).mkdir(parents=True, exist_ok=True)
    stream_options: dict = {}
    if threshold is not None:
        stream_options["threshold"] = threshold
    if max_reply_tokens is not None:
        stream_options["max_reply_tokens"] = max_reply_tokens
    if no_memory:
        stream_options["window_seconds"] = float(window_seconds)
    cfg = {"task": "niavh", "haystack": haystack.describe(), "lengths": lengths, "depths": depths,
           "repeats": repeats, "fps": fps, "model": model_name,
           "memory": memory_label(no_memory, window_seconds),
           "window_seconds": float(window_seconds) if no_memory else None,
           "threshold": threshold, "max_reply_tokens": max_reply_tokens, "num_processes": count,
           "output_dir": str(output_dir),
           "scoring": "exact match after normalize_text" + (" + judge 1-10" if judge else ""),
           "depth": "needle's first frame = round(depth/100 * (n_frames - needle_frames)), n_frames = round(L * fps)",
           "question_time": "after the last frame (t = n_frames / fps)"}
    if judge is not None:
        cfg["judge"] = {"base_url": getattr(judge, "base_url", None), "model": getattr(judge, "model", None),
                        "retries": getattr(judge, "retries", None), "timeout": getattr(judge, "timeout", None),
                        "prompt": "niavh-rubric",
                        "prompt_sha1": hashlib.sha1(NIAVH_RUBRIC.encode("utf-8")).hexdigest()[:12]}
    cfg.update(config or {})
    from mmlc.models.loading import weights_id

    # a rerun resumes only on the same weights (a retrained model of the same name must not reuse cells)
    # (the digest of the weights file that model_name names, as the CLI passes it; None otherwise)
    cfg["weights"] = weights_id(model_name, cfg.get("init", "pretrained")) if model_name else None

    mine = shard_items(cells, index, count)
    model = None
    from tqdm.auto import tqdm

    bar = tqdm(mine, desc="niavh", unit="cell", disable=not progress or not main)
    for cell in bar:
        path = _cell_path(output_dir, cell)
        settings = _settings(haystack, cell, cfg)
        record = _check_settings(read_json(path), settings, path)
        if not _is_done(record):
            if model is None:
                model = model_loader if hasattr(model_loader, "stream") else model_loader()
                _check_window_support(model, fps, stream_options)
            inp = haystack.cell(cell)
            record = {"cell": cell.name, "length": cell.length, "depth": cell.depth, "repeat": cell.repeat,
                      "question": inp.question, "answer": inp.answer, "needle": inp.needle}
            try:
                record.update(run_cell(model, inp, fps, stream_options))
            except oom_errors() as err:
                record.update(prediction="", error=f"out of memory ({str(err).splitlines()[0][:200]})")
                empty_cache()
            record["exact"] = exact_match(record["prediction"], record["answer"])
            record["settings"] = settings
            write_json(path, record)
            if record.get("error") and main:
                warn(f"cell {cell.name} failed: {record['error']}")
        if judge is not None and _is_done(record) and _needs_judging(record, judge):
            record["judge"] = judge_cell(judge, record["question"], record["answer"], record["prediction"])
            write_json(path, record)
        if main:
            bar.set_postfix(cell=cell.name, exact=int(bool(record.get("exact"))))
    bar.close()
    barrier()
    if not merge:
        return {}
    results = collect_results(output_dir, haystack, cells, lengths, depths, cfg, judged=judge is not None)
    if main:
        write_json(output_dir / RESULTS, results)
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
            write_json(Path(json_out), results)
        if plot:
            plot_heatmap(results, plot)
    barrier()
    return results


def collect_results(output_dir, haystack, cells: list[Cell], lengths, depths, cfg: dict, judged: bool = False) -> dict:
    """Merge the per-cell files (in cell order) into the results: summary, cells, config."""
    output_dir = Path(output_dir)
    records = []
    for cell in cells:
        path = _cell_path(output_dir, cell)
        rec = read_json(path)
        try:
            rec = _check_settings(rec, _settings(haystack, cell, cfg), path)
        except ConfigError:
            rec = None
        records.append(rec)
    rows = [r if r is not None else {"cell": c.name, "length": c.length, "depth": c.depth, "repeat": c.repeat,
                                     "pending": True}
            for c, r in zip(cells, records)]
    rows = [{k: v for k, v in r.items() if k != "settings"} for r in rows]
    return {"summary": summarize(records, cells, lengths, depths, judged=judged), "cells": rows, "config": cfg}


def _check_window_support(model, fps: float, options: dict) -> None:
    """Fail clearly (before any cell) when the model's sessions have no sliding window for --no-memory."""
    if "window_seconds" not in options:
        return
    try:
        model.stream(fps=fps, **options)
    except ConfigError as err:
        if "unknown stream options" in str(err):
            raise ConfigError("--no-memory needs StreamSession's sliding window (model.stream(window_seconds=...)), "
                              f"which this mmlc does not have ({err}): update mmlc, or leave --no-memory out") from None
        raise


# ---------------------------------------------------------------------- command line
def add_niavh_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``mmlc eval niavh``."""
    p = parser
    p.add_argument("--haystack", default="shapeworld", metavar="shapeworld|FILE",
                   help="shapeworld (episodes generated from held-out seeds, with ShapeWorld's needle and needle "
                        "question) or a video file (needs --needle, --question, --answer)")
    p.add_argument("--needle", default=None, metavar="IMAGE|CLIP|text:WORDS",
                   help="an image (shown full-frame), a short video clip, or text:SOME WORDS (a caption drawn on the "
                        "haystack frames)")
    p.add_argument("--question", default=None, help="the question asked after the video (your own needle)")
    p.add_argument("--answer", default=None, help="its reference answer (exact match and the judge's reference)")
    p.add_argument("--needle-seconds", type=float, default=None, metavar="S",
                   help=f"how long the needle is shown (default: {SHAPEWORLD_NEEDLE_SECONDS:g} s for ShapeWorld's, "
                        f"{IMAGE_NEEDLE_SECONDS:g} s for an image or text, the whole clip for a clip)")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS, metavar="S,S,...",
                   help=f"haystack lengths in seconds (default {DEFAULT_LENGTHS})")
    p.add_argument("--depths", default=DEFAULT_DEPTHS, metavar="D,D,...",
                   help=f"needle depths in percent, 0-100 (default {DEFAULT_DEPTHS})")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="repeats per cell (ShapeWorld: seeds --seed .. --seed+N-1; default 1)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"first ShapeWorld seed (default {EVAL_SEED}, held out)")
    p.add_argument("--size", type=int, default=64, help="ShapeWorld frame size in px (default 64)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second streamed (default 2)")
    p.add_argument("--threshold", type=float, default=None, help="speak threshold (default: the model's)")
    p.add_argument("--max-reply-tokens", type=int, default=None, help="cap on tokens per reply (default: the model's)")
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                   help="preset name or model folder (default: the embedded mmlc-tiny)")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="'random' builds the preset without weights (plumbing tests)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (under accelerate: each process's own)")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    p.add_argument("--no-memory", action="store_true",
                   help="baseline: the same model with a sliding window of recent frames instead of memory")
    p.add_argument("--window-seconds", type=float, default=60.0, metavar="W",
                   help="the --no-memory window in seconds (default 60)")
    p.add_argument("--judge", action="store_true",
                   help="also score 1-10 with an LLM judge (NIAVH's protocol) through an OpenAI-compatible endpoint")
    p.add_argument("--judge-base-url", default=None, metavar="URL",
                   help="OpenAI-compatible API root (default: $OPENAI_BASE_URL or https://api.openai.com/v1)")
    p.add_argument("--judge-model", default="gpt-4o", metavar="NAME", help="judge model (default gpt-4o)")
    p.add_argument("--judge-api-key", default=None, metavar="KEY", help="judge API key (default: $OPENAI_API_KEY)")
    p.add_argument("--judge-retries", type=int, default=5, metavar="N",
                   help="retries of a judge request after HTTP 429/5xx, timeouts or connection errors")
    p.add_argument("--judge-timeout", type=float, default=120.0, metavar="S", help="seconds per judge request")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results (summary, every cell, config) here")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="heatmap of lengths x depths (needs matplotlib)")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="per-cell files (a rerun resumes finished cells); default OUT.cells beside --json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def make_haystack(args):
    """The haystack the flags describe (files are read and checked now, before the model loads)."""
    _check_fps(args.fps)
    needle = load_needle(args.needle, args.needle_seconds, args.fps) if args.needle is not None else None
    if args.haystack == "shapeworld":
        return ShapeWorldHaystack(fps=args.fps, size=args.size, seed=args.seed, needle=needle,
                                  question=args.question, answer=args.answer, needle_seconds=args.needle_seconds)
    if args.haystack is None or not str(args.haystack).strip():
        raise ConfigError("--haystack is empty: pass shapeworld or a video file")
    if args.seeds > 1:
        warn(f"--seeds {args.seeds} with a video haystack repeats the same cells (the haystack and needle do not "
              "depend on the seed)")
    return FileHaystack(args.haystack, needle, args.question, args.answer, fps=args.fps)


def cmd_niavh(args) -> int:
    """Run ``mmlc eval niavh`` from parsed flags; prints the summary JSON (main process) and returns 0."""
    lengths, depths = parse_lengths(args.lengths), parse_depths(args.depths)
    plan_cells(lengths, depths, args.seeds)
    if args.haystack == "shapeworld" and not 16 <= args.size <= 1024:
        raise ConfigError(f"--size {args.size}: must be in 16-1024 px")
    if args.max_reply_tokens is not None and args.max_reply_tokens < 1:
        raise ConfigError(f"--max-reply-tokens {args.max_reply_tokens}: must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold {args.threshold}: must be a probability in 0-1")
    haystack = make_haystack(args)
    haystack.check(lengths, depths)
    if args.plot:
        _matplotlib()
    judge = make_judge(args) if args.judge else None
    index, count, _, device = distributed()
    dev = args.device
    if dev is None and count > 1 and device is not None:   # each process on its own device
        dev = "cpu" if device.type == "cpu" else str(device)
    name = (args.model or "mmlc-tiny") + (" (random init)" if args.init == "random" else "")

    def loader():
        import mmlc

        return mmlc.load(args.model, device=dev, dtype=args.dtype, init=args.init)

    results = run_niavh(loader, haystack, lengths=lengths, depths=depths, repeats=args.seeds,
                        output_dir=args.output_dir, fps=args.fps, no_memory=args.no_memory,
                        window_seconds=args.window_seconds, threshold=args.threshold,
                        max_reply_tokens=args.max_reply_tokens, judge=judge, model_name=name, json_out=args.json,
                        plot=args.plot, progress=not args.no_progress,
                        config={"init": args.init, "device": dev, "dtype": args.dtype})
    if index == 0:
        summary = dict(results["summary"])
        summary["memory"] = results["config"]["memory"]
        summary["model"] = name
        summary["results"] = str(Path(results["config"]["output_dir"]) / RESULTS)
        print(json.dumps(summary, indent=2, ensure_ascii=False), flush=True)
    return 0


def main(argv=None) -> int:
    """``python -m mmlc.evals.niavh`` (or ``accelerate launch -m mmlc.evals.niavh``) with the same flags."""
    return run_cli(add_niavh_args, cmd_niavh, "mmlc eval niavh", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
