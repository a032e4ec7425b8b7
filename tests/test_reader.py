"""Word tags (mmlc.models.reader): labels match the rendered frame, the tags are the words' embeddings,
the reader learns from real frames, and a recipe's reader stage survives saving, loading and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.errors import ConfigError
from mmlc.train import reader as rd
from mmlc.train import recipes, trainer
from mmlc.train.recipes import Stage
from mmlc.train.vision_aux import pair_pixels


def test_cell_labels_mark_the_cells_the_object_is_drawn_in():
    """Every pixel an object paints lies in a cell labelled with its shape, colour and size, and a cell
    labelled with nothing shows only the room (up to noise)."""
    cfg = sw.WorldConfig(noise=0)
    words = rd.world_words(cfg)
    grid, seen = 4, 0
    for seed in range(6):
        mi = sw.generate_multi_image(seed, config=cfg)
        for img, state in zip(mi.images, mi.states):
            lab = rd.cell_labels(state, words, grid, cfg.size)
            assert int(lab["room"]) == words["rooms"].index(state["room"])
            room_rgb = np.array(sw.ROOMS[state["room"]])
            painted = np.abs(img.astype(int) - room_rgb).sum(-1) > 60          # (H, W) object pixels
            cell = cfg.size // grid
            for r in range(grid):
                for c in range(grid):
                    block = painted[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
                    if lab["present"][r * grid + c].sum() == 0:
                        assert block.mean() < 0.02, (seed, r, c)
            for o in state["objects"]:
                s = words["shapes"].index(o["shape"])
                cells = np.flatnonzero(lab["present"][:, s])
                assert len(cells) >= 1
                assert set(lab["colour"][cells, s]) == {words["colours"].index(o["colour"])}
                assert set(lab["size"][cells, s]) == {words["sizes"].index(o["size"])}
                seen += 1
            absent = [words["shapes"].index(sh) for sh in words["shapes"]
                      if sh not in {o["shape"] for o in state["objects"]}]
            assert lab["present"][:, absent].sum() == 0 and (lab["colour"][:, absent] == rd.IGNORE).all()
    assert seen >= 10


def _reader_model(tiny_with):
    model = tiny_with()
    assert rd.enable_reader(model) and not rd.enable_reader(model)   # once only
    return model


def test_tags_are_the_embeddings_of_the_words_read(tiny_with):
    """A reader sure that a cell holds a small red circle adds E[" circle"] + E["red"] + E["small"] to that
    token (and E[room] to the pooled token), each word's first token; project() = connector + tags."""
    model = _reader_model(tiny_with)
    rdr, words, tok = model.reader, model.config.frames.words, model.tokenizer
    with torch.no_grad():
        for lin in (rdr.present, rdr.colour, rdr.size, rdr.room):
            lin.weight.zero_()
            lin.bias.fill_(-30.0)
        s, c, z, room = words["shapes"].index("circle"), words["colours"].index("red"), 0, 2
        rdr.present.bias[s] = 30.0
        rdr.colour.bias.view(len(words["shapes"]), -1)[s, c] = 30.0
        rdr.size.bias.view(len(words["shapes"]), -1)[s, z] = 30.0
        rdr.room.bias[room] = 30.0
    table = model.lm.get_input_embeddings().weight
    emb = lambda text: table[tok(text, add_special_tokens=False)["input_ids"][0]]   # noqa: E731
    feats = torch.randn(3, model.tokens_per_frame, model.config.vision.hidden_size)
    with torch.no_grad():
        tags = rdr.tags(feats, table, tok)
        want = emb(" circle") + emb("red") + emb(words["sizes"][z])
        assert torch.allclose(tags[:, 1:], want.expand_as(tags[:, 1:]), atol=1e-4)
        assert torch.allclose(tags[:, 0], emb(words["rooms"][room]).expand_as(tags[:, 0]), atol=1e-4)
        assert torch.allclose(model.project(feats), model.connector(feats) + tags, atol=1e-5)
        model.config.frames.tag_scale = 3.0
        assert torch.allclose(model.project(feats), model.connector(feats) + 3.0 * tags, atol=1e-4)
    model.tokenizer = None
    with pytest.raises(ConfigError, match="tokenizer"):
        model.project(feats)


