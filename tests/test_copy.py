"""The copy head (frames.copy_head, mmlc.models.copy): what it adds is the chosen head's attention over
the tokens' tag words, at text positions only; a session's copy equals the one of a fresh forward over
the same compacted sequence; the tag words follow the KV cache when it is cut; bad configs are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from mmlc.config import MmlcConfig
from mmlc.errors import ConfigError
from mmlc.models.copy import word_to_vocab
from mmlc.models.layout import Frame, Memory
from mmlc.models.memory import MemoryState
from mmlc.streaming.kv import append_words, crop_tokens, drop_tokens, growing_cache
from mmlc.train.look import AttentionTap, head_attention


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(n)]


def _copy_model(tiny_with, memory: bool = False, head: str = "1.0", scale: float = 4.0):
    from mmlc.train.reader import enable_reader
    from mmlc.train.trainer import set_copy_head, set_memory_tags

    torch.manual_seed(0)
    model = tiny_with(**({"memory.tokens": 8} if memory else {}))
    enable_reader(model)
    if memory:
        assert set_memory_tags(model)
    assert set_copy_head(model, head, scale)
    return model.eval()


def test_copy_adds_the_heads_attention_over_tag_words_at_text_positions(tiny_with):
    """Forward with the copy minus forward without = scale x (attention of the head, computed apart by
    the look loss's head_attention) @ tag words @ M, at text positions; nothing at frame positions."""
    model = _copy_model(tiny_with)
    frames = _frames(3)
    layout = model.layout
    seq = layout.build([Frame(k) for k in range(3)])
    ids = torch.tensor([seq.ids + layout.question_prompt("what colour is the circle?").ids])
    with torch.no_grad():
        tokens, words = model.project(model.vision_features(model.preprocess(frames)), words=True)
        assert words.shape == (3, model.tokens_per_frame, len(model.reader.vocabulary))
        with AttentionTap(model.lm, [1]) as tap:
            with_copy = model(ids, frame_tokens=tokens, frame_words=words).logits[0]
        hidden, (cos, sin) = tap.inputs[1]
        model.config.frames.copy_head = None
        plain = model(ids, frame_tokens=tokens).logits[0]
        model.config.frames.copy_head = "1.0"
        n = ids.shape[1]
        p = head_attention(model.lm.get_decoder().layers[1].self_attn, hidden, cos, sin, 0,
                           torch.zeros(n, dtype=torch.long), torch.arange(n), torch.ones(1, n))
        at = torch.zeros(n, words.shape[-1])
        at[ids[0] == layout.frame_id] = words.reshape(-1, words.shape[-1])
        m = word_to_vocab(model.reader, model.tokenizer, plain.shape[-1])
        expected = 4.0 * (p @ at) @ m
    text = ids[0] != layout.frame_id
    torch.testing.assert_close(with_copy[text] - plain[text], expected[text], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(with_copy[~text], plain[~text])
    assert float((with_copy[text] - plain[text]).abs().max()) > 0.1   # the copy did add something


def test_word_to_vocab_marks_both_forms_of_every_tag_word():
    """On the shipped tokenizer, where " red" and "red" are different tokens: both are marked, nothing else;
    a vowel-initial word ("orange") also marks the article "an"."""
    import mmlc

    model = mmlc.load()
    tok = model.tokenizer
    m = word_to_vocab(model.reader, tok, model.lm.get_output_embeddings().weight.shape[0])
    i = [w for _, w in model.reader.vocabulary].index("red")
    bare, spaced = (tok(t, add_special_tokens=False)["input_ids"] for t in ("red", " red"))
    assert len(bare) == len(spaced) == 1 and bare != spaced
    assert set(m[i].nonzero().flatten().tolist()) == {bare[0], spaced[0]}
    j = [w for _, w in model.reader.vocabulary].index("orange")
    an = {tok(t, add_special_tokens=False)["input_ids"][0] for t in ("an", " an")}
    assert an <= set(m[j].nonzero().flatten().tolist()) and not an & set(m[i].nonzero().flatten().tolist())
    assert m.sum(1).min() >= 1 and m.sum(1).max() <= 4


def test_session_copy_equals_a_fresh_forward_over_the_compacted_sequence(tiny_with):
    """Scenes closed into tagged memory blocks (the cache cropped and refilled at each): the answer's first
    logits equal one forward over [Memory per closed scene] + the current frames + the question, with the
    tag words of the same memories and frames. (Dropped blocks keep the RoPE positions of what stays, so
    a fresh forward would differ there; test_tag_words_follow_the_cache_when_it_is_cut covers dropping.)"""
    model = _copy_model(tiny_with, memory=True)
    frames = _frames(23, seed=3)
    s = model.stream(fps=2.0, threshold=0.0, max_scene_seconds=3.0, max_memories=16)   # never speaks
    for f in frames:
        s.push_frame(f)
    starts = s.scene_starts
    assert len(starts) >= 4 and s.stats()["memories_kept"] == len(starts) - 1
    assert s.cache.copy_words.shape[1] == s.kv_length
    q = "what colour is the circle?"
    with torch.inference_mode():
        got = s._forward(model.layout.question_prompt(q))
        pixels = model.preprocess(frames)
        feats = model.vision_features(pixels)
        state = MemoryState(model.bridge)
        blocks = [model.memory_embeddings(state.add_scene(model.memory_features(feats[a:b])), feats[a:b], words=True)
                  for a, b in zip(starts, starts[1:])]
        tokens, words = model.project(feats[starts[-1]:], words=True)
        items = [Memory() for _ in blocks] + [Frame(k) for k in range(len(frames) - starts[-1])]
        ids = model.layout.build(items).ids + model.layout.question_prompt(q).ids
        out = model(torch.tensor([ids]), frame_tokens=tokens, frame_words=words,
                    memory_tokens=torch.cat([t[0] for t, _ in blocks]), memory_words=torch.cat([w for _, w in blocks]))
    assert s.kv_length == len(ids)
    torch.testing.assert_close(got, out.logits[0, -1], atol=2e-4, rtol=1e-4)


def test_chat_images_carry_their_tag_words(tiny_with):
    """A chat turn with images gives the copy their tag words, as training does (lm_step projects chat
    images with words): after ``send``, the cache holds them at the image positions, and the next turn's
    logits equal a fresh forward over the same ids with them (and differ from one without them)."""
    from mmlc.streaming.chat import ChatSession, turn_parts

    model = _copy_model(tiny_with)
    images = _frames(2, seed=5)
    s = ChatSession(model, keep_history=True, max_reply_tokens=3)
    s.send("what colour is the circle?", images=images)
    with torch.inference_mode():
        tokens, words = model.image_embeddings(torch.cat([model.preprocess([f]) for f in images]), words=True)
        got = s._forward(model.layout.user_turn(turn_parts("and the square?", 0)))
        ids, tags = torch.tensor([s.history_ids]), torch.tensor([s.history_tags])
        fresh = model(ids, frame_tokens=tokens, frame_words=words, tags=tags).logits[0, -1]
        blind = model(ids, frame_tokens=tokens, tags=tags).logits[0, -1]
    at = ids[0] == model.layout.frame_id
    torch.testing.assert_close(s.cache.copy_words[0, at], words.reshape(-1, words.shape[-1]))
    torch.testing.assert_close(got, fresh, atol=2e-4, rtol=1e-4)
    assert (got - blind).abs().max() > 1e-3


def test_tag_words_follow_the_cache_when_it_is_cut(tiny_with):
    model = _copy_model(tiny_with)
    cache = growing_cache(model.lm.config)
    ids = torch.tensor([model.layout.build([Frame(0), Frame(1)]).ids])
    with torch.no_grad():
        tokens, words = model.project(model.vision_features(model.preprocess(_frames(2))), words=True)
        model(ids, frame_tokens=tokens, frame_words=words, cache=cache, position_ids=torch.arange(ids.shape[1])[None])
    full = cache.copy_words.clone()
    n = ids.shape[1]
    assert full.shape[:2] == (1, n) and full.sum() > 0
    drop_tokens(cache, 2, 5)
    torch.testing.assert_close(cache.copy_words, torch.cat([full[:, :2], full[:, 5:]], 1))
    crop_tokens(cache, 4)
    assert cache.get_seq_length() == 4 and cache.copy_words.shape[1] == 4
    torch.testing.assert_close(cache.copy_words, torch.cat([full[:, :2], full[:, 5:7]], 1))


def test_tag_words_grow_in_place_and_survive_cuts():
    """Many appends, a drop and a crop give the words a plain concatenation gives, and appends
    within capacity write into the same buffer (no copy of the cache's words per frame)."""
    cache, ref = DynamicCache(), torch.zeros(1, 0, 5)
    gen = torch.Generator().manual_seed(0)
    ptrs = set()
    for step in range(60):
        new = torch.rand(1, 7, 5, generator=gen)
        append_words(cache, new)
        ref = torch.cat([ref, new], 1)
        ptrs.add(cache.copy_words.data_ptr())
        if step == 20:
            drop_tokens(cache, 30, 50)
            ref = torch.cat([ref[:, :30], ref[:, 50:]], 1)
        if step == 30:
            keep = ref.shape[1] - 9           # what crop_tokens does to the words
            cache.copy_words = cache.copy_words[:, :keep]
            ref = ref[:, :keep]
        torch.testing.assert_close(cache.copy_words, ref)
    assert len(ptrs) == 2                     # 256 rows, then one doubling past 256 (391 at the end)


def test_bench_measures_the_stream_without_the_copy(tiny_with, tiny_model):
    """``mmlc bench --baselines no_copy``: the same stream with the copy off, and the head back after."""
    from mmlc.bench import run_bench

    model = _copy_model(tiny_with)
    report = run_bench(model, minutes=0.1, reply_every=4, reply_tokens=2, size=32, baselines=("no_copy",),
                       progress=False, log=lambda *a: None)
    nc = report["baselines"]["no_copy"]
    assert nc["fps"] > 0 and nc["speedup"] > 0 and model.copy_head == "1.0"
    plain = run_bench(tiny_model, minutes=0.05, reply_every=0, size=32, baselines=("no_copy",), progress=False,
                      log=lambda *a: None)
    assert plain["baselines"]["no_copy"]["fps"] is None and "no copy head" in plain["baselines"]["no_copy"]["note"]


def test_bad_copy_configs_are_refused(tiny_with):
    model = _copy_model(tiny_with)
    data = model.config.to_dict()
    for bad in ("3", "a.b", 3):
        data["frames"]["copy_head"] = bad
        with pytest.raises(ConfigError, match="frames.copy_head"):
            MmlcConfig.from_dict(data)
    data["frames"]["copy_head"] = "1.0"
    data["frames"]["copy_scale"] = 0
    with pytest.raises(ConfigError, match="frames.copy_scale"):
        MmlcConfig.from_dict(data)
    plain = tiny_with()
    from mmlc.train.trainer import set_copy_head

    with pytest.raises(ConfigError, match="word tags"):
        set_copy_head(plain, "1.0")
    with pytest.raises(ConfigError, match="layer"):
        set_copy_head(model, "9.0")


def test_training_goes_through_the_copy_as_the_session_scores(tiny_with):
    """lm_step's training loss (LM head at labelled positions, copy added there) equals the loss of the
    full forward that evaluation and sessions use, and differs from the loss without the copy; the
    copy head's queries get a gradient through the copy."""
    from mmlc.train import examples as ex
    from mmlc.train.trainer import collate, lm_step

    model = _copy_model(tiny_with, memory=True)
    rng = np.random.default_rng(5)
    batch = collate(model, [ex.needle_memory_example(rng, max_frames=12) for _ in range(2)])
    train, _ = lm_step(model, batch)
    with torch.no_grad():
        full, _ = lm_step(model, batch, full_logits=True)
        model.config.frames.copy_head = None
        plain, _ = lm_step(model, batch, full_logits=True)
        model.config.frames.copy_head = "1.0"
    torch.testing.assert_close(train["text_loss"].detach(), full["text_loss"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(train["stream_loss"].detach(), full["stream_loss"], atol=1e-4, rtol=1e-4)
    assert abs(float(full["text_loss"] - plain["text_loss"])) > 1e-3
    wq = model.lm.get_decoder().layers[1].self_attn.q_proj.weight
    with_copy = torch.autograd.grad(train["text_loss"], wq)[0]
    model.config.frames.copy_head = None
    without = torch.autograd.grad(lm_step(model, batch)[0]["text_loss"], wq)[0]
    model.config.frames.copy_head = "1.0"
    assert float((with_copy - without)[:model.lm.get_decoder().layers[1].self_attn.head_dim].abs().max()) > 1e-6
