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
- ``memory``: a stream with memory: the episode cut into scenes as a memory stream cuts it (at its
  scene cuts and every ``max_scene_frames``); every scene before the current one becomes a Memory
  item (the bridge's memory tokens + what was said in it), the current scene is streamed with its
  narration and questions, including questions about earlier scenes and the needle (mixed with the
  earlier stages' examples so that nothing else is forgotten).
- ``chat``: multi-image dialogues (2-4 still ShapeWorld images, 3-6 turns: questions about one image,
  comparisons across images, follow-ups such as "and in image 2?" that need the earlier turn), mixed
  with question-dense stream crops and ``stream`` crops so that chat does not wash out streaming.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import numpy as np

from mmlc.data import shapeworld as sw
from mmlc.models.layout import Frame, Memory, Question, Reply, Turn

STAGES = ("align", "change", "stream", "chat", "polish", "qa", "memory", "memalign", "long", "refresh", "final",
          "tags", "grid", "dialogues", "words", "recall", "recall_tagged",
          "settle")
# the tiny preset's memory streams cut scenes at 32 s (64 frames at 2 fps)
MAX_SCENE_FRAMES = 64


@dataclass
class Example:
    """A timeline and its frames: ``frames[k]`` is the k-th Frame item's picture (H, W, 3) uint8."""

    items: list
    frames: np.ndarray
    previous: np.ndarray
    decisions: bool = True
    still: bool = False          # independent still images (chat): each is its own previous frame
    meta: dict = field(default_factory=dict)
    # memory streams: ``frames`` also holds the earlier scenes' frames; Frame item n shows
    # frames[frame_offset + n], the k-th Memory item folds frames[memory_spans[k][0]:memory_spans[k][1]]
    frame_offset: int = 0
    memory_spans: list = field(default_factory=list)


def _object_look(state: dict, shape: str | None, frame_size: int):
    """The box of the object of shape ``shape`` in ``state`` (None: no shape named, or none there)."""
    obj = next((o for o in state["objects"] if o["shape"] == shape), None) if shape else None
    return None if obj is None else sw.object_box(obj, frame_size)


def state_look(state: dict, question: str, index: int, frame_size: int) -> list:
    """The ``look`` of a state question asked at frame ``index``: the named object's box for "what
    colour is the X?" / "how big is the X?", else the whole frame."""
    obj = sw.question_subject(state, question)
    return [(index, None if obj is None else sw.object_box(obj, frame_size))]


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
        q, a = qs[int(k)]
        items.append(Question(q, a, look=state_look(state, q, 0, ep.config.size)))
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


def _mix(rng: np.random.Generator, below: list, otherwise):
    """A stage's mix of builders: one uniform draw r; the first ``(threshold, builder)`` with r < threshold
    builds the example (thresholds cumulative), else ``otherwise``."""
    r = rng.random()
    return next((build for t, build in below if r < t), otherwise)(rng)


def multi_image_example(rng: np.random.Generator, n_turns: tuple[int, int] | None = None) -> Example:
    """A ShapeWorld multi-image dialogue as chat turns (images listed in the first turn, as
    :class:`~mmlc.streaming.chat.ChatSession` places them when the text has no markers); ``n_turns``
    as in :func:`~mmlc.data.shapeworld.generate_multi_image` (default 3-6 turns)."""
    from mmlc.streaming.chat import turn_parts

    mi = sw.generate_multi_image(int(rng.integers(0, 2**31 - 1)), n_turns=n_turns)
    items = []
    for j, turn in enumerate(mi.turns):
        parts = turn_parts(turn["question"], len(mi.images) if j == 0 else 0)
        look = [(k, _object_look(mi.states[k], shape, mi.config.size)) for k, shape in turn["about"]]
        items.append(Turn(parts, turn["answer"], look=look))
    frames = np.stack(mi.images)
    return Example(items, frames, frames[0], decisions=False, still=True, meta={"stage": "chat", "seed": mi.seed})


def dense_dialogue_example(rng: np.random.Generator) -> Example:
    """A multi-image dialogue of 8-15 turns (11 on average; the images' questions run out sooner for
    small sets): the same images and kinds of question, 2.5x the answers for about 1.5x the tokens of
    a 3-6 turn one. The shipped model of stage 13 learnt chat slowly: 450 steps of dialogues alone
    raised ShapeWorld MMDU only 0.58 -> 0.67, with "... in image 3?" answered about the wrong image
    at 4 images half the time."""
    return multi_image_example(rng, n_turns=(8, 16))


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
        q, a, look = _state_qa(ep, start + int(n), int(n), rng)
        items.insert(k, Question(q, a, look=look))
    frames = np.stack([ep.frame(i) for i in range(start, start + length)])
    return Example(items, frames, ep.frame(max(start - 1, 0)), meta={"stage": "qa", "seed": ep.seed})


def chat_example(rng: np.random.Generator) -> Example:
    """The last stage's mix: multi-image dialogues 40%, question-dense stream crops 30%, streams 30%."""
    return _mix(rng, [(0.4, multi_image_example), (0.7, qa_stream_example)], stream_example)


def polish_example(rng: np.random.Generator) -> Example:
    """A final lower-rate stage: question-dense crops 35%, streams 30%, multi-image dialogues 35%
    (after the chat stage, state QA was 0.77 and multi-image exact match 0.48)."""
    return _mix(rng, [(0.35, qa_stream_example), (0.65, stream_example)], multi_image_example)


def qa_example(rng: np.random.Generator) -> Example:
    """Questions first: question-dense crops 50%, multi-image dialogues 30%, streams 20% (after
    polish, state QA was 0.877 and multi-image exact match 0.51 while narration F1 was 0.906)."""
    return _mix(rng, [(0.5, qa_stream_example), (0.8, multi_image_example)], stream_example)


def memory_segments(truth: dict, max_frames: int = MAX_SCENE_FRAMES) -> list[tuple[int, int]]:
    """Frame spans of the scenes a memory stream closes: the episode's scenes, each cut every
    ``max_frames`` frames (the session's ``max_scene_seconds``)."""
    spans = []
    for sc in truth["scenes"]:
        a, b = int(sc["start_frame"]), int(sc["end_frame"])
        spans += [(s, min(s + max_frames, b)) for s in range(a, b, max_frames)]
    return spans


def memory_stream_example(rng: np.random.Generator, max_frames: int = MAX_SCENE_FRAMES) -> Example:
    """Earlier scenes as Memory items, then a crop of the current scene from its first frame, with 1-3
    extra questions that need the memory (the needle, the previous room's state) where there are any."""
    ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)),
                             sw.WorldConfig(duration=float(rng.choice([60.0, 60.0, 90.0, 120.0])),
                                            needle=bool(rng.random() < 0.6)))
    truth = ep.truth()
    spans = memory_segments(truth, max_frames)
    k = int(rng.integers(1, len(spans))) if len(spans) > 1 else 0
    start, end = spans[k]
    stop = int(rng.integers(min(start + 8, end), end + 1))
    current = timeline(truth, start, stop, seen_from=0.0)
    _add_memory_questions(rng, ep, truth, current, start, int(rng.integers(1, 4)), spans[:k])
    return _memory_example(ep, truth, spans[:k], current, start, stop, "memory")


