"""ChatSession: image markers, the layout of a chat turn, history in the cache, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlc.errors import ConfigError, SourceError
from mmlc.models.layout import Turn
from mmlc.streaming.chat import turn_parts


def test_turn_parts_markers_and_default_listing():
    assert turn_parts("<ImageHere>and<image>which?", 2) == [0, "and", 1, "which?"]
    assert turn_parts("which image?", 2, first_index=3) == ["Image4: ", 3, "\n", "Image5: ", 4, "\n", "which image?"]
    assert turn_parts("no images", 0) == ["no images"]
    with pytest.raises(ConfigError, match="2 image markers .* 1 images"):
        turn_parts("<image> vs <image>", 1)


def test_chat_turn_layout_places_images(tiny_model):
    lay = tiny_model.layout
    chunk = lay.user_turn(["Image1: ", 0, "\nq?"])
    assert chunk.ids[0] == lay.user_id and chunk.ids[-1] == lay.assistant_id
    assert chunk.ids.count(lay.frame_id) == tiny_model.tokens_per_frame and chunk.frames == [0]
    seq = lay.build([Turn(["Image1: ", 0, "\nq?"], "red.")])
    # only the answer and its {end} are targets, predicted from {assistant} onwards
    targets = [t for t in seq.labels if t >= 0]
    assert targets == lay.text_ids("red.") + [lay.end_id]
    start = seq.ids.index(lay.assistant_id)
    assert seq.labels[start] == lay.text_ids("red.")[0]


def test_chat_history_is_the_cache(tiny_model, frames):
    chat = tiny_model.chat(max_reply_tokens=3, keep_history=True)
    r1 = chat.send("<ImageHere> what colour is the circle?", images=[frames[0]])
    kv1 = chat.stats()["kv_length"]
    r2 = chat.send("and in <image>?", images=[Image.fromarray(frames[1])])
    assert isinstance(r1, str) and isinstance(r2, str)
    assert chat.stats()["turns"] == 2 and chat.stats()["images"] == 2 and chat.stats()["kv_length"] > kv1
    # the cached conversation and one forward over all of it predict the same next token
    lay = tiny_model.layout
    cached = chat._forward_ids([lay.user_id])
    ids = torch.tensor([chat.history_ids])
    with torch.inference_mode():
        full = tiny_model(ids, frame_tokens=torch.cat(chat.history_frames), logits_to_keep=1).logits[0, -1]
    assert len(chat.history_frames) == 2 and ids.shape[1] == chat.position
    torch.testing.assert_close(full, cached, atol=1e-4, rtol=1e-4)
    chat.reset()
    assert chat.stats() == {"kv_length": 0, "position": 0, "turns": 0, "images": 0}


def test_replayed_turns_continue_the_conversation(tiny_model, frames):
    """A conversation restored with ``replay`` (turns and their replies, as saved) holds the same cache
    as the one that generated them: the next turn gets the same reply at the same position."""
    live = tiny_model.chat(max_reply_tokens=3, keep_history=True)
    r1 = live.send("<ImageHere> what colour is the circle?", images=[frames[0]])
    ids = list(live.history_ids[len(live.history_ids) - 1 - live.history_ids[::-1].index(tiny_model.layout.assistant_id) + 1:-1])
    restored = tiny_model.chat(max_reply_tokens=3, keep_history=True)
    restored.replay("<ImageHere> what colour is the circle?", [frames[0]], r1, reply_ids=ids)
    assert restored.stats() == live.stats() and restored.turns[0].reply == r1
    assert restored.history_ids == live.history_ids
    assert restored.send("and <image>?", images=[frames[1]]) == live.send("and <image>?", images=[frames[1]])
    assert restored.stats() == live.stats()
    # without usable ids (e.g. another model's) the reply text is encoded again
    again = tiny_model.chat(keep_history=True)
    again.replay("<ImageHere> what colour is the circle?", [frames[0]], "red.", reply_ids=[-5])
    assert again.history_ids[-len(tiny_model.layout.text_ids("red.")) - 1:-1] == tiny_model.layout.text_ids("red.")


def test_chat_is_deterministic_and_images_matter(tiny_model, frames):
    a = tiny_model.chat(max_reply_tokens=4, keep_history=True)
    b = tiny_model.chat(max_reply_tokens=4, keep_history=True)
    assert a.send("describe", images=[frames[2], frames[3]]) == b.send("describe", images=[frames[2], frames[3]])
    # each image is encoded as a still frame: its tokens do not depend on the image before it
    c = tiny_model.chat(keep_history=True)
    c.send("describe", images=[frames[5], frames[3]])
    torch.testing.assert_close(a.history_frames[0][-tiny_model.tokens_per_frame:],
                               c.history_frames[0][-tiny_model.tokens_per_frame:], atol=1e-5, rtol=1e-5)


def test_chat_accepts_any_image_mode(tiny_model, tmp_path):
    gray16 = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)
    rgba = Image.new("RGBA", (17, 9), (10, 200, 30, 128))
    path = tmp_path / "p.png"
    Image.new("L", (20, 20), 128).save(path)
    chat = tiny_model.chat(max_reply_tokens=2)
    chat.send("compare", images=[gray16, rgba, str(path)])
    assert chat.images_seen == 3


def test_chat_bad_images(tiny_model, tmp_path):
    chat = tiny_model.chat()
    with pytest.raises(SourceError, match="image 1 of turn 1.*missing.png"):
        chat.send("look", images=[str(tmp_path / "missing.png")])
    with pytest.raises(ConfigError, match="unknown chat options"):
        tiny_model.chat(temperature=0.7)
    assert chat.stats()["turns"] == 0


def test_chat_cli_one_shot_and_interactive(tmp_path, monkeypatch, capsys):
    import io

    from mmlc.cli import main

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (24, 24), (200, 10, 10)).save(a)
    Image.new("RGB", (24, 24), (10, 10, 200)).save(b)
    common = ["--model", "tiny-test", "--init", "random", "--max-reply-tokens", "2"]
    assert main(["chat", "--image", str(a), "--image", str(b), "which image is red?", *common]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    turns = f"/image {a}\nwhat colour is the room?\nand now?\n/image {tmp_path / 'nope.png'}\nbad turn\n/reset\nhi\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(turns))
    assert main(["chat", *common]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 3            # three answered turns; the bad one reported, not fatal
    assert "nope.png" in out.err and "Traceback" not in out.err


@pytest.fixture()
def tagged_model(tiny_with):
    return tiny_with(**{"frames.image_tags": True})


def test_image_tags_name_each_image_by_its_number(tagged_model):
    """With ``frames.image_tags`` a chat image's placeholders carry the number token a question uses
    for it; text and stream frames carry none, and the labels are unchanged by the tags."""
    from mmlc.models.layout import Frame, Reply

    lay = tagged_model.layout
    assert [lay.tokenizer.decode([lay.image_tag(k)]).strip() for k in range(3)] == ["1", "2", "3"]
    assert lay.image_tag(2) in lay.text_ids("in image 3?")   # the question's own token for it
    items = [Turn(turn_parts("which image has more objects?", 2), "image 2.")]
    seq = lay.build(items)
    assert len(seq.tags) == len(seq.ids)
    tagged = [(i, t) for i, t in enumerate(seq.tags) if t >= 0]
    frame_pos = [i for i, t in enumerate(seq.ids) if t == lay.frame_id]
    assert [i for i, _ in tagged] == frame_pos
    tpf = tagged_model.tokens_per_frame
    assert [t for _, t in tagged] == [lay.image_tag(0)] * tpf + [lay.image_tag(1)] * tpf
    untagged = lay.__class__(lay.template, lay.tokenizer, tpf).build(items)
    assert untagged.tags is None and untagged.ids == seq.ids and untagged.labels == seq.labels
    assert lay.build([Frame(0), Reply("hi."), Frame(1)]).tags is None   # streams are never tagged


def test_image_tags_add_the_number_embedding(tagged_model, frames):
    lay = tagged_model.layout
    seq = lay.build([Turn(turn_parts("how many?", 2), None)])
    ids = torch.tensor([seq.ids])
    tags = torch.tensor([seq.tags])
    tokens = torch.randn(2, tagged_model.tokens_per_frame, tagged_model.lm.config.hidden_size)
    with torch.no_grad():
        diff = tagged_model.embed(ids, tokens, tags=tags) - tagged_model.embed(ids, tokens)
        table = tagged_model.lm.get_input_embeddings().weight
    for i, t in enumerate(seq.tags):
        torch.testing.assert_close(diff[0, i], table[t] if t >= 0 else torch.zeros_like(table[0]))


def test_tagged_chat_cache_matches_one_forward_and_training_batch(tagged_model, frames):
    """The chat session feeds the tags it built; one forward over its history with those tags predicts
    the same, and the training batch of the same dialogue carries the same tags."""
    from mmlc.train import trainer
    from mmlc.train.examples import Example

    chat = tagged_model.chat(max_reply_tokens=3, keep_history=True)
    chat.send("which image has more objects?", images=[frames[0], frames[1]])
    lay = tagged_model.layout
    cached = chat._forward_ids([lay.user_id])
    hist = torch.tensor([chat.history_ids])
    with torch.inference_mode():
        full = tagged_model(hist, frame_tokens=torch.cat(chat.history_frames), logits_to_keep=1,
                            tags=torch.tensor([chat.history_tags])).logits[0, -1]
        plain = tagged_model(hist, frame_tokens=torch.cat(chat.history_frames), logits_to_keep=1).logits[0, -1]
    torch.testing.assert_close(full, cached, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, cached, atol=1e-4)          # the tags reach the LM
    still = np.stack([np.asarray(Image.fromarray(f).resize((16, 16))) for f in frames[:2]])
    example = Example([Turn(turn_parts("which image has more objects?", 2), "image 1.")], still, still[0],
                      decisions=False, still=True)
    batch = trainer.collate(tagged_model, [example])
    n_tags = int((batch["tags"] >= 0).sum())
    assert n_tags == 2 * tagged_model.tokens_per_frame
    assert sorted(set(batch["tags"][batch["tags"] >= 0].tolist())) == sorted({lay.image_tag(0), lay.image_tag(1)})


def test_chat_images_with_a_finer_grid(tiny_with, frames):
    """``frames.image_grid``: a chat image takes [pooled] + 4x4 tokens while stream frames keep 1 + 2x2;
    the cached conversation still equals one forward over its history."""
    from mmlc.config import apply_overrides
    from mmlc.models.presets import preset

    model = tiny_with(**{"frames.image_grid": 4})
    lay = model.layout
    assert lay.user_turn(["Image1: ", 0, "q?"]).ids.count(lay.frame_id) == 17
    assert lay.frame(0, False).ids.count(lay.frame_id) == 5
    chat = model.chat(max_reply_tokens=3, keep_history=True)
    chat.send("which image has more objects?", images=[frames[0], frames[1]])
    assert [f.shape[0] for f in chat.history_frames] == [34]
    cached = chat._forward_ids([lay.user_id])
    with torch.inference_mode():
        full = model(torch.tensor([chat.history_ids]), frame_tokens=torch.cat(chat.history_frames),
                     logits_to_keep=1).logits[0, -1]
    torch.testing.assert_close(full, cached, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="image_grid"):
        apply_overrides(preset("tiny-test"), {"frames.image_grid": -1})
