"""StreamSession: the Python streaming API around a StreamingLM.

The session owns every piece of streaming state (the KV cache, the true position counter, the frame
clock, pending questions, the dialogue so far, the previous frame for temporal towers); the model is
stateless between calls, so many sessions can share one model. Per frame (LIVE, VideoLLM-online):

1. pending questions asked before this frame's time are inserted and answered;
2. the frame's chunk (interval token when the previous item was a frame, then its placeholders) is
   appended to the cache in one forward pass;
3. the decision: trigger ``live`` speaks when P(interval) at the frame's last position is below the
   threshold; ``interval`` speaks every ``interval_seconds``;
4. a reply is greedy-decoded into the same cache until ``{end}`` or ``max_reply_tokens`` (then
   ``{end}`` is appended so the turn is closed), and the stream resumes.

Memory (``memory=True``, the default for a model with a memory bridge; VideoLLaMB's recurrent
memory bridges over SceneTiling scenes): an online SceneTiling (on the pooled vision feature, with
``max_scene_seconds`` forcing a cut) closes each scene a few frames after it ends. The session then
folds the scene's frame features into memory tokens (:class:`~mmlc.models.memory.MemoryState`),
crops the KV cache back to where the scene began, appends ``<m>..<m>`` (the memory, placed by the
model's connector) and what was said in the scene (replies, questions and answers, as text), and
replays the frames the tiler had already seen of the new scene. The position counter goes back too,
so the context reads exactly like a training sequence of the ``memory`` stage (layout
:meth:`~mmlc.models.layout.StreamLayout.memory_block`). At most ``max_memories`` scene memories stay
in the context; the oldest leaves (its tokens are dropped from the cache; the recurrent memory and its
retrieval cache still carry it), so the KV length is bounded by the prefix, ``max_memories`` blocks
and one scene, however long the stream.

Token chunks come from the model's :class:`~mmlc.models.layout.StreamLayout`, the same builder that
makes training sequences. Frames from files are encoded by the vision tower in small batches ahead of
the LM (vision work does not depend on the LM's decisions).
"""

from __future__ import annotations

import heapq
from collections import deque
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from mmlc.config import TRIGGERS
from mmlc.errors import ConfigError, SourceError
from mmlc.streaming.decoder import CachedDecoder

EPS = 1e-6


@dataclass
class Event:
    """Something the stream produced at time ``t`` (seconds of stream time).

    kind: ``reply`` (the model spoke on its own), ``answer`` (to a user question, in ``question``),
    ``error`` (the source failed; the stream ended there), ``scene`` (with ``scenes=True``: a new
    scene starts at ``t``, its first frame in ``frame``; reported a few frames late, see
    :class:`~mmlc.streaming.scenes.OnlineSceneTiler`). ``frame`` is otherwise the number of frames seen
    when it happened; ``p_silent`` the interval probability at the decision, where there was one.
    """

    t: float
    kind: str
    text: str
    frame: int | None = None
    question: str | None = None
    p_silent: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