def _memory_example(ep: sw.Episode, truth: dict, closed: list[tuple[int, int]], current: list, start: int,
                    stop: int, stage: str) -> Example:
    """The closed scenes ``closed`` as Memory items (memory tokens + what was said in each), then the
    ``current`` timeline from frame ``start``; frames [0, stop) go to the tower, with the probe's targets."""
    items: list = [Memory(None, [it for it in timeline(truth, a, b, seen_from=0.0) if not isinstance(it, Frame)])
                   for a, b in closed]
    frames = np.stack([ep.frame(i) for i in range(stop)])
    return Example(items + current, frames, frames[0], frame_offset=start, memory_spans=closed,
                   meta={"stage": stage, "seed": ep.seed, "start": start, "stop": stop,
                         "memory_targets": [memory_targets(ep, truth, a, b) for a, b in closed]})


def _memory_qa(ep: sw.Episode, truth: dict, f: int, closed: list[tuple[int, int]]) -> list[tuple[str, str, list]]:
    """Every question at frame ``f`` that needs the memory, with its ``look`` (the Memory item, one per
    span of ``closed``, that holds the answer): the needle once it has gone, the previous room and
    each of its objects' colours."""
    asked = []
    if truth["needles"] and truth["needles"][0]["frame_end"] <= f:
        needle = truth["needles"][0]
        asked.append((sw.NEEDLE_QUESTION, sw.needle_answer(needle), _needle_look(needle, closed)))
    scene = ep.states[f]["scene"]
    if scene >= 1:
        scene_start = int(truth["scenes"][scene]["start_frame"])
        previous = ep.states[scene_start - 1]
        room = "what colour was the room before?"
        asked.append((room, f"{previous['room']}.", _previous_scene_look(closed, scene_start, room)))
        for o in previous["objects"]:
            q = f"what colour was the {o['shape']} in the previous scene?"
            asked.append((q, f"{o['colour']}.", _previous_scene_look(closed, scene_start, q)))
    return asked


