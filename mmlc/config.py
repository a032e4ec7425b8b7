"""Typed configs of an mmlc model, validated on construction.

A model is described by one :class:`MmlcConfig`, made of small sections:

- ``vision``: the vision tower, an ordinary transformers vision config (SigLIP, CLIP, ...) kept as a
  dict with its ``model_type``, plus the pixel preprocessing;
- ``frames``: how a frame becomes tokens (pooled output + k x k average-pooled patch grid, and
  whether the tower also sees the previous frame);
- ``connector``: Linear -> GELU -> Linear from the vision width to the LM width;
- ``lm``: the causal LM, an ordinary transformers config dict (Llama, Qwen2, ...);
- ``template``: the special strings of the LIVE sequence format;
- ``stream``: default streaming options (fps, threshold, trigger, reply cap);
- ``memory``: the recurrent memory bridge (VideoLLaMB) and bounded streaming; ``tokens = 0`` means the
  model has no bridge.

Every section validates its fields in ``__post_init__`` with messages that name the field, the bad
value and what is accepted. ``apply_overrides`` sets fields by ``section.field`` (or ``section__field``
for keyword arguments, or a bare field name when it is unique across sections).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mmlc.errors import ConfigError

Trigger = Literal["live", "interval"]
Temporal = Literal["none", "prev_frame"]
TRIGGERS = ("live", "interval")
TAG_MODES = ("cell", "object")
TEMPORALS = ("none", "prev_frame")


def _require(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config field '{name}' = {value!r} is invalid: expected {expected}")


@dataclass
class VisionConfig:
    """The vision tower: a transformers vision config (``hf`` must hold its ``model_type``).

    Towers with patch tokens (SigLIP, CLIP) and convolutional ones with a feature map (ResNet) both
    work. ``size`` is the square input size (0: the config's ``image_size``, else 224);
    ``num_channels`` is read from ``hf``; ``image_mean``/``image_std`` normalise pixels in [0, 1] per
    channel (SigLIP uses 0.5/0.5; CLIP its ImageNet-like statistics).
    """

    hf: dict = field(default_factory=dict)
    size: int = 0
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        _require(isinstance(self.hf, dict) and "model_type" in self.hf, "vision.hf", self.hf,
                 "a transformers vision config dict with a 'model_type' (e.g. 'siglip_vision_model')")
        self.image_mean = tuple(float(x) for x in self.image_mean)
        self.image_std = tuple(float(x) for x in self.image_std)
        _require(isinstance(self.size, int) and self.size >= 0, "vision.size", self.size, "an int >= 0 (0: from hf)")
        _require(len(self.image_mean) == 3, "vision.image_mean", self.image_mean, "3 numbers")
        _require(len(self.image_std) == 3 and all(s > 0 for s in self.image_std),
                 "vision.image_std", self.image_std, "3 positive numbers")

    @property
    def image_size(self) -> int:
        if self.size:
            return int(self.size)
        size = self.hf.get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def num_channels(self) -> int:
        return int(self.hf.get("num_channels", 3))

    @property
    def hidden_size(self) -> int:
        """Width of the tower's output tokens (``hidden_size``, or the last of ``hidden_sizes``)."""
        if "hidden_size" in self.hf:
            return int(self.hf["hidden_size"])
        return int(self.hf["hidden_sizes"][-1])


@dataclass
class FramesConfig:
    """How one frame becomes tokens: [pooled] + grid x grid average-pooled patches.

    VideoLLM-online: pooled + 3x3 = 10 tokens a frame. ``temporal="prev_frame"`` feeds the tower the
    previous frame as extra channels (the tower's ``num_channels`` must then be 6), so that the frame
    tokens can show change (motion, a colour turning), which a single frame cannot.

    ``image_tags``: in a chat turn, image k's tokens also get the LM's input embedding of the number
    token of " k" added, the same token a question uses to name it ("in image 3?"). Without
    the tag the LM must find the number in the question, then the ``Image3:`` label, then the image
    after it; a 4-layer LM learned that poorly (mmlc-tiny: "how many objects are in image 3?" 0.53 in
    chat against ~1.0 for the same question about a video frame). Stream frames are never tagged.
    Measured since: the same training stage without tags reached the same chat accuracy (0.59 against
    0.58), so the tags are kept in mmlc-tiny but did not help measurably.
    """

    pooled: bool = True
    grid: int = 3
    temporal: Temporal = "none"
    image_tags: bool = False
    # chat images: [pooled] + image_grid x image_grid tokens (0: the frames' grid). A still image can
    # afford more tokens than each frame of a stream, as LLaVA-OneVision gives images more than video
    # frames; with 2x2 a quadrant often averages two objects together, and which shape wears which
    # colour is lost (mmlc-tiny: the colour of a shape alone in its quadrant 14/16 right, sharing one 5/11)
    image_grid: int = 0
    # word tags (mmlc.models.reader): {"shapes", "colours", "sizes", "rooms"} -> word lists; when set, a
    # reader head (``reader_hidden`` wide) reads each grid token's objects and the pooled token's room,
    # and the LM embeddings of those words, weighted by their probabilities, are added to the token.
    # {} (the default): no reader, no tags
    words: dict = field(default_factory=dict)
    reader_hidden: int = 128
    # the tags are added times this: at 1 a tag was 2.6 in norm against the connector's 6.5 at object
    # cells in mmlc-tiny, too faint for a question's shape word to find its cells by
    tag_scale: float = 1.0
    # how a cell's tag binds words: "cell" sums every shape the cell holds with that shape's colour and
    # size there (a bag where two objects share a cell); "object" reads each shape's colour and size once
    # a frame and gives a cell the words of the one object it holds most surely (mmlc.models.reader)
    tag_mode: str = "cell"
    # shapes (of words["shapes"]) read by a second head of the reader trained to *detect* them frame by
    # frame (mmlc.models.reader.RareHead), for objects that are rare in the data: the main head, trained
    # per cell on every object, called the 1.5 s needle's shapes present in 5-8% of needle-free frames
    # (benchmarks/needle_detect.py). [] (the default): no second head
    rare: list = field(default_factory=list)
    # a copy head (mmlc.models.streaming_lm.copy_logits; a pointer, as in See et al., 2017): "L.H", one
    # attention head of the LM, whose attention at every text position, over the tag words each token
    # carries (CellReader.tag_words, scene_tag_words), is added times ``copy_scale`` to the logits of
    # those words (both their forms, "red" and " red"). Why: after the look stages head 3.2 puts 0.77 of
    # its attention on the needle's tag token and the tag's colour is right 0.92 of the time, yet what the
    # head writes ranks one fixed colour first whatever the tag says (README, Memory and NIAVH).
    # None (the default): no copy
    copy_head: str | None = None
    copy_scale: float = 4.0

    def __post_init__(self) -> None:
        if self.words:
            _require(isinstance(self.words, dict) and set(self.words) == {"shapes", "colours", "sizes", "rooms"}
                     and all(isinstance(v, list) and v and all(isinstance(w, str) and w for w in v)
                             for v in self.words.values()),
                     "frames.words", self.words,
                     "{} or lists of words under exactly 'shapes', 'colours', 'sizes' and 'rooms'")
        _require(isinstance(self.reader_hidden, int) and not isinstance(self.reader_hidden, bool)
                 and self.reader_hidden >= 1, "frames.reader_hidden", self.reader_hidden, "a positive integer")
        _require(isinstance(self.tag_scale, (int, float)) and not isinstance(self.tag_scale, bool)
                 and self.tag_scale > 0, "frames.tag_scale", self.tag_scale, "a number > 0")
        _require(self.tag_mode in TAG_MODES, "frames.tag_mode", self.tag_mode, f"one of {TAG_MODES}")
        _require(isinstance(self.rare, list) and len(set(self.rare)) == len(self.rare)
                 and all(w in self.words.get("shapes", []) for w in self.rare), "frames.rare", self.rare,
                 "a list of distinct words from frames.words['shapes'] (a model with word tags)")
        _require(self.copy_head is None or (bool(self.words) and isinstance(self.copy_head, str)
                                            and re.fullmatch(r"\d+\.\d+", self.copy_head) is not None),
                 "frames.copy_head", self.copy_head, "null, or \"LAYER.HEAD\" such as \"3.2\" in a model with "
                 "word tags (frames.words)")
        _require(isinstance(self.copy_scale, (int, float)) and not isinstance(self.copy_scale, bool)
                 and self.copy_scale > 0, "frames.copy_scale", self.copy_scale, "a number > 0")
        _require(isinstance(self.pooled, bool), "frames.pooled", self.pooled, "true or false")
        _require(isinstance(self.grid, int) and self.grid >= 0, "frames.grid", self.grid, "an int >= 0")
        _require(self.temporal in TEMPORALS, "frames.temporal", self.temporal, f"one of {TEMPORALS}")
        _require(isinstance(self.image_tags, bool), "frames.image_tags", self.image_tags, "true or false")
        _require(isinstance(self.image_grid, int) and not isinstance(self.image_grid, bool) and self.image_grid >= 0,
                 "frames.image_grid", self.image_grid, "an int >= 0 (0: the frames' grid)")
        _require(self.pooled or self.grid > 0, "frames.grid", self.grid,
                 "> 0 when frames.pooled is false (a frame needs at least one token)")

    @property
    def tokens_per_frame(self) -> int:
        return int(self.pooled) + self.grid * self.grid

    @property
    def chat_grid(self) -> int:
        """The grid of a chat image."""
        return self.image_grid or self.grid

    @property
    def tokens_per_image(self) -> int:
        return int(self.pooled) + self.chat_grid * self.chat_grid


@dataclass
class ConnectorConfig:
    """Linear(vision width -> hidden) -> GELU -> Linear(hidden -> LM width); hidden 0 = LM width."""

    hidden: int = 0

    def __post_init__(self) -> None:
        _require(isinstance(self.hidden, int) and self.hidden >= 0, "connector.hidden", self.hidden,
                 "an int >= 0 (0 means the LM width)")


@dataclass
class LMConfig:
    """The causal LM: a transformers config dict with its ``model_type`` (llama, qwen2, ...)."""

    hf: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(isinstance(self.hf, dict) and "model_type" in self.hf, "lm.hf", self.hf,
                 "a transformers causal-LM config dict with a 'model_type' (e.g. 'llama')")

    @property
    def hidden_size(self) -> int:
        return int(self.hf["hidden_size"])


@dataclass
class TemplateConfig:
    """Special strings of the LIVE sequence format (each must be one token of the tokenizer).

    A stream reads ``{bos}{system}`` then frames of ``frame`` placeholders, consecutive frames
    separated by ``interval``; the model's reply after a frame is ``{assistant}text{end}``; a user
    question is ``{user}question{assistant}answer{end}``. The last placeholder of each frame is
    labelled with ``interval`` (stay silent) or ``assistant`` (speak).
    """

    bos: str = "<|bos|>"
    frame: str = "<v>"
    memory: str = "<m>"
    interval: str = "<|silent|>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"
    system: str = ""
    image_prefix: str = "Image{i}: "

    def __post_init__(self) -> None:
        for name in ("bos", "frame", "memory", "interval", "user", "assistant", "end"):
            value = getattr(self, name)
            _require(isinstance(value, str) and value != "", f"template.{name}", value, "a non-empty string")
        specials = [self.frame, self.memory, self.interval, self.user, self.assistant, self.end]
        _require(len(set(specials)) == len(specials), "template", specials, "distinct special strings")

    def special_tokens(self) -> list[str]:
        return [self.bos, self.frame, self.memory, self.interval, self.user, self.assistant, self.end]


@dataclass
class StreamConfig:
    """Default streaming options; ``model.stream(...)`` overrides any of them per session."""

    fps: float = 2.0
    threshold: float = 0.725
    trigger: Trigger = "live"
    interval_seconds: float = 10.0
    max_reply_tokens: int = 48

    def __post_init__(self) -> None:
        _require(isinstance(self.fps, (int, float)) and self.fps > 0, "stream.fps", self.fps,
                 "a number > 0 (frames per second, e.g. 2)")
        _require(isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0,
                 "stream.threshold", self.threshold, "a probability in [0, 1] (VideoLLM-online uses 0.725)")
        _require(self.trigger in TRIGGERS, "stream.trigger", self.trigger, f"one of {TRIGGERS}")
        _require(isinstance(self.interval_seconds, (int, float)) and self.interval_seconds > 0,
                 "stream.interval_seconds", self.interval_seconds, "a number of seconds > 0")
        _require(isinstance(self.max_reply_tokens, int) and self.max_reply_tokens >= 1,
                 "stream.max_reply_tokens", self.max_reply_tokens, "an int >= 1")


@dataclass
class MemoryConfig:
    """The recurrent memory bridge and how a memory stream bounds its context.

    Bridge sizes (VideoLLaMB: 32 memory tokens, 1 layer, 8 heads): ``tokens`` memory tokens a scene
    (0 = no bridge), ``layers`` self-attention layers over [memory ; scene tokens] at the vision width,
    ``heads``, ``mlp_ratio``, ``max_cached`` earlier memories the retriever attends to, ``max_age``
    frame-age embeddings (a frame ``a`` frames before the scene's end; older ones share the last).
    Streaming defaults (``model.stream(memory=True, ...)`` overrides them): ``max_memories`` scene
    memories kept in the LM context (older ones leave it; the recurrent memory still carries them),
    ``max_scene_seconds`` the longest scene before a cut is forced.
    """

    tokens: int = 0
    layers: int = 1
    heads: int = 8
    mlp_ratio: float = 4.0
    max_cached: int = 64
    max_age: int = 64
    max_memories: int = 32
    max_scene_seconds: float = 32.0
    # the grid of the frame features the bridge folds (0: the frames' grid). A model whose frames
    # were made finer after its bridge was trained keeps the bridge's grid: the frame tokens are
    # re-pooled to it (StreamingLM.memory_features), exactly the map's pool when it divides frames.grid
    grid: int = 0
    # a model with word tags (frames.words): each scene's memory tokens also carry the scene's tags, the
    # room on the first and one per shape on the next (mmlc.models.reader.CellReader.scene_tags)
    tags: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.tokens, int) and self.tokens >= 0, "memory.tokens", self.tokens,
                 "an int >= 0 (0: no memory bridge; VideoLLaMB uses 32)")
        for name in ("layers", "heads", "max_cached", "max_age", "max_memories"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"memory.{name}", value,
                     "a positive integer")
        _require(isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0, "memory.mlp_ratio",
                 self.mlp_ratio, "a number > 0")
        _require(isinstance(self.max_scene_seconds, (int, float)) and self.max_scene_seconds > 0,
                 "memory.max_scene_seconds", self.max_scene_seconds, "a number of seconds > 0")
        _require(isinstance(self.grid, int) and not isinstance(self.grid, bool) and self.grid >= 0, "memory.grid",
                 self.grid, "an int >= 0 (0: the frames' grid)")