def test_object_tags_give_a_shared_cell_one_object_and_each_shape_its_frame_colour(tiny_with):
    """tag_mode "object": a cell two shapes share carries only the surer one's words, and every cell of a
    shape carries the colour read over all its cells; "cell" mode keeps the bag (both shapes, each with
    the colour read in that cell). The reader's logits are set by hand (the binding is what is tested)."""
    model = _reader_model(tiny_with)
    rdr, words, tok = model.reader, model.config.frames.words, model.tokenizer
    S, C, Z = (len(words[k]) for k in ("shapes", "colours", "sizes"))
    ci, sq = words["shapes"].index("circle"), words["shapes"].index("square")
    green, red, blue = (words["colours"].index(c) for c in ("green", "red", "blue"))
    small, large = words["sizes"].index("small"), words["sizes"].index("large")
    present = torch.full((1, 3, S), -30.0)
    colour, size = torch.full((1, 3, S, C), -30.0), torch.full((1, 3, S, Z), -30.0)
    present[0, 0, ci], colour[0, 0, ci, green], size[0, 0, ci, small] = 30.0, 30.0, 30.0
    present[0, :, sq] = torch.tensor([28.0, 30.0, 30.0])           # the square is less sure in cell 0
    colour[0, 0, sq, blue] = colour[0, 1, sq, red] = colour[0, 2, sq, red] = 30.0   # misread in cell 0
    size[0, :, sq, large] = 30.0
    rdr.logits = lambda feats: {"present": present, "colour": colour, "size": size,   # noqa: E731
                                "room": torch.zeros(1, len(words["rooms"]))}
    table = model.lm.get_input_embeddings().weight.detach()
    emb = lambda text: table[tok(text, add_special_tokens=False)["input_ids"][0]]   # noqa: E731
    feats = torch.zeros(1, 4, model.config.vision.hidden_size)
    circle = emb(" circle") + emb("green") + emb("small")
    cell = rdr.tags(feats, table, tok, mode="cell")[0, 1:]
    assert torch.allclose(cell[0], circle + emb(" square") + emb("blue") + emb("large"), atol=1e-4)
    obj = rdr.tags(feats, table, tok, mode="object")[0, 1:]
    assert torch.allclose(obj[0], circle, atol=1e-3)
    square = emb(" square") + (2 * emb("red") + emb("blue")) / 3 + emb("large")
    assert torch.allclose(obj[1], square, atol=1e-3) and torch.allclose(obj[2], square, atol=1e-3)
    model.config.frames.tag_mode = "object"
    assert torch.allclose(model.project(feats)[0, 1:], model.connector(feats)[0, 1:] + obj, atol=1e-4)
    with pytest.raises(ValueError, match="tag mode"):
        rdr.tags(feats, table, tok, mode="slots")


def test_a_few_reader_steps_on_real_frames_lower_its_loss(tiny_with):
    model = _reader_model(tiny_with)
    rng = np.random.default_rng(0)
    prevs, curs, labels = rd.sample_frames(rng, 24, model.config.frames.words, model.config.frames.grid)
    assert labels["present"].shape == (24, model.config.frames.grid ** 2, len(model.config.frames.words["shapes"]))
    assert labels["present"].sum() > 0
    with torch.no_grad():
        feats = model.vision_features(pair_pixels(model, prevs, curs))
    acc = _steps_lower_the_loss(rd.reader_loss, model, model.reader.parameters(), feats, labels)
    assert set(acc) >= {"present", "present_pos", "colour", "size", "room"}