# needle looks name the needle's own place (inside tagged_needle_looks()): in a Memory item the token
# that carries its shape's tag (memory.tags: token 1 + the shape's index in frames.words), in a frame
# the needle's cells; outside, a needle question looks at the whole memory block or frame. A context
# variable rather than an argument: the needle builders sit two or three calls below the stage mixes.
_TAGGED_NEEDLE_LOOKS: contextvars.ContextVar[bool] = contextvars.ContextVar("tagged_needle_looks", default=False)
_TAGGED_SCENE_LOOKS: contextvars.ContextVar[bool] = contextvars.ContextVar("tagged_scene_looks", default=False)


@contextlib.contextmanager
def tagged_needle_looks(previous_scene: bool = False):
    """Needle questions built inside look at the needle's tag token and cells (stages 26-28); with
    ``previous_scene``, questions about the previous scene look at its last memory block's token that
    carries the answer (the room's, token 0; a shape's, token 1 + its index). Tried in ``settle`` (120
    steps from stage 27): earlier-scene QA on the second held-out set 1/14 against 2/14 without, so no
    recipe stage uses it yet."""
    tokens = _TAGGED_NEEDLE_LOOKS.set(True), _TAGGED_SCENE_LOOKS.set(previous_scene)
    try:
        yield
    finally:
        _TAGGED_NEEDLE_LOOKS.reset(tokens[0])
        _TAGGED_SCENE_LOOKS.reset(tokens[1])


def _needle_look(needle: dict, closed: list[tuple[int, int]], start: int | None = None, stop: int = 0) -> list:
    """Where a needle question is answered from: the Memory items (one per span of ``closed``) and the
    frames of the current crop [start, stop) that showed the needle."""
    a0, b0 = needle["frame_start"], needle["frame_end"]
    tagged = _TAGGED_NEEDLE_LOOKS.get()
    token = ("token", 1 + len(sw.SHAPES) + list(sw.NEEDLE_SHAPES).index(needle["shape"])) if tagged else None
    look = [(("memory", j), token) for j, (a, b) in enumerate(closed) if a < b0 and a0 < b]
    if start is not None:
        box = sw.object_box(needle, sw.WorldConfig().size) if tagged else None
        look += [(i - start, box) for i in range(max(a0, start), min(b0, stop))]
    return look


def recall_tagged_example(rng: np.random.Generator) -> Example:
    """The ``recall`` mix with needle looks at the needle's tag token and cells (and so a ``readall``
    look at every tag word of its answer)."""
    with tagged_needle_looks():
        return recall_example(rng)


def settle_example(rng: np.random.Generator) -> Example:
    """The ``settle`` stage after the copy head's (stage 28 of ``tiny``): the needle practised as in
    ``recall_tagged`` but narration back at the share it had before the needle stages. Stage 27's mix
    (:func:`recall_example`) has 5% stream crops; after it, narration F1 on the second held-out set was
    0.888 (0.906 before stage 24), and some lost replies ended with a shape word the copy head had
    written. Needle in memory 25%, needle in the frames 10%, long memory streams 15%, stream crops 30%,
    question-dense crops 10%, dense multi-image dialogues 10%; needle looks on the tag token and cells."""
    with tagged_needle_looks():
        return _mix(rng, [(0.25, needle_memory_example), (0.35, needle_frames_example),
                          (0.5, long_memory_example), (0.8, stream_example), (0.9, qa_stream_example)],
                    dense_dialogue_example)