SECTIONS = {
    "vision": VisionConfig,
    "frames": FramesConfig,
    "connector": ConnectorConfig,
    "lm": LMConfig,
    "template": TemplateConfig,
    "stream": StreamConfig,
    "memory": MemoryConfig,
}


@dataclass
class MmlcConfig:
    """The whole model: one section per part (see the module docstring)."""

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    stream_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        _require(self.stream_loss_weight >= 0, "stream_loss_weight", self.stream_loss_weight, "a number >= 0")
        want = 6 if self.frames.temporal == "prev_frame" else 3
        _require(self.vision.num_channels == want, "vision.hf.num_channels", self.vision.num_channels,
                 f"{want} when frames.temporal is '{self.frames.temporal}'")
        if self.memory.grid:
            _require(self.frames.grid > 0, "memory.grid", self.memory.grid,
                     "0 when frames.grid is 0 (the bridge re-pools the frames' grid tokens)")
        if self.memory.tags:
            shapes = len(self.frames.words.get("shapes", []))
            _require(shapes > 0 and self.memory.tokens >= 1 + shapes, "memory.tags", self.memory.tags,
                     f"false, or true on a model with word tags (frames.words) and at least 1 + {shapes or 'n_shapes'} "
                     f"memory tokens (memory.tokens = {self.memory.tokens}): the room and one tag per shape")

    @property
    def memory_grid(self) -> int:
        """The grid of the frame features the memory bridge folds."""
        return self.memory.grid or self.frames.grid

    @property
    def memory_tokens_per_frame(self) -> int:
        return int(self.frames.pooled) + self.memory_grid * self.memory_grid

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MmlcConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"config has unknown fields {sorted(unknown)}: expected {list(SECTIONS)}, "
                              "'name' and 'stream_loss_weight'")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            section = SECTIONS.get(key)
            if section is None:
                kwargs[key] = value
                continue
            names = {f.name for f in dataclasses.fields(section)}
            bad = set(value) - names
            if bad:
                raise ConfigError(f"config section '{key}' has unknown fields {sorted(bad)}: expected {sorted(names)}")
            kwargs[key] = section(**value)
        return cls(**kwargs)