def _steps_lower_the_loss(loss_fn, model, params, feats, labels, steps: int = 30) -> dict:
    """``steps`` AdamW steps on ``params`` lower ``loss_fn(model, feats, labels)`` by 30%; the last accuracies."""
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        loss, acc = loss_fn(model, feats, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    return acc


def test_a_reader_stage_is_saved_loaded_and_resumed(tmp_path, monkeypatch):
    """A recipe's reader stage gives the saved model a reader (config frames.words, its weights), the loaded
    model's frame tokens carry the tags, an interrupted reader stage resumes with its reader, and a later
    LM stage keeps it unchanged."""
    stages = [Stage("vision", steps=2, lr=1e-3, batch_size=4, warmup=1, eval_examples=8),
              Stage("reader", steps=4, lr=1e-2, batch_size=8, warmup=1, eval_examples=8)]
    factory = lambda st: (lambda: recipes.Recipe(name="tiny-smoke", preset="tiny-test",   # noqa: E731
                                                 tokenizer_episodes=20, save_every=2, stages=st))
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", factory(stages))
    calls = {"n": 0}
    real = rd.sample_frames

    def crash_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "sample_frames", crash_on_fourth)
    out, logs = tmp_path / "run", []
    with pytest.raises(KeyboardInterrupt):
        trainer.train("tiny-smoke", out, progress=False, log=logs.append)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (state["stage"], state["step"]) == (1, 2)
    monkeypatch.setattr(trainer, "sample_frames", real)
    model = mmlc.load(trainer.train("tiny-smoke", out, progress=False, log=logs.append))
    assert any(line.startswith("resuming stage 1 (reader) at step 2") for line in logs)
    assert model.reader is not None and model.config.frames.words == rd.world_words()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals if "eval" in e] == ["vision", "reader"]
    assert 0.0 <= evals[-1]["eval"]["colour"] <= 1.0
    px = model.preprocess(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        feats = model.vision_features(px)
        assert not torch.allclose(model.frame_embeddings(px), model.connector(feats))

    before = {k: v.clone() for k, v in model.reader.state_dict().items()}
    assert model.config.frames.tag_scale == 1.0
    more = stages + [Stage("align", steps=2, lr=1e-3, batch_size=2, warmup=1, eval_examples=2, tag_scale=2.5,
                            tag_mode="object")]
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", factory(more))
    later = mmlc.load(trainer.train("tiny-smoke", out, progress=False, log=logs.append, keep_stages=True))
    assert all(torch.equal(before[k], v) for k, v in later.reader.state_dict().items())   # frozen in LM stages
    assert any("word tags bound per object, added x2.5" in line for line in logs)
    # the scale is saved with the model, and each stage's model is kept (the stage trained in this call)
    assert (later.config.frames.tag_scale, later.config.frames.tag_mode) == (2.5, "object")
    kept = mmlc.load(out / "stages" / "03-align")
    assert (kept.config.frames.tag_scale, kept.config.frames.tag_mode) == (2.5, "object") and not (out / "stages" / "02-reader").exists()
    with torch.no_grad():
        feats = later.vision_features(px)
        tags = later.reader.tags(feats, later.lm.get_input_embeddings().weight, later.tokenizer, mode="object")
        assert torch.allclose(later.project(feats), later.connector(feats) + 2.5 * tags, atol=1e-4)
    for bad in (dict(name="reader", tag_scale=2.0), dict(name="align", tag_scale=-1.0),
                dict(name="vision", tag_scale=2.0), dict(name="reader", frames_grid=4),
                dict(name="reader", tag_mode="object"), dict(name="align", tag_mode="slots")):
        with pytest.raises(ConfigError, match="reader|tag_scale|tag_mode"):
            Stage(steps=1, lr=1e-3, **bad)
    # a scale with no reader to scale is refused before the stage trains
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", factory([stages[0], more[-1]]))
    with pytest.raises(ConfigError, match="no reader yet"):
        trainer.train("tiny-smoke", tmp_path / "noreader", progress=False)


def _hand_logits(words, present, colour, size, room):
    return lambda feats: {"present": present, "colour": colour, "size": size, "room": room}   # noqa: E731


def test_scene_tags_keep_what_two_consecutive_frames_show_and_read_colours_by_recency(tiny_with):
    """A closed scene's tags (memory.tags): a shape read in one frame only is dropped (a misreading), one
    read in two consecutive frames (a 1.5 s needle) is kept at full strength, a shape's colour is the
    recency-weighted reading (halving every 4 frames back from the end), and so is the room; the model's
    memory tokens are the connector's plus tag_scale x [room, shapes..., 0...]."""
    model = tiny_with(**{"memory.tokens": 8})
    rd.enable_reader(model)
    rdr, words, tok = model.reader, model.config.frames.words, model.tokenizer
    S, C, Z, R = (len(words[k]) for k in ("shapes", "colours", "sizes", "rooms"))
    n, g = 5, model.tokens_per_frame - 1
    ci, cr, sq = (words["shapes"].index(w) for w in ("circle", "cross", "square"))
    red, blue, white = (words["colours"].index(c) for c in ("red", "blue", "white"))
    present, colour = torch.full((n, g, S), -30.0), torch.full((n, g, S, C), -30.0)
    size, room = torch.full((n, g, S, Z), -30.0), torch.full((n, R), -30.0)
    size[..., 0] = 30.0
    present[2, 0, ci] = 30.0                                   # one frame only
    present[1:3, 1, cr] = 30.0                                 # two consecutive frames
    colour[1:3, 1, cr, white] = 30.0
    present[:, 2, sq] = 30.0                                   # the whole scene, red then blue at the end
    colour[:4, 2, sq, red] = colour[4, 2, sq, blue] = 30.0
    room[:4, 0] = room[4, 1] = 30.0
    rdr.logits = _hand_logits(words, present, colour, size, room)
    table = model.lm.get_input_embeddings().weight.detach()
    emb = lambda text: table[tok(text, add_special_tokens=False)["input_ids"][0]]   # noqa: E731
    feats = torch.zeros(n, model.tokens_per_frame, model.config.vision.hidden_size)
    tags = rdr.scene_tags(feats, table, tok)
    assert tags.shape == (1 + S, table.shape[1])
    small = emb(words["sizes"][0])
    assert torch.allclose(tags[1 + cr], emb(" cross") + emb("white") + small, atol=1e-4)
    assert tags[1 + ci].norm() < 1e-6 * table.norm()
    w = 0.5 ** (torch.arange(4, -1, -1) / 4.0)
    late = float(w[-1] / w.sum())                              # 1 / 3.64: the last frame's share
    assert torch.allclose(tags[1 + sq], emb(" square") + (1 - late) * emb("red") + late * emb("blue") + small, atol=1e-4)
    assert torch.allclose(tags[0], (1 - late) * emb(words["rooms"][0]) + late * emb(words["rooms"][1]), atol=1e-4)

    memory = torch.randn(1, 8, model.config.vision.hidden_size)
    with torch.no_grad():
        plain = model.memory_embeddings(memory)
        model.config.memory.tags = True
        model.config.frames.tag_scale = 3.0
        tagged = model.memory_embeddings(memory, feats)
    assert torch.allclose(tagged[0, :1 + S], plain[0, :1 + S] + 3.0 * tags, atol=1e-4)
    assert torch.equal(tagged[0, 1 + S:], plain[0, 1 + S:])
    with pytest.raises(ValueError, match="scene's frame features"):
        model.memory_embeddings(memory)


def test_a_needle_at_the_start_of_a_long_scene_keeps_its_colour(tiny_with):
    """A diamond read surely (yellow) in frames 0-2 of a 40-frame scene, then faintly (presence 0.01,
    red) in every later frame: its tag's colour is yellow. Weighted by presence squared and recency
    alone, the faint late frames (0.01 ** 2 at recency ~1) outweighed the needle (1 at 0.5 ** 9.5)."""
    model = tiny_with(**{"memory.tokens": 8})
    rd.enable_reader(model)
    rdr, words = model.reader, model.config.frames.words
    S, C, Z, R = (len(words[k]) for k in ("shapes", "colours", "sizes", "rooms"))
    n, g = 40, model.tokens_per_frame - 1
    di = words["shapes"].index("diamond")
    yellow, red = (words["colours"].index(c) for c in ("yellow", "red"))
    present, colour = torch.full((n, g, S), -30.0), torch.full((n, g, S, C), -30.0)
    size, room = torch.zeros((n, g, S, Z)), torch.zeros((n, R))
    present[:3, 0, di] = 30.0
    present[3:, 0, di] = float(torch.logit(torch.tensor(0.01)))
    colour[:3, 0, di, yellow] = colour[3:, 0, di, red] = 30.0
    rdr.logits = _hand_logits(words, present, colour, size, room)
    got = rdr.scene_words(torch.zeros(n, model.tokens_per_frame, model.config.vision.hidden_size))
    assert float(got["seen"][di]) > 0.99
    assert int(got["colour"][di].argmax()) == yellow and float(got["colour"][di, yellow]) > 0.99


def test_memory_tags_need_a_reader_and_enough_memory_tokens(tiny_with):
    from mmlc.config import apply_overrides
    from mmlc.models.presets import preset

    with pytest.raises(ConfigError, match="memory.tags"):
        apply_overrides(preset("tiny-test"), {"memory.tags": True})                 # no word tags
    with pytest.raises(ConfigError, match="memory.tags"):                            # 4 < 1 + 6 tokens
        apply_overrides(preset("tiny-test"), {"frames.words": rd.world_words(), "memory.tags": True})
    small = tiny_with(**{"memory.tokens": 4})
    with pytest.raises(ConfigError, match="no reader yet"):
        trainer.set_memory_tags(small)
    rd.enable_reader(small)
    with pytest.raises(ConfigError, match="memory.tags"):
        trainer.set_memory_tags(small)
    assert not small.config.memory.tags
    big = tiny_with(**{"memory.tokens": 8})
    rd.enable_reader(big)
    assert trainer.set_memory_tags(big) and not trainer.set_memory_tags(big) and big.config.memory.tags
    with pytest.raises(ConfigError, match="memory tags"):
        Stage("rare", steps=1, lr=1e-3, memory_tags=True)


def test_the_rare_head_replaces_only_the_rare_shapes_calls(tiny_with):
    """enable_rare adds a detector for the needle's shapes to a reader and keeps the reader's weights: its
    logits for every other shape, colour, size and the room are unchanged, the rare shapes' come from the
    detector (colour and size shared by the rare shapes of a cell), and the config names them."""
    model = _reader_model(tiny_with)
    feats = torch.randn(3, model.tokens_per_frame, model.config.vision.hidden_size)
    with torch.no_grad():
        before = model.reader.logits(feats)
    with pytest.raises(ConfigError, match="reader"):
        rd.enable_rare(tiny_with())
    assert rd.enable_rare(model) and not rd.enable_rare(model)
    assert model.config.frames.rare == list(sw.NEEDLE_SHAPES)
    ids = model.reader.rare_ids
    others = [i for i in range(len(model.config.frames.words["shapes"])) if i not in ids]
    with torch.no_grad():
        after = model.reader.logits(feats)
        present, colour, size = model.reader.rare(feats[:, 1:])
    for k in ("present", "colour", "size"):
        assert torch.equal(after[k][:, :, others], before[k][:, :, others])
        assert not torch.allclose(after[k][:, :, ids], before[k][:, :, ids])
    assert torch.equal(after["room"], before["room"])
    assert torch.equal(after["present"][..., ids], present)
    assert torch.equal(after["colour"][:, :, ids[1]], colour) and torch.equal(after["size"][:, :, ids[0]], size)


def test_a_few_rare_steps_on_real_frames_lower_its_loss(tiny_with):
    """The detector's frames are half needle, half not (plus still images), labelled per frame and per
    cell, and a few steps on real frames lower its loss."""
    model = _reader_model(tiny_with)
    rd.enable_rare(model)
    prevs, curs, labels = rd.sample_rare_frames(np.random.default_rng(0), 24, model.config.frames.words,
                                                model.config.frames.grid)
    shown = labels["shown"]
    assert 0 < int((shown > 0).sum()) < 24 and set(shown.tolist()) <= {0, 1, 2}
    assert ((labels["colour_shown"] == rd.IGNORE) == (shown == 0)).all()
    ids = model.reader.rare_ids
    assert (labels["present"][..., ids].flatten(1).amax(1) == (shown > 0).float()).all()   # cells agree
    with torch.no_grad():
        feats = model.vision_features(pair_pixels(model, prevs, curs))
    acc = _steps_lower_the_loss(rd.rare_loss, model, model.reader.rare.parameters(), feats, labels)
    assert set(acc) >= {"frame", "false_positive", "recall", "colour", "size"}