def _previous_scene_look(closed: list[tuple[int, int]], scene_start: int, question: str = "") -> list:
    """The Memory item of the span that ended the previous scene (none when it is not a memory); inside
    ``tagged_needle_looks(previous_scene=True)`` its token that carries the answer to ``question``: the
    shape's (memory token 1 + the shape's index) when the question names one, else the room's (token 0)."""
    target = None
    if _TAGGED_SCENE_LOOKS.get():
        named = [w for w in question.rstrip("?").split() if w in sw.SHAPES]
        target = ("token", 1 + list(sw.SHAPES).index(named[0]) if named else 0)
    return [(("memory", j), target) for j, (a, b) in enumerate(closed) if b == scene_start]


def _state_qa(ep: sw.Episode, f: int, index: int, rng: np.random.Generator) -> tuple[str, str, list]:
    """One state question at frame ``f`` (Frame item ``index``), with its look."""
    qs = sw.state_questions(ep.states[f])
    q, a = qs[int(rng.integers(len(qs)))]
    return q, a, state_look(ep.states[f], q, index, ep.config.size)


MEMORY_TARGETS = {"needle_shape": 1 + len(sw.NEEDLE_SHAPES), "needle_colour": 1 + len(sw.COLOURS),
                  "room": len(sw.ROOMS), **{f"{shape}_colour": 1 + len(sw.COLOURS) for shape in sw.SHAPES}}


def memory_targets(ep: sw.Episode, truth: dict, a: int, b: int) -> dict[str, int]:
    """What a scene's memory should hold, as class indices (0 = none): the needle shown in frames
    [a, b) (shape, colour), the room and each shape's colour at the scene's last frame. The memory
    stages train a probe on the bridge's memory with these (a direct signal for the bridge, as the
    vision stage's heads were for the tower)."""
    colours, last = list(sw.COLOURS), ep.states[b - 1]
    t = {"needle_shape": 0, "needle_colour": 0, "room": list(sw.ROOMS).index(last["room"])}
    for n in truth["needles"]:
        if a <= n["frame_start"] < b or a < n["frame_end"] <= b:
            t["needle_shape"] = 1 + list(sw.NEEDLE_SHAPES).index(n["shape"])
            t["needle_colour"] = 1 + colours.index(n["colour"])
    for shape in sw.SHAPES:
        obj = next((o for o in last["objects"] if o["shape"] == shape), None)
        t[f"{shape}_colour"] = 0 if obj is None else 1 + colours.index(obj["colour"])
    return t


def _ask_after_memories(rng: np.random.Generator, ep: sw.Episode, truth: dict, spans: list[tuple[int, int]], k: int,
                        stop: int, stage: str, pick) -> Example:
    """``spans[:k]`` as Memory items, then frames [spans[k][0], stop) and the questions that ``pick``
    chooses (indices) from those that need the memory at frame ``stop - 1`` plus one state question."""
    start = spans[k][0]
    asked = _memory_qa(ep, truth, stop - 1, spans[:k])
    asked.append(_state_qa(ep, stop - 1, stop - 1 - start, rng))
    current = timeline(truth, start, stop, questions=False) + [Question(*asked[int(j)]) for j in pick(asked)]
    return _memory_example(ep, truth, spans[:k], current, start, stop, stage)


def memory_align_example(rng: np.random.Generator, max_frames: int = MAX_SCENE_FRAMES) -> Example:
    """Dense memory practice: earlier scenes as Memory items, then 1-4 frames of the current scene and
    2-4 questions that need the memory (the needle, 70% of episodes have one; the previous room and its
    objects), asked at once: many memory answers a step for little LM work."""
    ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)),
                             sw.WorldConfig(duration=float(rng.choice([60.0, 90.0])), needle=bool(rng.random() < 0.7)))
    truth = ep.truth()
    spans = memory_segments(truth, max_frames)
    k = int(rng.integers(1, len(spans))) if len(spans) > 1 else 0
    start, end = spans[k]
    stop = min(end, start + int(rng.integers(1, 5)))
    return _ask_after_memories(rng, ep, truth, spans, k, stop, "memalign",
                               lambda asked: rng.permutation(len(asked))[: int(rng.integers(2, 5))])


