"""Training examples of the tiny recipe's stages, as LIVE timelines over ShapeWorld frames.

Each example is a timeline of layout items (Frame / Reply / Question) plus the frames it shows and
the frame before the first (for towers that see the previous frame). The model's layout turns it
into tokens and labels exactly as the streaming session will feed them.

Stages (TRIALS.md: grounding comes from many short, dense examples, then whole streams):

- ``align``: one frame -> its description ("a teal room with a red circle.") and questions about
  its state; the frame's speak decision is not labelled (it is not a stream).
- ``change``: 2-5 consecutive frames ending at an event frame half of the time: the event's sentence
  at its frame, silence elsewhere (speak decisions balanced).
- ``stream``: crops of whole episodes (20-40 frames 45%, 60-120 frames 30%, the whole episode 25%)
  with narration at event frames and questions at their times, memory and needle questions kept only
  when what they ask about is inside the crop.
- ``chat``: multi-image dialogues (2-4 still ShapeWorld images, 3-6 turns: questions about one image,
  comparisons across images, follow-ups such as "and in image 2?" that need the earlier turn), mixed
  with question-dense stream crops and ``stream`` crops so that chat does not wash out streaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmlc.data import shapeworld as sw
from mmlc.models.layout import Frame, Question, Reply, Turn

STAGES = ("align", "change", "stream", "chat", "polish", "qa")


@dataclass
class Example:
    """A timeline and its frames: ``frames[k]`` is the k-th Frame item's picture (H, W, 3) uint8."""

    items: list
    frames: np.ndarray
    previous: np.ndarray
    decisions: bool = True
    still: bool = False          # independent still images (chat): each is its own previous frame
    meta: dict = field(default_factory=dict)


def training_world(rng: np.random.Generator, duration: float | None = None) -> sw.WorldConfig:
    """The world the tiny model trains on: 60-120 s episodes at 2 fps, 64 px, a needle 1 in 4."""
    dur = float(duration if duration is not None else rng.choice([60.0, 90.0, 120.0]))
    return sw.WorldConfig(duration=dur, needle=bool(rng.random() < 0.25))


def episode(rng: np.random.Generator, duration: float | None = None) -> sw.Episode:
    return sw.generate_episode(int(rng.integers(0, 2**31 - 1)), training_world(rng, duration))


def align_example(rng: np.random.Generator) -> Example:
    ep = episode(rng, 60.0)
    i = int(rng.integers(0, ep.n_frames))
    state = ep.states[i]
    items: list = [Frame(0), Reply(sw.describe_state(state))]
    qs = sw.state_questions(state)
    for k in rng.permutation(len(qs))[: int(rng.integers(1, 3))]:
        items.append(Question(*qs[int(k)]))
    return Example(items, ep.frame(i)[None], ep.frame(max(i - 1, 0)), decisions=False, meta={"stage": "align"})


def change_example(rng: np.random.Generator) -> Example:
    ep = episode(rng, 60.0)
    event_frames = [i for i in narration_by_frame(ep.truth()) if i > 0]
    k = int(rng.integers(2, 6))
    if event_frames and rng.random() < 0.5:
        end = int(rng.choice(event_frames))
    else:
        end = int(rng.integers(1, ep.n_frames))
    start = max(0, end - k + 1)
    return _crop(ep, start, end + 1, questions=False, stage="change")


def stream_example(rng: np.random.Generator) -> Example:
    ep = episode(rng)
    r = rng.random()
    if r < 0.45:
        length = int(rng.integers(20, 41))
    elif r < 0.75:
        length = int(rng.integers(60, 121))
    else:
        length = ep.n_frames
    length = min(length, ep.n_frames)
    start = int(rng.integers(0, ep.n_frames - length + 1))
    return _crop(ep, start, start + length, questions=True, stage="stream")


def multi_image_example(rng: np.random.Generator) -> Example:
    """A ShapeWorld multi-image dialogue as chat turns (images listed in the first turn, as
    :class:`~mmlc.streaming.chat.ChatSession` places them when the text has no markers)."""
    from mmlc.streaming.chat import turn_parts

    mi = sw.generate_multi_image(int(rng.integers(0, 2**31 - 1)))
    items = []
    for j, turn in enumerate(mi.turns):
        parts = turn_parts(turn["question"], len(mi.images) if j == 0 else 0)
        items.append(Turn(parts, turn["answer"]))
    frames = np.stack(mi.images)
    return Example(items, frames, frames[0], decisions=False, still=True, meta={"stage": "chat", "seed": mi.seed})


