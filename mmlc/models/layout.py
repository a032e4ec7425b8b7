"""The LIVE sequence layout, one builder for training and streaming.

A stream dialogue is a timeline of items: frames, the model's own replies after a frame, and user
questions with their answers. :class:`StreamLayout` turns each item into a :class:`Chunk` of token
ids with labels; training concatenates the chunks of a whole timeline (:meth:`StreamLayout.build`),
and the streaming session feeds the very same chunks one at a time, so the two cannot drift apart
(VideoLLM-online had a label-alignment bug of exactly that kind).

Format (template strings in braces)::

    {bos}{system} <v>..<v> {interval} <v>..<v> {assistant} reply {end} <v>..<v> {interval} ...
                  {user} question {assistant} answer {end} <v>..<v> ...

A memory stream replaces each closed scene by ``<m>..<m>`` (its memory tokens) followed by what was
said during the scene, unlabelled (:meth:`StreamLayout.memory_block`).

A chat turn (multi-image dialogue) is ``{user} Image1: <v>..<v> text {assistant} answer {end}``: the
images of the turn take frame placeholders where the user's text places them.

Labels (the token each position predicts; -100 = none):

- the last placeholder of each frame: ``{interval}`` (stay silent) or ``{assistant}`` (speak); a
  frame followed by a user question is labelled silent (the model did not choose to speak);
- reply and answer tokens and their closing ``{end}``;
- nothing else (placeholders, the interval token, questions, the system prompt).

``kinds`` marks frame decisions (1) and reply tokens (2) so that the loss can weight them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmlc.config import TemplateConfig
from mmlc.errors import ConfigError

IGNORE = -100
DECISION = 1
TEXT = 2


@dataclass
class Frame:
    """One frame of the stream (its tokens are placeholders filled with the frame's tokens)."""

    index: int = 0


@dataclass
class Reply:
    """The model speaks after the previous frame."""

    text: str


@dataclass
class Question:
    """A user question inserted before the next frame, and its answer (None while streaming)."""

    text: str
    answer: str | None = None
    look: list | None = None      # training only: where the answer is read from (see below)


@dataclass
class Turn:
    """A chat turn: the user's ``parts`` (text, or an int = the index of an image shown there) and
    the assistant's answer (None while chatting). Images take the frame placeholders."""

    parts: list
    answer: str | None = None
    look: list | None = None      # training only: where the answer is read from (see below)


# ``look`` of a Question or Turn (training only, for the addressing loss of ``mmlc.train.look``): a list
# of ``(index, box)``, the frame (Frame.index), chat image (its int in Turn.parts) or ``("memory", k)``
# (the memory tokens of the timeline's k-th Memory item) the answer is read from and, within a
# picture, ``box = (x0, y0, x1, y1)`` in fractions of the picture (the object asked about) or None
# (the whole picture: its room, its count). :meth:`StreamLayout.build` turns each into :attr:`Chunk.looks`.


@dataclass
class Memory:
    """A closed scene in a memory stream: ``n`` memory placeholders (filled with the bridge's memory of
    the scene) and then the scene's dialogue as unlabelled context (``recap``: the Reply and Question
    items said during the scene; questions with their answers)."""

    n: int | None = None          # None: the model's memory tokens a scene
    recap: list = field(default_factory=list)


@dataclass
class Chunk:
    """Token ids with per-position labels and label kinds; frames = frame indices in order; ``tags``
    (only where some position has one) = per position the token id whose input embedding is added
    there (image tags, see :class:`~mmlc.config.FramesConfig`), -100 elsewhere."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    tags: list[int] | None = None
    # built timelines only: per answer with a ``look``, (the positions that predict its tokens, the
    # pictures it is read from as (first placeholder position, placeholder count, box or None), kind):
    # kind "answer"; in chat also "name" (the number token that names image k -> image k), "obj" (that
    # number token -> the cells of the object the question names in image k, where it names one) and
    # "via" (the answer -> that number token); "read": the position that predicts the first word of
    # an answer about one object (its colour, size) -> that object's cells; "readall": every position
    # that predicts a token of an answer with a located look (a box, or a ("token", k) box naming one
    # token of a picture, e.g. a needle's tag in a memory block), the trainer keeping those whose word
    # the tags carry (" yellow" in "a yellow diamond.")
    looks: list | None = None

    def extend(self, other: "Chunk") -> "Chunk":
        if self.tags is not None or other.tags is not None:
            self.tags = (self.tags if self.tags is not None else [IGNORE] * len(self.ids)) + \
                (other.tags if other.tags is not None else [IGNORE] * len(other.ids))
        self.ids += other.ids
        self.labels += other.labels
        self.kinds += other.kinds
        self.frames += other.frames
        return self

    def __len__(self) -> int:
        return len(self.ids)


class StreamLayout:
    """Maps the template to token ids and builds the chunks of every timeline item."""

    def __init__(self, template: TemplateConfig, tokenizer, tokens_per_frame: int, memory_tokens: int = 0,
                 image_tags: bool = False, tokens_per_image: int | None = None):
        self.template = template
        self.tokenizer = tokenizer
        self.tokens_per_frame = tokens_per_frame
        self.tokens_per_image = tokens_per_frame if tokens_per_image is None else tokens_per_image
        self.memory_tokens = memory_tokens
        self.image_tags = image_tags
        ids = {}
        for name in ("bos", "frame", "memory", "interval", "user", "assistant", "end"):
            text = getattr(template, name)
            tok = tokenizer.encode(text, add_special_tokens=False)
            if len(tok) != 1:
                raise ConfigError(f"template.{name} = {text!r} is {len(tok)} tokens in this tokenizer: each "
                                  "special string must be one token (add it as a special token)")
            ids[name] = tok[0]
        self.bos_id, self.frame_id, self.memory_id = ids["bos"], ids["frame"], ids["memory"]
        self.interval_id, self.user_id = ids["interval"], ids["user"]
        self.assistant_id, self.end_id = ids["assistant"], ids["end"]

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---------------------------------------------------------------- items
    def prefix(self, system: str | None = None) -> Chunk:
        system = self.template.system if system is None else system
        ids = [self.bos_id] + (self.text_ids(system) if system else [])
        return _unlabelled(ids)

    def frame(self, index: int, after_frame: bool, speak: bool | None = None) -> Chunk:
        """A frame's placeholders, preceded by the interval token when the previous item was a frame.

        ``speak`` sets the decision label of the last placeholder (None: unlabelled, for inference).
        """
        ids = ([self.interval_id] if after_frame else []) + [self.frame_id] * self.tokens_per_frame
        chunk = _unlabelled(ids)
        chunk.frames = [index]
        if speak is not None:
            chunk.labels[-1] = self.assistant_id if speak else self.interval_id
            chunk.kinds[-1] = DECISION
        return chunk

    def reply_open(self) -> Chunk:
        """The token that opens a reply (what the model predicted at the frame's decision)."""
        return _unlabelled([self.assistant_id])

    def question_prompt(self, text: str) -> Chunk:
        """``{user} question {assistant}``: after this the model generates the answer."""
        return _unlabelled([self.user_id] + self.text_ids(text) + [self.assistant_id])

    def user_turn(self, parts: list) -> Chunk:
        """``{user} text <v>..<v> text ... {assistant}``: strings are text, ints image indices."""
        chunk = _unlabelled([self.user_id])
        for part in parts:
            if isinstance(part, str):
                chunk.extend(_unlabelled(self.text_ids(part)))
            else:
                img = _unlabelled([self.frame_id] * self.tokens_per_image)
                img.frames = [int(part)]
                if self.image_tags:
                    img.tags = [self.image_tag(int(part))] * self.tokens_per_image
                chunk.extend(img)
        return chunk.extend(_unlabelled([self.assistant_id]))

    def image_tag(self, index: int) -> int:
        """The tag of image ``index`` (0-based): the token that carries the number in " {index + 1}",
        the way a question names it ("Ġ3", or "3" where the tokenizer splits off the space). A number
        of several tokens is tagged with its first (images 1 and 10 share a tag)."""
        ids = self.text_ids(f" {index + 1}")
        return next((i for i in ids if self.tokenizer.decode([i]).strip()), ids[0])

    def answer(self, text: str) -> Chunk:
        """Reply text and ``{end}``, every token labelled (the reply's own tokens predict the next)."""
        return self.answer_ids(self.text_ids(text))

    def answer_ids(self, ids: list[int]) -> Chunk:
        full = list(ids) + [self.end_id]
        return Chunk(ids=full, labels=full[:], kinds=[TEXT] * len(full))

    def memory(self, n: int) -> Chunk:
        return _unlabelled([self.memory_id] * n)

    def memory_block(self, n: int | None, recap: list = ()) -> Chunk:
        """A closed scene: ``n`` memory placeholders (None: the model's count), then what was said in it
        (unlabelled), each reply as ``{assistant} text {end}`` and each question as
        ``{user} q {assistant} a {end}``."""
        n = self.memory_tokens if n is None else n
        if not n:
            raise ConfigError("a Memory item needs memory tokens but this model has no memory bridge (memory.tokens = 0)")
        ids = [self.memory_id] * n
        for item in recap:
            if isinstance(item, Reply):
                ids += [self.assistant_id] + self.text_ids(item.text) + [self.end_id]
            elif isinstance(item, Question):
                ids += [self.user_id] + self.text_ids(item.text) + [self.assistant_id]
                ids += self.text_ids(item.answer or "") + [self.end_id]
            else:
                raise TypeError(f"a memory recap holds Reply and Question items, not {item!r}")
        return _unlabelled(ids)

    def _last_word(self, text: str, start: int) -> int | None:
        """Position of the last token of ``text``'s last word ("square" of "what colour is the square?")
        in a question prompt placed at ``start`` (None when the text does not tokenize as its stem + "?")."""
        ids, stem = self.text_ids(text), self.text_ids(text.rstrip("?!. "))
        return start + len(stem) if stem and ids[:len(stem)] == stem else None

    # ---------------------------------------------------------------- whole timelines
    def build(self, items: list, system: str | None = None, with_prefix: bool = True,
              stream_hops: bool = True) -> Chunk:
        """Concatenate the chunks of a timeline and shift labels into next-token targets.

        ``stream_hops``: a stream question about an object also gets the two looks through its last
        word (``obj`` and ``via``, see ``_subject_looks``); off, only the answer's own look.

        Returns a chunk whose ``labels[i]`` is the target predicted at position i.
        """
        seq = self.prefix(system) if with_prefix else Chunk()
        previous = None
        placed: dict = {}   # frame / image index, or ("memory", k), -> (first placeholder, count)
        looks: list = []
        n_memories = 0

        def add(chunk: Chunk) -> None:
            base, n_seen = len(seq), 0
            seq.extend(chunk)
            if chunk.frames:   # the placeholders of each picture, in the order of chunk.frames
                slots = [base + i for i, t in enumerate(chunk.ids) if t == self.frame_id]
                per = len(slots) // len(chunk.frames)
                for j, index in enumerate(chunk.frames):
                    placed[index] = (slots[n_seen], per)
                    n_seen += per

        def add_answer(text: str, look: list | None, asked: tuple[int, int] | None = None,
                       subject: int | None = None) -> None:
            start, chunk = len(seq), self.answer(text)
            add(chunk)
            if look:
                missing = [i for i, _ in look if i not in placed]
                if missing:
                    raise ValueError(f"look names pictures {missing} that no earlier item of the timeline shows")
                queries = list(range(start - 1, start + max(len(chunk) - 1, 1) - 1))   # predict its tokens, not {end}
                looks.append((queries, [(*placed[i], box) for i, box in look], "answer"))
                objects = [(*placed[i], box) for i, box in look if isinstance(i, int) and box is not None]
                if objects:
                    looks.append((queries[:1], objects, "read"))
                placed_boxes = [(*placed[i], box) for i, box in look if box is not None]
                if placed_boxes:   # every answer token a tag word may be read for (the trainer keeps those)
                    looks.append((queries, placed_boxes, "readall"))
                if asked is not None:
                    _name_looks(queries, look, asked)
                if subject is not None:
                    _subject_looks(queries, look, subject)

        def _subject_looks(queries: list[int], look: list, subject: int) -> None:
            """A stream question about an object ("what colour is the square?"): its last word looks at
            the object's cells ("obj") and the answer at that word ("via"), the two hops chat takes
            through the image number."""
            for index, box in look:
                if isinstance(index, int) and box is not None:
                    looks.append(([subject], [(*placed[index], box)], "obj"))
                    looks.append((queries, [(subject, 1, None)], "via"))

        def _name_looks(queries: list[int], look: list, asked: tuple[int, int]) -> None:
            """Chat: where the user's text names image k ("... in image 3?"), the number token looks at
            image k ("name") and, where the question names an object of image k, at its cells ("obj");
            the answer looks at that number token ("via")."""
            a, b = asked
            for index, box in look:
                if not isinstance(index, int):
                    continue
                tag = self.image_tag(index)
                named = [p for p in range(a, b) if seq.ids[p] == tag]
                if named:
                    looks.append(([named[-1]], [(*placed[index], None)], "name"))
                    if box is not None:
                        looks.append(([named[-1]], [(*placed[index], box)], "obj"))
                    looks.append((queries, [(named[-1], 1, None)], "via"))

        for pos, item in enumerate(items):
            if isinstance(item, Frame):
                nxt = items[pos + 1] if pos + 1 < len(items) else None
                add(self.frame(item.index, isinstance(previous, Frame), speak=isinstance(nxt, Reply)))
            elif isinstance(item, Reply):
                if not isinstance(previous, Frame):
                    raise ValueError("a Reply must follow a Frame (the model speaks after a frame)")
                seq.extend(self.reply_open()).extend(self.answer(item.text))
            elif isinstance(item, Question):
                asked = len(seq)
                seq.extend(self.question_prompt(item.text))
                if item.answer is not None:
                    add_answer(item.answer, item.look, subject=self._last_word(item.text, asked) if item.look and stream_hops else None)
            elif isinstance(item, Turn):
                asked = len(seq)
                add(self.user_turn(item.parts))
                if item.answer is not None:
                    add_answer(item.answer, item.look, (asked, len(seq)))
            elif isinstance(item, Memory):
                placed[("memory", n_memories)] = (len(seq), self.memory_tokens if item.n is None else item.n)
                n_memories += 1
                seq.extend(self.memory_block(item.n, item.recap))
            else:
                raise TypeError(f"unknown timeline item {item!r}")
            previous = item
        out = _shift(seq)
        out.looks = looks or None
        return out


def _unlabelled(ids: list[int]) -> Chunk:
    return Chunk(ids=list(ids), labels=[IGNORE] * len(ids), kinds=[0] * len(ids))


def _shift(seq: Chunk) -> Chunk:
    """Turn 'this token is a target' marks into next-token targets at the previous position.

    Frame decisions are already targets at their own position (the last placeholder predicts the
    decision); text tokens marked TEXT are targets of the position before them.
    """
    n = len(seq.ids)
    labels, kinds = [IGNORE] * n, [0] * n
    for i in range(n):
        if seq.kinds[i] == DECISION:
            labels[i], kinds[i] = seq.labels[i], DECISION
    for i in range(1, n):
        if seq.kinds[i] == TEXT:
            labels[i - 1], kinds[i - 1] = seq.ids[i], TEXT
    return Chunk(ids=seq.ids, labels=labels, kinds=kinds, frames=seq.frames, tags=seq.tags)