def needle_memory_example(rng: np.random.Generator, max_frames: int = MAX_SCENE_FRAMES) -> Example:
    """Needle practice: a 60-300 s episode whose needle sits in an earlier memory block, then 1-4 frames
    of a later scene and the needle question with 1-2 others. A linear probe on the frozen tower reads
    the needle's colour at 1.00 from its 4x4 cell token (0.90 from the 2x2 one the bridge folds), but
    from the bridge's memory of the scene at 0.53 (``benchmarks/needle_probe.py``): the bridge drops
    it. Measured, not in a recipe: 200 steps of the ``needle`` stage on top of stage 17 raised that to
    0.63 and left NIAVH at an answer prior (README, Memory and NIAVH)."""
    duration = float(rng.choice([60.0, 120.0, 180.0, 300.0]))
    n_rooms = max(2, int(round(duration / 40.0)))
    world = sw.WorldConfig(duration=duration, min_scenes=max(2, n_rooms - 1), max_scenes=n_rooms + 2, needle=True)
    ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), world)
    truth = ep.truth()
    spans = memory_segments(truth, max_frames)
    needle_end = truth["needles"][0]["frame_end"]
    later = [k for k, (a, _) in enumerate(spans) if a >= needle_end]
    if not later:                                   # the needle is in the last span: nothing to remember
        return memory_align_example(rng, max_frames)
    k = int(later[int(rng.integers(len(later)))])
    start, end = spans[k]
    stop = min(end, start + int(rng.integers(1, 5)))
    return _ask_after_memories(rng, ep, truth, spans, k, stop, "needle",   # the needle question and 1-2 others
                               lambda asked: [0] + [1 + int(j) for j in rng.permutation(len(asked) - 1)[: int(rng.integers(1, 3))]])


def long_memory_example(rng: np.random.Generator, max_frames: int = MAX_SCENE_FRAMES) -> Example:
    """A NIAVH-like long stream: a 3-10 minute episode (one room every ~40 s on average, a needle in 80%
    of them at a random depth) folded into 6-20 memories, then the first 1-6 frames of the last scene
    and 2-3 questions about the needle and the previous room: the answer can sit many memories back,
    as in a long haystack (the other memory stages see at most a few)."""
    duration = float(rng.choice([180.0, 300.0, 420.0, 600.0]))
    n_rooms = max(2, int(round(duration / 40.0)))
    world = sw.WorldConfig(duration=duration, min_scenes=max(1, n_rooms - 2), max_scenes=n_rooms + 2,
                           needle=bool(rng.random() < 0.8))
    ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), world)
    truth = ep.truth()
    spans = memory_segments(truth, max_frames)
    k = len(spans) - 1
    start, end = spans[k]
    stop = min(end, start + int(rng.integers(1, 7)))
    def pick(asked: list) -> list[int]:
        if asked[0][0] == sw.NEEDLE_QUESTION:      # the needle question always, two others at random
            return [0] + [1 + int(j) for j in rng.permutation(len(asked) - 1)[:2]]
        return [int(j) for j in rng.permutation(len(asked))[:3]]
    return _ask_after_memories(rng, ep, truth, spans, k, stop, "long", pick)


def long_example(rng: np.random.Generator) -> Example:
    """The long-memory stage: long streams 45%, dense memory questions 25%, question-dense crops 15%,
    stream crops 15%."""
    return _mix(rng, [(0.45, long_memory_example), (0.7, memory_align_example), (0.85, qa_stream_example)],
                stream_example)


def refresh_example(rng: np.random.Generator) -> Example:
    """A last, short stage after the memory stages, which practise chat little (multi-image exact match
    fell from 0.53 to 0.45 through them): multi-image dialogues 45%, question-dense crops 25%, memory
    streams 15%, stream crops 15%."""
    return _mix(rng, [(0.45, multi_image_example), (0.7, qa_stream_example), (0.85, memory_stream_example)],
                stream_example)


def memalign_example(rng: np.random.Generator) -> Example:
    """Memory alignment mix: dense memory questions 60%, memory streams 25%, question-dense crops 15%."""
    return _mix(rng, [(0.6, memory_align_example), (0.85, memory_stream_example)], qa_stream_example)


def final_example(rng: np.random.Generator) -> Example:
    """The second recipe's last stage, after memory and chat: question-dense crops 45%, multi-image
    dialogues 30%, dense memory questions 15% (the LM keeps reading memories; the bridge is frozen),
    stream crops 10%."""
    return _mix(rng, [(0.45, qa_stream_example), (0.75, multi_image_example), (0.9, memory_align_example)],
                stream_example)