class StreamSession(CachedDecoder):
    """One stream over a shared model: ``feed`` a source or ``push_frame`` frames, ``ask`` questions."""

    def __init__(self, model, *, fps: float, threshold: float, trigger: str = "live",
                 interval_seconds: float = 10.0, max_reply_tokens: int = 48, system: str | None = None,
                 batch_frames: int = 16, keep_history: bool = False, profile: bool = False,
                 kv_cache: str = "growing", scenes: bool = False, max_scene_seconds: float = 128.0,
                 window_seconds: float | None = None, memory: bool = False, max_memories: int = 32):
        if not isinstance(fps, (int, float)) or fps <= 0:
            raise ConfigError(f"fps must be > 0, got {fps!r}: pass e.g. fps=2")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        if trigger not in TRIGGERS:
            raise ConfigError(f"trigger {trigger!r} is unknown: use one of {TRIGGERS}")
        if interval_seconds <= 0:
            raise ConfigError(f"interval_seconds must be > 0, got {interval_seconds!r}")
        if batch_frames < 1:
            raise ConfigError(f"batch_frames must be >= 1, got {batch_frames!r}")
        super().__init__(model, max_reply_tokens=max_reply_tokens, system=system, keep_history=keep_history,
                         profile=profile, kv_cache=kv_cache)
        self.fps = float(fps)
        self.threshold = float(threshold)
        self.trigger = trigger
        self.interval_seconds = float(interval_seconds)
        self.batch_frames = int(batch_frames)
        if max_scene_seconds <= 0:
            raise ConfigError(f"max_scene_seconds must be > 0, got {max_scene_seconds!r}")
        if window_seconds is not None and window_seconds <= 0:
            raise ConfigError(f"window_seconds must be > 0 (or None for no window), got {window_seconds!r}")
        self.window_seconds = window_seconds
        if memory and model.bridge is None:
            raise ConfigError("memory=True needs a model with a memory bridge (config memory.tokens > 0); this one "
                              "has none: stream with memory=False")
        if memory and window_seconds is not None:
            raise ConfigError("memory=True and window_seconds both bound the context: use one (memory=False for "
                              "the sliding-window baseline)")
        if not isinstance(max_memories, int) or isinstance(max_memories, bool) or max_memories < 1:
            raise ConfigError(f"max_memories must be an integer >= 1, got {max_memories!r}")
        self.memory = bool(memory)
        self.max_memories = max_memories
        self.emit_scenes = bool(scenes)
        self.scenes = bool(scenes) or self.memory   # memory needs the scene tiler
        self.max_scene_seconds = float(max_scene_seconds)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything: cache, clock, questions, dialogue."""
        self._reset_cache()
        self.frames_seen = 0
        self.clock = -math.inf     # time of the last frame fed
        self.dialogue: list[Event] = []
        self._pending: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._last_spoke = -math.inf
        self._prev_pixels: torch.Tensor | None = None
        self.last_logits: torch.Tensor | None = None  # (V,) at the last frame's decision
        self.frame_times: list[dict] = []   # with profile: per-frame timings (seconds)
        self._encode_share = 0.0
        self.scene_starts: list[int] = [0] if self.scenes else []
        self._tiler = None
        if self.scenes:
            from mmlc.streaming.scenes import OnlineSceneTiler

            self._tiler = OnlineSceneTiler(max_scene_frames=max(2, int(round(self.max_scene_seconds * self.fps))))
        # frame index -> time of the last few frames: a boundary is confirmed at most ``delay`` frames late
        self._recent_times: deque = deque(maxlen=self._tiler.delay + 2 if self._tiler else 0)
        self._frame_kv: list[int] = []    # with window_seconds: cache index where each kept frame's chunk starts
        # memory: what was fed since the current scene began (("frame", index, tokens, features) and
        # ("text", ids) entries), where that scene begins in the cache and in positions, the memory blocks'
        # cache spans, and the bridge's running memory
        self._scene_log: list[tuple] = []
        self._scene_kv: int | None = None
        self._scene_pos = 0
        self._blocks: list[list[int]] = []
        self._memory_state = None
        if self.memory:
            from mmlc.models.memory import MemoryState

            self._memory_state = MemoryState(self.model.bridge)

    def stats(self) -> dict:
        """Current KV length, true position, frames seen, pending questions and events so far; with
        scenes or memory the scenes closed, with memory the scene memories kept in the context."""
        stats = {"kv_length": self.kv_length, "position": self.position,
                 "frames_seen": self.frames_seen, "pending_questions": len(self._pending),
                 "events": len(self.dialogue)}
        if self.scenes:
            stats["scenes_closed"] = len(self.scene_starts) - 1
        if self.memory:
            stats["memories_kept"] = len(self._blocks)
        return stats

    # ------------------------------------------------------------------ public API
    def push_frame(self, frame, t: float | None = None) -> list[Event]:
        """Feed one frame (H, W, 3) RGB at time ``t`` (default: one frame period after the last)."""
        t = self._next_time(t)
        tokens, feats, words = self._encode([frame])
        return self._step(t, tokens[0], None if feats is None else feats[0], None if words is None else words[0])

    def feed(self, source, *, fps: float | None = None) -> Iterator[Event]:
        """Stream a source (path, ``webcam[:N]``, FrameSource, or iterable of ``(t, frame)``).

        Yields events as they happen. A source that fails mid-stream ends with an ``error`` event;
        events already yielded stand. Questions queued for times the stream reached are answered.
        """
        from mmlc.streaming.sources import open_source

        src = open_source(source, fps=fps or self.fps)
        batch = 1 if getattr(src, "live", False) else self.batch_frames
        try:
            it = iter(src)
            while True:
                items, error = _take(it, batch)
                if items:
                    tokens, feats, words = self._encode([f for _, f in items])
                    for k, ((t, _), tok) in enumerate(zip(items, tokens)):
                        for ev in self._step(self._next_time(t), tok, None if feats is None else feats[k],
                                             None if words is None else words[k]):
                            yield ev
                if error is not None:
                    ev = Event(t=max(self.clock, 0.0), kind="error", text=str(error), frame=self.frames_seen)
                    self.dialogue.append(ev)
                    yield ev
                    return
                if len(items) < batch:
                    return
        finally:
            src.close()

    def ask(self, question: str, t: float | None = None) -> Event | None:
        """Ask a question at time ``t`` (default: now).

        At or before the stream's clock it is inserted now, before the next frame, and the answer
        event is returned. A later ``t`` queues it: it is answered when the stream passes ``t`` (its
        answer comes out of ``feed``/``push_frame``) and ``None`` is returned.
        """
        if not isinstance(question, str) or not question.strip():
            raise ConfigError(f"question must be a non-empty string, got {question!r}")
        if t is not None and t > self.clock + EPS:
            heapq.heappush(self._pending, (float(t), next(self._counter), question))
            return None
        return self._respond(question, max(self.clock, 0.0) if t is None else float(t))

    def finish(self) -> list[Event]:
        """Answer every question still queued (at the end of a stream), in time order."""
        events = []
        while self._pending:
            tq, _, q = heapq.heappop(self._pending)
            events.append(self._respond(q, tq))
        return events

    # ------------------------------------------------------------------ steps
    def _step(self, t: float, frame_tokens: torch.Tensor, feats: torch.Tensor | None = None,
              words: torch.Tensor | None = None) -> list[Event]:
        """Insert due questions, append one frame, decide, maybe reply. ``feats`` (T, Dv): the frame's
        features at the vision width (with scenes or memory); ``words`` (T, Vw): its tokens' tag words
        (a model with a copy head)."""
        events = []
        while self._pending and self._pending[0][0] < t - EPS:
            tq, _, q = heapq.heappop(self._pending)
            events.append(self._respond(q, tq))
        if self._tiler is not None:
            events += self._scene_events(t, frame_tokens[0] if feats is None else feats[0])
        start = time.perf_counter() if self.profile else 0.0
        chunk = self.layout.frame(self.frames_seen, after_frame=self._last_item == "frame")
        if self.window_seconds is not None:
            self._start()
            self._frame_kv.append(self.kv_length)
        logits = self._forward(chunk, frame_tokens[None], None if words is None else words[None])
        if self.memory:
            self._scene_log.append(("frame", self.frames_seen, frame_tokens, feats, words))
        if self.window_seconds is not None:
            self._slide_window()
        self.last_logits = logits
        self.frames_seen += 1
        self.clock = t
        self._last_item = "frame"
        # P(interval) without a softmax over the vocabulary; the float() is the frame's one host sync
        p_silent = float(torch.exp(logits[self.layout.interval_id].float() - torch.logsumexp(logits.float(), -1)))
        if self.profile:
            self.frame_times.append({"t": t, "lm_s": time.perf_counter() - start, "vision_s": self._encode_share,
                                     "kv_length": self.cache.get_seq_length()})
        if self._should_speak(t, p_silent):
            events.append(self._reply(t, p_silent))
        return events

    @torch.inference_mode()
    def _slide_window(self) -> None:
        """Keep the most recent ``window_seconds`` of frames (and the dialogue between them) after the
        prefix; older tokens leave the cache in batches of a quarter window (amortised O(1) per frame).
        The true position counter is untouched: kept tokens keep their RoPE positions."""
        from mmlc.streaming.kv import drop_tokens

        keep = max(1, int(round(self.window_seconds * self.fps)))
        if len(self._frame_kv) <= keep + max(1, keep // 4):
            return
        cut = self._frame_kv[-keep]
        removed = cut - self.prefix_length
        drop_tokens(self.cache, self.prefix_length, cut)
        self._frame_kv = [k - removed for k in self._frame_kv[-keep:]]

    def _scene_events(self, t: float, pooled: torch.Tensor) -> list[Event]:
        """Feed this frame's pooled vision feature (at time ``t``) to the online SceneTiling; a ``scene``
        event for each boundary it confirms (reported a few frames late, with the boundary's own time)."""
        self._recent_times.append((self.frames_seen, t))
        times = dict(self._recent_times)
        events = []
        for b in self._tiler.push(pooled.float().cpu().numpy()):
            # a scene as long as max_scene_seconds was cut by the limit, not by a change in the picture
            forced = self._tiler.max_scene_frames is not None and b - self.scene_starts[-1] >= self._tiler.max_scene_frames
            self.scene_starts.append(b)
            if self.memory:
                self._close_scene(b)
            if self.emit_scenes:
                text = f"scene {len(self.scene_starts)} starts" + (
                    f" (the previous one reached max_scene_seconds={self.max_scene_seconds:g})" if forced else "")
                ev = Event(t=times.get(b, t), kind="scene", text=text, frame=b)
                self.dialogue.append(ev)
                events.append(ev)
        return events

    # ------------------------------------------------------------------ memory
    def _start(self) -> None:
        if not self._started:
            super()._start()
            self._scene_kv, self._scene_pos = self.kv_length, self.position

    def _forward_ids(self, ids, frame_tokens=None, need_logits=True, memory_tokens=None, tags=None,
                     frame_words=None, memory_words=None):
        logits = super()._forward_ids(ids, frame_tokens, need_logits, memory_tokens, tags, frame_words, memory_words)
        if self.memory and frame_tokens is None and self._scene_kv is not None:
            self._scene_log.append(("text", list(ids)))      # said during the current scene
        return logits

    @torch.inference_mode()
    def _close_scene(self, boundary: int) -> None:
        """The scene before frame ``boundary`` is closed: fold it, put its memory block where it began,
        replay what was fed since ``boundary``, and keep at most ``max_memories`` blocks."""
        from mmlc.streaming.kv import crop_tokens, drop_tokens

        cut = next((k for k, e in enumerate(self._scene_log) if e[0] == "frame" and e[1] >= boundary),
                   len(self._scene_log))
        scene, tail = self._scene_log[:cut], self._scene_log[cut:]
        feats = [e[3] for e in scene if e[0] == "frame"]
        if not feats:
            return
        feats = torch.stack(feats)
        memory = self._memory_state.add_scene(self.model.memory_features(feats))
        tokens, words = self.model.memory_embeddings(memory, feats, words=True)
        tokens = tokens[0]   # words: (m, Vw), one block's, whatever the memory's batch shape
        said = [i for e in scene if e[0] == "text" for i in e[1]]
        # back to where the scene began, then its block: <m>*n + what was said
        crop_tokens(self.cache, self._scene_kv)
        self.position = self._scene_pos
        self._scene_log = []
        block_start = self._scene_kv
        # the block itself is not part of the new scene: fed past the logging override
        super()._forward_ids([self.layout.memory_id] * tokens.shape[0] + said, need_logits=False,
                             memory_tokens=tokens, memory_words=words)
        self._blocks.append([block_start, self.kv_length])
        while len(self._blocks) > self.max_memories:
            a, b = self._blocks.pop(0)
            drop_tokens(self.cache, a, b)
            for blk in self._blocks:
                blk[0] -= b - a
                blk[1] -= b - a
        self._scene_kv, self._scene_pos = self.kv_length, self.position
        self._last_item = "text"
        for entry in tail:                # the new scene's frames (and words) seen before the cut was known
            if entry[0] == "frame":
                chunk = self.layout.frame(entry[1], after_frame=self._last_item == "frame")
                self._forward(chunk, entry[2][None], None if entry[4] is None else entry[4][None])
                self._scene_log.append(entry)
                self._last_item = "frame"
            else:
                self._forward_ids(entry[1], need_logits=False)
                self._last_item = "text"

    def _should_speak(self, t: float, p_silent: float) -> bool:
        if self.trigger == "interval":
            return t - self._last_spoke >= self.interval_seconds - EPS
        return p_silent < self.threshold

    def _reply(self, t: float, p_silent: float) -> Event:
        start = time.perf_counter()
        logits = self._forward(self.layout.reply_open())
        text = self._generate(logits, start, "reply", t)
        self._last_spoke = t
        ev = Event(t=t, kind="reply", text=text, frame=self.frames_seen, p_silent=p_silent)
        self.dialogue.append(ev)
        return ev

    def _respond(self, question: str, t: float) -> Event:
        start = time.perf_counter()
        logits = self._forward(self.layout.question_prompt(question))
        text = self._generate(logits, start, "answer", t)
        ev = Event(t=t, kind="answer", text=text, frame=self.frames_seen, question=question)
        self.dialogue.append(ev)
        return ev

    @torch.inference_mode()
    def _encode(self, frames: list) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Frames -> (frame tokens (N, T, D), frame features at the vision width (N, T, Dv) when scenes
        or memory are on, the tokens' tag words (N, T, Vw) for a model with a copy head), continuing the
        previous-frame channel across calls."""
        start = time.perf_counter() if self.profile else 0.0
        pixels = self.model.preprocess(frames, previous=self._prev_pixels)
        self._prev_pixels = pixels[-1, :3].clone()
        feats = words = None
        copy = getattr(self.model, "copy_head", None) is not None
        if self.scenes or copy:  # SceneTiling compares the pooled token; the bridge folds all of them
            feats = self.model.vision_features(pixels)
            tokens, words = self.model.project(feats, words=True)
            feats = feats if self.scenes else None
        else:
            tokens = self.model.frame_embeddings(pixels)
        if self.profile:
            if tokens.is_cuda:
                torch.cuda.synchronize(tokens.device)
            self._encode_share = (time.perf_counter() - start) / len(frames)
        return tokens, feats, words

    def _next_time(self, t: float | None) -> float:
        if t is None:
            return 0.0 if self.frames_seen == 0 else self.clock + 1.0 / self.fps
        t = float(t)
        if not math.isfinite(t):
            raise SourceError(f"frame time {t!r} is not a finite number of seconds: pass t >= 0 or leave it out")
        if t < self.clock - EPS:
            raise SourceError(f"frame time {t:.3f}s is before the previous frame's {self.clock:.3f}s: frames must "
                              "come in time order (call session.reset() to start a new stream)")
        return t


def _take(it: Iterator, n: int) -> tuple[list, Exception | None]:
    """Up to ``n`` items from ``it``; a SourceError mid-way is returned, not raised."""
    items = []
    try:
        for _ in range(n):
            items.append(next(it))
    except StopIteration:
        pass
    except SourceError as err:
        return items, err
    return items, None


def frames_of(frames: Iterable[np.ndarray], fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """Attach times ``i / fps`` to bare frames."""
    for i, f in enumerate(frames):
        yield i / fps, f