def qa_stream_example(rng: np.random.Generator) -> Example:
    """A 10-60 frame stream crop with its narration and 3-6 extra state questions at random frames
    (answers from the state then): the first mmlc-tiny streamed narration well (F1 0.87) but answered
    state questions at 0.63, leaning on answer priors, after a stream stage where questions were a
    small share of the labels."""
    ep = episode(rng, 60.0)
    length = int(rng.integers(10, 61))
    start = int(rng.integers(0, ep.n_frames - length + 1))
    items = timeline(ep.truth(), start, start + length, questions=False)
    frame_pos = [k for k, it in enumerate(items) if isinstance(it, Frame)]
    chosen = sorted(rng.choice(len(frame_pos), size=min(len(frame_pos), int(rng.integers(3, 7))), replace=False))
    for n in reversed(chosen):                 # insert after the frame's own reply, back to front
        k = frame_pos[n] + 1
        if k < len(items) and isinstance(items[k], Reply):
            k += 1
        qs = sw.state_questions(ep.states[start + int(n)])
        q, a = qs[int(rng.integers(len(qs)))]
        items.insert(k, Question(q, a))
    frames = np.stack([ep.frame(i) for i in range(start, start + length)])
    return Example(items, frames, ep.frame(max(start - 1, 0)), meta={"stage": "qa", "seed": ep.seed})


def chat_example(rng: np.random.Generator) -> Example:
    """The last stage's mix: multi-image dialogues 40%, question-dense stream crops 30%, streams 30%."""
    r = rng.random()
    if r < 0.4:
        return multi_image_example(rng)
    return qa_stream_example(rng) if r < 0.7 else stream_example(rng)


def polish_example(rng: np.random.Generator) -> Example:
    """A final lower-rate stage: question-dense crops 35%, streams 30%, multi-image dialogues 35%
    (after the chat stage, state QA was 0.77 and multi-image exact match 0.48)."""
    r = rng.random()
    if r < 0.35:
        return qa_stream_example(rng)
    return stream_example(rng) if r < 0.65 else multi_image_example(rng)


def qa_example(rng: np.random.Generator) -> Example:
    """Questions first: question-dense crops 50%, multi-image dialogues 30%, streams 20% (after
    polish, state QA was 0.877 and multi-image exact match 0.51 while narration F1 was 0.906)."""
    r = rng.random()
    if r < 0.5:
        return qa_stream_example(rng)
    return multi_image_example(rng) if r < 0.8 else stream_example(rng)


BUILDERS = {"align": align_example, "change": change_example, "stream": stream_example, "chat": chat_example,
            "polish": polish_example, "qa": qa_example}


def episode_example(ep: sw.Episode, questions: bool = True) -> Example:
    """The whole episode as one timeline (evaluation uses it for teacher-forced metrics)."""
    return _crop(ep, 0, ep.n_frames, questions=questions, stage="episode")


def narration_by_frame(truth: dict) -> dict[int, str]:
    """Frame index -> the narration sentence said after that frame."""
    return {int(round(n["t"] * truth["fps"])): n["text"] for n in truth["narration"]}


def timeline(truth: dict, start: int, stop: int, *, questions: bool = True) -> list:
    """Layout items of frames [start, stop) of an episode's ground truth.

    Each frame is followed by its narration sentence (also at a crop's first frame: the tower sees
    the frame before it), then by the questions asked at its time. Memory and needle questions are
    kept only when what they ask about lies inside the crop.
    """
    said = narration_by_frame(truth)
    fps = truth["fps"]
    asked: dict[int, list[Question]] = {}
    if questions:
        for qa in truth["qa"]:
            i = int(round(qa["t"] * fps))
            if start <= i < stop and _answerable(qa, truth, start / fps):
                asked.setdefault(i, []).append(Question(qa["question"], qa["answer"]))
    items: list = []
    for n, i in enumerate(range(start, stop)):
        items.append(Frame(n))
        if i in said:
            items.append(Reply(said[i]))
        items.extend(asked.get(i, []))
    return items


def _crop(ep: sw.Episode, start: int, stop: int, *, questions: bool, stage: str) -> Example:
    items = timeline(ep.truth(), start, stop, questions=questions)
    frames = np.stack([ep.frame(i) for i in range(start, stop)])
    return Example(items, frames, ep.frame(max(start - 1, 0)), meta={"stage": stage, "seed": ep.seed,
                                                                     "start": start, "stop": stop})


def _answerable(qa: dict, truth: dict, crop_start_t: float) -> bool:
    """Memory questions need the previous scene inside the crop; needle questions the needle."""
    if qa["kind"] == "memory":
        starts = [s["start"] for s in truth["scenes"] if s["start"] <= qa["t"]]
        previous_scene_start = starts[-2] if len(starts) >= 2 else 0.0
        return crop_start_t <= previous_scene_start + 1e-6
    if qa["kind"] == "needle":
        return all(crop_start_t <= n["t_start"] + 1e-6 for n in truth["needles"])
    return True