def tags_example(rng: np.random.Generator) -> Example:
    """The chat-heavy last stage of ``tiny`` (which also brings in image tags and the finer image grid): multi-image
    dialogues 50%, question-dense crops 30%, dense memory questions 10% (the LM keeps reading
    memories; the bridge is frozen), stream crops 10%."""
    return _mix(rng, [(0.5, multi_image_example), (0.8, qa_stream_example), (0.9, memory_align_example)],
                stream_example)


def grid_example(rng: np.random.Generator) -> Example:
    """The stage that moves streams to a finer frame grid (``Stage.frames_grid``): the LM relearns
    narration and the speak decision on the new tokens (stream crops 35%), with question-dense crops
    35%, multi-image dialogues 20% and dense memory questions 10% (the bridge frozen, still folding
    its own grid) so that nothing else slips."""
    return _mix(rng, [(0.35, stream_example), (0.7, qa_stream_example), (0.9, multi_image_example)],
                memory_align_example)


def dialogues_example(rng: np.random.Generator) -> Example:
    """Chat first, since it is the skill furthest from its target: dense multi-image dialogues 55%,
    question-dense crops 25% (state QA), stream crops 10% and dense memory questions 10% (the
    bridge frozen) so that narration and memory reading do not slip."""
    return _mix(rng, [(0.55, dense_dialogue_example), (0.8, qa_stream_example), (0.9, stream_example)],
                memory_align_example)


def look_example(rng: np.random.Generator) -> Example:
    """The ``look`` stage (the addressing loss, :mod:`mmlc.train.look`) trains on the ``dialogues`` mix:
    every answer in it says where it is read from."""
    return dialogues_example(rng)


def words_example(rng: np.random.Generator) -> Example:
    """The ``words`` stage (frame tokens newly carry the reader's word tags, :mod:`mmlc.models.reader`):
    question-dense crops 40% (the colour and size of a named object were what state QA missed),
    dense multi-image dialogues 35%, stream crops 15%, memory questions 10%."""
    return _mix(rng, [(0.4, qa_stream_example), (0.75, dense_dialogue_example), (0.9, stream_example)],
                memory_align_example)


def needle_example(rng: np.random.Generator) -> Example:
    """The ``needle`` stage (the bridge trains again): needle practice 40%
    (:func:`needle_memory_example`), long streams 25%, dense multi-image dialogues 15%, question-dense
    crops 10%, stream crops 10%."""
    return _mix(rng, [(0.4, needle_memory_example), (0.65, long_memory_example), (0.8, dense_dialogue_example),
                      (0.9, qa_stream_example)], stream_example)


def needle_frames_example(rng: np.random.Generator) -> Example:
    """The needle still in the current scene's frames (not yet folded into memory, as at NIAVH's deepest
    depths): a 20-60 frame crop that shows the needle, then the needle question after it has gone and
    1-2 state questions, each with its look (the needle's frames and cells)."""
    ep = sw.generate_episode(int(rng.integers(0, 2**31 - 1)), sw.WorldConfig(duration=60.0, needle=True))
    truth = ep.truth()
    needle = truth["needles"][0]
    a0, b0 = needle["frame_start"], needle["frame_end"]
    start = max(0, a0 - int(rng.integers(0, 40)))
    stop = min(ep.n_frames, max(b0 + int(rng.integers(1, 20)), start + 20))
    items = timeline(truth, start, stop, questions=False)
    frame_pos = [k for k, it in enumerate(items) if isinstance(it, Frame)]
    after = [i for i in range(b0 - start, stop - start)]
    f = int(after[int(rng.integers(len(after)))])
    asked = [(sw.NEEDLE_QUESTION, sw.needle_answer(needle), _needle_look(needle, [], start, start + f + 1))]
    asked += [_state_qa(ep, start + f, f, rng) for _ in range(int(rng.integers(1, 3)))]
    k = frame_pos[f] + 1
    while k < len(items) and not isinstance(items[k], Frame):
        k += 1
    for q, a, look in reversed([asked[int(j)] for j in rng.permutation(len(asked))]):
        items.insert(k, Question(q, a, look=look))
    return Example(items, np.stack([ep.frame(i) for i in range(start, stop)]), ep.frame(max(start - 1, 0)),
                   meta={"stage": "recall", "seed": ep.seed, "start": start, "stop": stop})


