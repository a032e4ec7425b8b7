"""StreamingLM: vision tower -> frame tokens -> connector -> causal LM (the LIVE model).

Composition as in transformers' Llava: the tower and the LM are ordinary transformers models built
from their configs, so any vision model with a patch-token output (SigLIP, CLIP) and any causal LM
(Llama, Qwen2, ...) plug in, and real checkpoints load through the same code. Frame tokens replace the
input embeddings of frame placeholder tokens. The model holds no streaming state: caches, positions
and clocks belong to the session that calls it (``mmlc.streaming.session``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from mmlc.config import MmlcConfig
from mmlc.errors import ConfigError
from mmlc.models.layout import StreamLayout


class Connector(nn.Module):
    """Linear -> GELU -> Linear, vision width -> LM width (LLaVA-1.5's projector)."""

    def __init__(self, vision_width: int, lm_width: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or lm_width
        self.fc1 = nn.Linear(vision_width, hidden)
        self.fc2 = nn.Linear(hidden, lm_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def hf_config(cfg: dict):
    """A transformers config object from a dict holding its ``model_type``."""
    data = dict(cfg)
    return AutoConfig.for_model(data.pop("model_type"), **data)


class StreamingLM(nn.Module):
    """Vision tower + connector + causal LM, and the LIVE loss.

    ``layout`` (set by the loader once the tokenizer is known) maps template strings to token ids.
    """

    def __init__(self, config: MmlcConfig, vision: nn.Module | None = None, lm: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.vision = vision if vision is not None else AutoModel.from_config(hf_config(config.vision.hf))
        self.connector = Connector(config.vision.hidden_size, config.lm.hidden_size, config.connector.hidden)
        self.lm = lm if lm is not None else AutoModelForCausalLM.from_config(hf_config(config.lm.hf))
        self.bridge = None
        if config.memory.tokens:
            from mmlc.models.memory import MemoryBridge

            # memory tokens: folded at the vision width, projected by the frames' connector plus a learned
            # offset that tells the LM "memory" apart from "frame"
            self.bridge = MemoryBridge(config.vision.hidden_size, config.memory, slots=config.memory_tokens_per_frame)
            self.memory_offset = nn.Parameter(torch.zeros(config.lm.hidden_size))
        self.reader = None
        if config.frames.words:
            from mmlc.models.reader import CellReader

            self.reader = CellReader.for_config(config)
        self.layout: StreamLayout | None = None
        self.tokenizer = None
        mean = torch.tensor(config.vision.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(config.vision.image_std).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # ------------------------------------------------------------------ properties
    @property
    def copy_head(self) -> str | None:
        """``frames.copy_head``: the LM head whose attention copies tag words (:mod:`mmlc.models.copy`)."""
        return self.config.frames.copy_head

    @property
    def device(self) -> torch.device:
        return self.connector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.connector.fc1.weight.dtype

    @property
    def tokens_per_frame(self) -> int:
        return self.config.frames.tokens_per_frame

    # ------------------------------------------------------------------ vision
    def preprocess(self, frames: torch.Tensor | list, previous: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> normalised pixels (N, C, S, S) in the model's dtype.

        With ``frames.temporal == "prev_frame"`` the channels are [frame ; previous frame], where
        frame i's previous is frame i-1 of the batch, and frame 0's is ``previous`` ((3, S, S),
        already normalised) or frame 0 itself when there is none (no change seen).
        """
        if not torch.is_tensor(frames):
            frames = torch.from_numpy(_stack(frames, self.config.vision.image_size))
        # Normalised and paired with the previous frame at the frames' own size, then resized once, into
        # the channels-last layout the tower's convolutions take: bilinear resizing is a weighted mean
        # whose weights sum to 1, so it commutes with the per-channel normalisation and with stacking
        # channels (the same pixels to 2e-7, 2.5x faster than resizing first for 64 -> 128 px frames)
        x = frames.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)
        x = (x - self.pixel_mean) / self.pixel_std
        temporal = self.config.frames.temporal == "prev_frame"
        if temporal:
            x = torch.cat([x, torch.cat([x[:1], x[:-1]], dim=0)], dim=1)       # (N, 6, H, W)
        x = x.contiguous(memory_format=torch.channels_last)
        size = self.config.vision.image_size
        if x.shape[-2:] != (size, size):   # antialiasing changes nothing when enlarging (to 1e-7), and costs 1.7x
            shrink = x.shape[-2] > size or x.shape[-1] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=shrink, align_corners=False)
        if temporal and previous is not None:
            x[0, 3:] = previous.to(x)
        return x.to(self.dtype)

    def vision_maps(self, pixels: torch.Tensor, tower: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (N, C, S, S) -> (feature map (N, Dv, h, w), pooled output (N, Dv)). ``tower``: another
        module computing the same as ``self.vision`` (training's :class:`mmlc.train.frozen_tower.FrozenTower`).

        Patch-token towers (SigLIP, CLIP) are reshaped to their grid, dropping a leading CLS token
        when the token count is a square plus one; convolutional towers (ResNet, ConvNeXt) give
        their last feature map. Without a pooled output the map's mean stands in.
        """
        if pixels.ndim == 4:  # channels-last convolutions: ~1.4x faster on CPU (oneDNN), same numbers
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        out = (self.vision if tower is None else tower)(pixel_values=pixels)
        maps = out.last_hidden_state
        if maps.ndim == 3:  # patch tokens (N, P, Dv)
            n_patch = maps.shape[1]
            side = math.isqrt(n_patch)
            if side * side != n_patch:
                maps, side = maps[:, 1:], math.isqrt(n_patch - 1)
            maps = maps.transpose(1, 2).reshape(maps.shape[0], -1, side, side)
        pooled = getattr(out, "pooler_output", None)
        pooled = maps.mean((2, 3)) if pooled is None else pooled.flatten(1)
        return maps, pooled

    def frame_features(self, maps: torch.Tensor, pooled: torch.Tensor, grid: int | None = None) -> torch.Tensor:
        """(feature map, pooled) -> frame features (N, T, Dv): [pooled] + grid x grid average pool
        (``grid``: the frames' grid by default; chat images use ``frames.chat_grid``)."""
        tokens = []
        fc = self.config.frames
        grid = fc.grid if grid is None else grid
        if fc.pooled:
            tokens.append(pooled[:, None])
        if grid:
            tokens.append(F.adaptive_avg_pool2d(maps, grid).flatten(2).transpose(1, 2))  # (N, k*k, Dv)
        return torch.cat(tokens, dim=1)

    def project(self, feats: torch.Tensor, words: bool = False):
        """Frame or image features (N, T, Dv) -> tokens at the LM width (N, T, D): the connector, plus the
        reader's word tags (bound as ``frames.tag_mode`` says, times ``frames.tag_scale``) when the model
        has a reader (``frames.words``; :mod:`mmlc.models.reader`). With ``words``: (tokens, the tag words
        of every token (N, T, Vw) or None without a reader), for the copy head (``forward(frame_words=)``)."""
        tokens = self.connector(feats)
        tag_words = None
        if self.reader is not None:
            tag_words = self.reader.tag_words(feats, mode=self.config.frames.tag_mode)
            tokens = tokens + self._tag_embeddings(tag_words).to(tokens.dtype) * self.config.frames.tag_scale
        return (tokens, tag_words) if words else tokens

    def _tag_embeddings(self, tag_words: torch.Tensor) -> torch.Tensor:
        if self.tokenizer is None:
            raise ConfigError("this model's tokens carry word tags (frames.words), which need its "
                              "tokenizer: load it with mmlc.load() or attach model.tokenizer")
        table = self.lm.get_input_embeddings().weight
        return tag_words @ self.reader.vocabulary_embeddings(table, self.tokenizer).float()

    def image_embeddings(self, pixels: torch.Tensor, words: bool = False):
        """Pixels of still chat images (N, C, S, S) -> their tokens at the LM width (N, T_image, D); with
        ``words``, (tokens, tag words) as :meth:`project` gives them."""
        feats = self.frame_features(*self.vision_maps(pixels), grid=self.config.frames.chat_grid)
        return self.project(feats, words=words)

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (N, C, S, S) -> frame features at the vision width (N, T, Dv).

        T = [pooled output] + grid x grid adaptive average pool of the tower's patch grid or map.
        """
        return self.frame_features(*self.vision_maps(pixels))

    def frame_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (N, C, S, S) -> frame tokens at the LM width (N, T, D)."""
        return self.project(self.vision_features(pixels))

    def memory_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Frame features (N, T, Dv) -> the features the bridge folds (N, T_memory, Dv): the same unless
        ``memory.grid`` differs from ``frames.grid``; then the grid tokens are average-pooled to it (equal
        to pooling the tower's map when the grids divide it and each other, e.g. 4x4 -> 2x2 of an 8x8 map)."""
        fc, grid = self.config.frames, self.config.memory_grid
        if grid == fc.grid:
            return feats
        head = feats[:, :int(fc.pooled)]
        cells = feats[:, int(fc.pooled):].transpose(1, 2).unflatten(2, (fc.grid, fc.grid))  # (N, Dv, g, g)
        pooled = F.adaptive_avg_pool2d(cells, grid).flatten(2).transpose(1, 2)
        return torch.cat([head, pooled], dim=1)

    def memory_embeddings(self, memory: torch.Tensor, scene: torch.Tensor | None = None, words: bool = False):
        """Bridge memory (..., m, Dv) -> memory tokens at the LM width (..., m, D). With ``memory.tags``
        the scene's word tags (``scene``: its frame features (F, T, Dv) in order,
        :meth:`CellReader.scene_tags`) are added, times ``frames.tag_scale``, to the first 1 + S tokens:
        the room, then one per shape, as frame tokens carry theirs. With ``words``: (tokens, the tag words
        of every token (m, Vw), zero past the tagged ones, or None without tags)."""
        if self.bridge is None:
            raise ConfigError("this model has no memory bridge (config memory.tokens = 0): stream with memory=False")
        tokens = self.connector(memory) + self.memory_offset
        tag_words = None
        if self.config.memory.tags:
            if scene is None:
                raise ValueError("this model's memory tokens carry their scene's tags (memory.tags): pass the "
                                 "scene's frame features as memory_embeddings(memory, scene)")
            tagged = self.reader.scene_tag_words(scene)
            tag_words = torch.cat([tagged, tagged.new_zeros(tokens.shape[-2] - tagged.shape[0], tagged.shape[-1])])
            tokens = tokens + self._tag_embeddings(tag_words).to(tokens) * self.config.frames.tag_scale
        return (tokens, tag_words) if words else tokens

    # ------------------------------------------------------------------ LM
    def embed(self, input_ids: torch.Tensor, frame_tokens: torch.Tensor | None = None,
              memory_tokens: torch.Tensor | None = None, tags: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, L, D) with placeholders replaced.

        ``frame_tokens`` (N, T, D) fill the frame placeholders in order (row-major over N then T);
        ``memory_tokens`` (M, D) the memory placeholders. A count mismatch is a ValueError that shows
        both counts. ``tags`` (B, L): where >= 0, that token's input embedding is added at the position
        (chat image tags, :attr:`Chunk.tags`).
        """
        layout = self._layout()
        table = self.lm.get_input_embeddings()
        embeds = table(input_ids)
        for ids, values, what in ((layout.frame_id, frame_tokens, "frame"), (layout.memory_id, memory_tokens, "memory")):
            mask = input_ids == ids
            n_slots = int(mask.sum())
            n_values = 0 if values is None else values.reshape(-1, values.shape[-1]).shape[0]
            if n_slots != n_values:
                raise ValueError(f"{what} placeholders and {what} tokens do not match: {n_slots} placeholder "
                                 f"tokens in the input, {n_values} {what} tokens given")
            if n_slots:
                embeds = embeds.masked_scatter(mask[..., None], values.reshape(-1, values.shape[-1]).to(embeds))
        if tags is not None:
            tagged = tags >= 0
            embeds = embeds + table(tags.clamp_min(0)) * tagged[..., None].to(embeds.dtype)
        return embeds

    def forward(self, input_ids: torch.Tensor, *, pixels: torch.Tensor | None = None,
                frame_tokens: torch.Tensor | None = None, memory_tokens: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, logits_to_keep: int = 0,
                attention_mask: torch.Tensor | None = None, tags: torch.Tensor | None = None,
                frame_words: torch.Tensor | None = None, memory_words: torch.Tensor | None = None):
        """One LM pass over ``input_ids`` (B, L) whose frame placeholders take the frames' tokens.

        Give either ``pixels`` (N, C, S, S) or precomputed ``frame_tokens`` (N, T, D); ``memory_tokens``
        (M, D) fill memory placeholders (:meth:`memory_embeddings` of the bridge's memory). Positions are
        explicit when a cache is used (the session tracks the true count). ``tags`` (B, L) as in
        :meth:`embed`. Returns the transformers output (``.logits``: (B, L or logits_to_keep, V)).

        With a copy head (``frames.copy_head``, :mod:`mmlc.models.copy`) the logits at text positions
        also get the copy of the tag words the head attends to: ``frame_words`` (N, T, Vw) and
        ``memory_words`` (M, Vw) are the tag words of the frame and memory tokens (``project`` /
        ``memory_embeddings`` with ``words=True``; None: they carry none), kept on ``cache`` for later
        calls.
        """
        if pixels is not None:
            if self.config.frames.copy_head is not None:
                frame_tokens, frame_words = self.project(self.vision_features(pixels), words=True)
            else:
                frame_tokens = self.frame_embeddings(pixels)
        embeds = self.embed(input_ids, frame_tokens, memory_tokens, tags)
        run = dict(inputs_embeds=embeds, position_ids=position_ids, cache=cache, use_cache=cache is not None,
                   logits_to_keep=logits_to_keep, attention_mask=attention_mask)
        if self.config.frames.copy_head is None:
            return self.lm(**run)
        from mmlc.models.copy import AttentionTap, copy_logits, parse_head

        layer, head = parse_head(self.config.frames.copy_head)
        words = self._position_words(input_ids, frame_words, memory_words)
        if cache is not None:
            before = getattr(cache, "copy_words", None)
            if before is not None and before.shape[1] != cache.get_seq_length():
                raise ValueError(f"the cache holds {cache.get_seq_length()} tokens but tag words for "
                                 f"{before.shape[1]}: cut it with mmlc.streaming.kv.drop_tokens / crop_tokens")
        kept = input_ids[:, -logits_to_keep:] if logits_to_keep else input_ids
        if not bool(((kept != self.layout.frame_id) & (kept != self.layout.memory_id)).any()):
            # only frame / memory positions kept (a stream's per-frame forward): the copy adds nothing
            # there, so the head's attention is not recomputed (measured: 0.76x the frames/s otherwise)
            out = self.lm(**run)
            if cache is not None:
                from mmlc.streaming.kv import append_words

                append_words(cache, words)
            return out
        with AttentionTap(self.lm, [layer]) as tap:
            out = self.lm(**run)
        if cache is not None:
            from mmlc.streaming.kv import append_words

            words = append_words(cache, words)
        keep = out.logits.shape[1]
        copied = copy_logits(self.lm, tap, layer, head, words, keep, cache=cache, attention_mask=attention_mask)
        out.logits = out.logits + self.copy_into_logits(copied, input_ids[:, -keep:]).to(out.logits.dtype)
        return out

    def copy_into_logits(self, copied: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """What the copy head adds to the logits (..., V) from its copied tag words (..., Vw) at positions
        whose input tokens are ``input_ids`` (...): the words on their token forms (:func:`word_to_vocab`),
        times ``copy_scale``, at text positions only (frame and memory placeholders get nothing)."""
        text = ~((input_ids == self.layout.frame_id) | (input_ids == self.layout.memory_id))
        return (copied @ self._copy_matrix().to(copied.device)) * (self.config.frames.copy_scale * text[..., None])

    def _position_words(self, input_ids: torch.Tensor, frame_words, memory_words) -> torch.Tensor:
        """(B, L, Vw): each position's tag words, frame and memory placeholders filled in order."""
        vw = len(self.reader.vocabulary)
        words = torch.zeros(*input_ids.shape, vw, device=input_ids.device)
        for ids, values in ((self.layout.frame_id, frame_words), (self.layout.memory_id, memory_words)):
            mask = input_ids == ids
            if values is not None and int(mask.sum()):
                words[mask] = values.reshape(-1, vw).to(words)
        return words

    def _copy_matrix(self) -> torch.Tensor:
        if getattr(self, "_copy_m", None) is None:
            from mmlc.models.copy import word_to_vocab

            self._copy_m = word_to_vocab(self.reader, self.tokenizer, self.lm.get_output_embeddings().weight.shape[0])
        return self._copy_m

    def live_loss(self, logits: torch.Tensor, labels: torch.Tensor, label_kind: torch.Tensor) -> dict[str, torch.Tensor]:
        """The LIVE objective: text loss on reply tokens + ``stream_loss_weight`` x frame-decision loss.

        ``labels`` (B, L) hold the token each position predicts (-100: none); ``label_kind`` (B, L) is
        1 at frame decisions (the last placeholder of each frame) and 2 at reply tokens. Both parts
        are token means; a part with no labels contributes 0.
        """
        logp = F.log_softmax(logits.float(), dim=-1)
        safe = labels.clamp_min(0)
        nll = -logp.gather(-1, safe[..., None])[..., 0]
        parts = {}
        for name, kind in (("stream_loss", 1), ("text_loss", 2)):
            m = (label_kind == kind) & (labels >= 0)
            parts[name] = (nll * m).sum() / m.sum().clamp_min(1)
        parts["loss"] = parts["text_loss"] + self.config.stream_loss_weight * parts["stream_loss"]
        return parts

    # ------------------------------------------------------------------ public helpers
    def stream(self, fps: float | None = None, threshold: float | None = None, trigger: str | None = None,
               max_reply_tokens: int | None = None, **options):
        """A new :class:`~mmlc.streaming.session.StreamSession` on this model.

        Unset options take the config's ``stream`` defaults. Other options: ``interval_seconds``
        (trigger ``interval``), ``system`` (system prompt), ``batch_frames`` (vision batch for files),
        ``keep_history`` (record every fed token, to replay or inspect the stream), ``profile``
        (record per-frame and per-reply timings in ``session.frame_times`` / ``reply_times``), ``kv_cache``
        (``growing``, the default, or ``dynamic``: transformers' concatenating cache, for comparison),
        ``scenes`` (online SceneTiling on the pooled frame features: ``scene`` events at boundaries,
        ``session.scene_starts``), ``max_scene_seconds`` (a longer scene is cut), ``window_seconds`` (keep
        only the most recent frames in the KV cache: a bounded-context baseline without memory),
        ``memory`` (fold each closed scene into memory tokens and crop the cache: a bounded context; on by
        default when the model has a memory bridge and no window is asked for), ``max_memories`` (scene
        memories kept in the context; defaults for both scene options come from the config's ``memory``).
        """
        from mmlc.streaming.session import StreamSession

        allowed = {"interval_seconds", "system", "batch_frames", "keep_history", "profile", "kv_cache", "scenes",
                   "max_scene_seconds", "window_seconds", "memory", "max_memories"}
        unknown = set(options) - allowed
        if unknown:
            raise ConfigError(f"unknown stream options {sorted(unknown)}: known are fps, threshold, trigger, "
                              f"max_reply_tokens, {', '.join(sorted(allowed))}")
        sc, mc = self.config.stream, self.config.memory
        memory = options.pop("memory", None)
        if memory is None:  # on by default with a bridge, unless a sliding window was asked for
            memory = self.bridge is not None and options.get("window_seconds") is None
        if memory:
            options.setdefault("max_scene_seconds", mc.max_scene_seconds)
            options.setdefault("max_memories", mc.max_memories)
        self._layout()
        return StreamSession(
            self, fps=sc.fps if fps is None else fps, threshold=sc.threshold if threshold is None else threshold,
            trigger=sc.trigger if trigger is None else trigger,
            max_reply_tokens=sc.max_reply_tokens if max_reply_tokens is None else max_reply_tokens,
            interval_seconds=options.pop("interval_seconds", sc.interval_seconds), memory=bool(memory), **options)

    def chat(self, system: str | None = None, max_reply_tokens: int | None = None, **options):
        """A new :class:`~mmlc.streaming.chat.ChatSession` (multi-image, multi-turn) on this model.

        Options: ``keep_history``, ``profile`` (as for :meth:`stream`).
        """
        from mmlc.streaming.chat import ChatSession

        unknown = set(options) - {"keep_history", "profile"}
        if unknown:
            raise ConfigError(f"unknown chat options {sorted(unknown)}: known are system, max_reply_tokens, "
                              "keep_history, profile")
        self._layout()
        cap = self.config.stream.max_reply_tokens if max_reply_tokens is None else max_reply_tokens
        return ChatSession(self, system=system, max_reply_tokens=cap, **options)

    def save_pretrained(self, path) -> Path:
        """Write config.json, model.safetensors and the tokenizer files to ``path``."""
        from mmlc.models.loading import save_pretrained

        return save_pretrained(self, path)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def _layout(self) -> StreamLayout:
        if self.layout is None:
            raise RuntimeError("the model has no tokenizer/layout attached: load it with mmlc.load(...)")
        return self.layout


def _stack(frames, size: int):
    """Frames of any supported type and mode -> (N, H, W, 3) uint8; mixed sizes resized to ``size``."""
    import numpy as np

    from mmlc.streaming.images import resize_rgb, to_rgb_uint8
    rgb = [to_rgb_uint8(f) for f in frames]
    if len({f.shape for f in rgb}) > 1:
        rgb = [resize_rgb(f, size) for f in rgb]
    return np.stack(rgb)