def apply_overrides(config: MmlcConfig, overrides: dict[str, Any]) -> MmlcConfig:
    """Return a copy of ``config`` with fields set from ``overrides``.

    Keys are ``section.field`` or ``section__field`` (``stream.threshold``), a top-level field
    (``stream_loss_weight``), ``lm.hf.KEY``/``vision.hf.KEY`` for a transformers config entry, or a
    bare field name that exists in exactly one section (``threshold``, ``grid``).
    """
    data = copy.deepcopy(config.to_dict())
    for raw_key, value in overrides.items():
        parts = raw_key.replace("__", ".").split(".")
        if len(parts) == 1 and parts[0] not in data:
            owners = [s for s, cls in SECTIONS.items() if parts[0] in {f.name for f in dataclasses.fields(cls)}]
            if len(owners) != 1:
                where = f"it is in {owners}: write e.g. '{owners[0]}.{parts[0]}'" if owners else \
                    f"known sections are {list(SECTIONS)}"
                raise ConfigError(f"override '{raw_key}' is {'ambiguous' if owners else 'unknown'}: {where}")
            parts = [owners[0], parts[0]]
        node = data
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override '{raw_key}': no field '{'.'.join(parts[:depth + 1])}' in the config")
            node = node[part]
        last = parts[-1]
        inside_hf = len(parts) >= 3 and parts[1] == "hf"
        if not isinstance(node, dict) or (last not in node and not inside_hf):
            raise ConfigError(f"override '{raw_key}': no field '{'.'.join(parts)}' in the config")
        node[last] = value
    return MmlcConfig.from_dict(data)