def recall_example(rng: np.random.Generator) -> Example:
    """The ``recall`` stage (memory tokens newly carry their scene's word tags, ``memory.tags``; the
    bridge frozen): the needle in an earlier memory 30% (:func:`needle_memory_example`), in the current
    frames 10% (:func:`needle_frames_example`), long streams of 6-20 memories 15%, dense memory
    questions 10%, question-dense crops 15%, dense multi-image dialogues 15%, stream crops 5%."""
    return _mix(rng, [(0.3, needle_memory_example), (0.4, needle_frames_example), (0.55, long_memory_example),
                      (0.65, memory_align_example), (0.8, qa_stream_example), (0.95, dense_dialogue_example)],
                stream_example)


def _add_memory_questions(rng, ep: sw.Episode, truth: dict, items: list, start: int, n: int,
                          closed: list[tuple[int, int]] = ()) -> None:
    """Insert ``n`` questions after random frames of ``items`` (a timeline from frame ``start``): the
    needle question once the needle has gone, a question about the previous room when there was one,
    else a question about the state now; each with its look (``closed``: the spans of the Memory items
    before ``items``)."""
    frame_pos = [k for k, it in enumerate(items) if isinstance(it, Frame)]
    needle_end = truth["needles"][0]["frame_end"] if truth["needles"] else None
    room_starts = [int(s["start_frame"]) for s in truth["scenes"]]
    chosen = sorted(rng.choice(len(frame_pos), size=min(n, len(frame_pos)), replace=False))
    for idx in reversed(chosen):
        f = start + int(idx)
        state = ep.states[f]
        options = []
        if needle_end is not None and f >= needle_end:
            options.append((sw.NEEDLE_QUESTION, sw.needle_answer(truth["needles"][0]),
                            _needle_look(truth["needles"][0], list(closed), start, f + 1)))
        scene = state["scene"]
        if scene >= 1:
            q, a = sw.memory_question(rng, ep.states[room_starts[scene] - 1])
            options.append((q, a, _previous_scene_look(list(closed), room_starts[scene], q)))
        if not options or rng.random() < 0.2:
            options = [_state_qa(ep, f, int(idx), rng)]
        q, a, look = options[int(rng.integers(len(options)))]
        k = frame_pos[idx] + 1
        while k < len(items) and not isinstance(items[k], Frame):
            k += 1
        items.insert(k, Question(q, a, look=look))


def memory_example(rng: np.random.Generator) -> Example:
    """The memory stage's mix: memory streams 55%, question-dense crops 20%, multi-image dialogues 15%,
    streams 10% (the earlier skills keep being practised while the bridge learns)."""
    return _mix(rng, [(0.55, memory_stream_example), (0.75, qa_stream_example), (0.9, multi_image_example)],
                stream_example)


BUILDERS = {"align": align_example, "change": change_example, "stream": stream_example, "chat": chat_example,
            "polish": polish_example, "qa": qa_example, "memory": memory_example, "memalign": memalign_example,
            "long": long_example, "refresh": refresh_example, "final": final_example,
            "tags": tags_example, "grid": grid_example, "dialogues": dialogues_example,
            "look": look_example, "needle": needle_example, "words": words_example, "recall": recall_example,
            "recall_tagged": recall_tagged_example, "settle": settle_example}


def episode_example(ep: sw.Episode, questions: bool = True) -> Example:
    """The whole episode as one timeline (evaluation uses it for teacher-forced metrics)."""
    return _crop(ep, 0, ep.n_frames, questions=questions, stage="episode")


def narration_by_frame(truth: dict) -> dict[int, str]:
    """Frame index -> the narration sentence said after that frame."""
    return {int(round(n["t"] * truth["fps"])): n["text"] for n in truth["narration"]}


def timeline(truth: dict, start: int, stop: int, *, questions: bool = True, seen_from: float | None = None) -> list:
    """Layout items of frames [start, stop) of an episode's ground truth.

    Each frame is followed by its narration sentence (also at a crop's first frame: the tower sees
    the frame before it), then by the questions asked at its time. Memory and needle questions are
    kept only when what they ask about lies inside what the model has seen: the crop, or from time
    ``seen_from`` on (a memory stream has seen the whole episode so far).
    """
    said = narration_by_frame(truth)
    fps = truth["fps"]
    asked: dict[int, list[Question]] = {}
    if questions:
        for qa in truth["qa"]:
            i = int(round(qa["t"] * fps))
            if start <= i < stop and _answerable(qa, truth, start / fps if seen_from is None else seen_from):
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
