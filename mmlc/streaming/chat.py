"""ChatSession: multi-image, multi-turn dialogue on the same model that streams video.

A user turn interleaves text and images; the images take frame placeholders where the text places
them (``<ImageHere>`` as in MMDU's files, or ``<image>``), each marker taking the next image in
order. A turn with images and no markers shows them first, numbered as MMDU does::

    Image1: <v>..<v>
    Image2: <v>..<v>
    which image has more objects?

Each image is encoded on its own as a still frame (a tower that also sees the previous frame is
shown the image as its own previous: nothing moves), pooled on ``frames.chat_grid`` (finer than a
stream frame's grid where ``frames.image_grid`` says so) and, with ``frames.image_tags``, tagged with
the embedding of its number. The history is the model's own replies: each
turn is appended to the same KV cache and the reply greedy-decoded into it, so a follow-up ("and in
image 2?") reads the earlier turns.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmlc.errors import ConfigError, SourceError
from mmlc.streaming.decoder import CachedDecoder

IMAGE_MARKER = re.compile(r"<ImageHere>|<image>")


@dataclass
class ChatTurn:
    """One exchange: the user's text, how many images it showed, and the model's reply."""

    user: str
    reply: str
    images: int = 0
    image_names: list[str] = field(default_factory=list)


def turn_parts(text: str, n_images: int, first_index: int = 0, *, where: str = "text") -> list:
    """The user's text with markers -> layout parts (str, or int image index).

    ``where`` names the input in errors. Without markers, images are listed first as ``ImageK:``.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{where}: the message must be a string, got {type(text).__name__}")
    pieces = IMAGE_MARKER.split(text)
    n_markers = len(pieces) - 1
    if n_markers == 0:
        parts: list = []
        for k in range(n_images):
            parts += [f"Image{first_index + k + 1}: ", first_index + k, "\n"]
        return parts + ([text] if text else [])
    if n_markers != n_images:
        raise ConfigError(f"{where}: the text has {n_markers} image markers (<ImageHere>/<image>) but "
                          f"{n_images} images were given: pass one image per marker, or no markers")
    parts = []
    for k, piece in enumerate(pieces):
        if piece:
            parts.append(piece)
        if k < n_markers:
            parts.append(first_index + k)
    return parts


class ChatSession(CachedDecoder):
    """A conversation: ``send(text, images=[...])`` returns the reply; ``reset()`` starts over."""

    def __init__(self, model, *, system: str | None = None, max_reply_tokens: int = 64,
                 keep_history: bool = False, profile: bool = False):
        super().__init__(model, max_reply_tokens=max_reply_tokens, system=system, keep_history=keep_history,
                         profile=profile)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (cache, images, turns)."""
        self._reset_cache()
        self.turns: list[ChatTurn] = []
        self.images_seen = 0

    def stats(self) -> dict:
        return {"kv_length": self.kv_length, "position": self.position, "turns": len(self.turns),
                "images": self.images_seen}

    def send(self, text: str, images=None) -> str:
        """Add a user turn (text + images: paths, PIL images or HxWx3/HxW arrays of any dtype) and
        return the model's reply, which joins the history."""
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        names = _image_names(images)
        parts = turn_parts(text, len(images), self.images_seen, where=f"turn {len(self.turns) + 1}")
        tokens, words = self._encode_images(images) if images else (None, None)
        chunk = self.layout.user_turn(parts)
        start = time.perf_counter()
        logits = self._forward(chunk, tokens, words)
        reply = self._generate(logits, start, "answer", float(len(self.turns)))
        self.turns.append(ChatTurn(user=text, reply=reply, images=len(images), image_names=names))
        self.images_seen += len(images)
        return reply

    def replay(self, text: str, images=None, reply: str = "", reply_ids: list[int] | None = None) -> None:
        """Put an earlier turn (the user's text and images, and the reply given then) into the history
        without generating: a saved conversation continues where it stopped. With the reply's token ids
        (as generated) the cache holds exactly what ``send`` left there; without them, or when they are
        not token ids of this model, the reply text is encoded again."""
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        lay = self.layout
        parts = turn_parts(text, len(images), self.images_seen, where=f"turn {len(self.turns) + 1}")
        tokens, words = self._encode_images(images) if images else (None, None)
        self._forward(lay.user_turn(parts), tokens, words)
        vocab = self.model.lm.get_input_embeddings().weight.shape[0]
        valid = isinstance(reply_ids, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in reply_ids)
        ids = list(reply_ids) if valid else lay.text_ids(reply)
        self._forward_ids(ids + [lay.end_id], need_logits=False)
        self._last_item = "text"
        self.turns.append(ChatTurn(user=text, reply=reply, images=len(images), image_names=_image_names(images)))
        self.images_seen += len(images)

    @torch.inference_mode()
    def _encode_images(self, images: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images -> image tokens (N, T_image, D) and, for a model with a copy head, their tag words
        (N, T_image, Vw; else None), as training gives them; each image is its own previous frame."""
        from mmlc.streaming.images import load_image

        rgb = []
        for k, im in enumerate(images):
            try:
                rgb.append(load_image(im))
            except SourceError as err:
                raise SourceError(f"image {self.images_seen + k + 1} of turn {len(self.turns) + 1}: {err}") from None
        pixels = torch.cat([self.model.preprocess([f]) for f in rgb], dim=0)   # one at a time: no motion
        if self.model.copy_head is None:
            return self.model.image_embeddings(pixels), None
        return self.model.image_embeddings(pixels, words=True)


def _image_names(images: list) -> list[str]:
    """How a turn's images are recorded: a path as given, anything else by its type."""
    return [str(im) if isinstance(im, (str, Path)) else f"<{type(im).__name__}>" for im in images]
