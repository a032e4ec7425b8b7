"""The addressing loss (mmlc.train.look): where answers are read from, the head's attention, training it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlc.data import shapeworld as sw
from mmlc.errors import ConfigError
from mmlc.models.layout import Frame, Question, Reply, Turn
from mmlc.train import examples as ex
from mmlc.train import trainer
from mmlc.train.look import AttentionTap, head_attention, look_targets, parse_heads
from mmlc.train.recipes import Stage


def test_build_places_looks_on_the_answer_and_the_named_picture(tiny_with):
    model = tiny_with(**{"frames.image_grid": 2})
    lay = model.layout
    items = [Turn(["Image1: ", 0, " Image2: ", 1, " what colour is the room in image 2?"], "red.", look=[(1, None)]),
             Turn(["and in image 1?"], "blue.", look=[(0, (0.0, 0.0, 0.4, 0.4))])]
    seq = lay.build(items)
    answers = [look for look in seq.looks if look[2] == "answer"]
    assert len(answers) == 2
    slots = [i for i, t in enumerate(seq.ids) if t == lay.frame_id]
    per = lay.tokens_per_image
    for (queries, pictures, _), answer, image in zip(answers, ("red.", "blue."), (1, 0)):
        # the queries are exactly the positions whose targets are the answer's tokens (not {end})
        assert [seq.labels[q] for q in queries] == lay.text_ids(answer)
        assert seq.ids[queries[0]] == lay.assistant_id
        assert pictures[0][:2] == (slots[image * per], per)
        # the number that names the image in the question looks at it, and the answer at the number
        (named,), name_pictures, _ = next(look for look in seq.looks if look[2] == "name" and
                                          look[1][0][0] == slots[image * per])
        assert seq.ids[named] == lay.image_tag(image) and named < queries[0]
        assert named > max(slots)   # in the question text, not an "ImageK:" label
        via = next(look for look in seq.looks if look[2] == "via" and look[0] == queries)
        assert via[1] == [(named, 1, None)]
        # where the turn names an object of the image (a box), the number token also looks at its cells
        obj = [look for look in seq.looks if look[2] == "obj" and look[0] == [named]]
        assert obj == ([] if pictures[0][2] is None else [([named], [(*pictures[0][:2], pictures[0][2])], "obj")])
    assert sum(look[2] == "obj" for look in seq.looks) == 1
    # a picture no earlier item shows is an error, not a silent miss
    with pytest.raises(ValueError, match="no earlier item"):
        lay.build([Frame(0), Question("what colour is the room?", "red.", look=[(3, None)])])


def test_stream_questions_take_two_hops_through_their_last_word(tiny_model):
    """A stream question about an object: its last word ("circle") looks at the object's cells ("obj"),
    the answer at that word ("via"); a question about the whole frame adds neither."""
    lay = tiny_model.layout
    box = (0.5, 0.5, 0.9, 0.9)
    seq = lay.build([Frame(0), Frame(1), Question("what colour is the circle?", "red.", look=[(1, box)]),
                     Frame(2), Question("how many objects are there?", "two.", look=[(2, None)])])
    answers = [look for look in seq.looks if look[2] == "answer"]
    assert len(answers) == 2
    (word,), pictures, _ = next(look for look in seq.looks if look[2] == "obj")
    assert lay.tokenizer.decode([seq.ids[word]]) == " circle" and seq.ids[word + 1] != lay.assistant_id
    slots = [i for i, t in enumerate(seq.ids) if t == lay.frame_id]
    assert pictures == [(slots[lay.tokens_per_frame], lay.tokens_per_frame, box)]
    vias = [look for look in seq.looks if look[2] == "via"]
    assert vias == [(answers[0][0], [(word, 1, None)], "via")]
    assert sum(look[2] == "obj" for look in seq.looks) == 1
    # off (Stage.stream_hops, default False: recipe tiny's look stages 15-17 were trained without them),
    # the same timeline keeps only the answer's own looks (and its read positions: the first word, and
    # every word for the readall kind, which only the needle stages 26-28 of recipe tiny train)
    plain = lay.build([Frame(0), Frame(1), Question("what colour is the circle?", "red.", look=[(1, box)])],
                      stream_hops=False)
    assert [look[2] for look in plain.looks] == ["answer", "read", "readall"]
    from mmlc.train.recipes import Stage, recipe
    assert Stage("words", steps=1, lr=1e-3).stream_hops is False
    stages = recipe("tiny").stages
    # the word stages and every LM stage after them (the needle stages 25-28) take the hops
    first_words = next(i for i, s in enumerate(stages) if s.name == "words")
    assert [s.stream_hops for s in stages] == [i >= first_words and s.name not in ("reader", "rare")
                                               for i, s in enumerate(stages)]
    assert [s.read_weight for s in stages if "read:3.2" in s.look_heads] == [1.0, 5.0, 5.0]


def test_look_targets_cover_the_box_cells_only():
    # one picture at positions 10..14: pooled token + 2x2 cells; a box in the top-right quarter
    queries, keys = look_targets([([20, 21], [(10, 5, (0.6, 0.1, 0.9, 0.4))], "answer"),
                                  ([3], [(0, 5, None)], "name")], width=30, pooled=True)
    assert queries == [20, 21] and keys.shape == (2, 30)
    assert keys[0].nonzero().flatten().tolist() == [10 + 1 + 0 * 2 + 1]
    # a box across the middle takes every cell it overlaps; None takes the whole picture
    _, keys = look_targets([([20], [(10, 5, (0.3, 0.3, 0.7, 0.45))], "answer"), ([25], [(0, 5, None)], "answer")],
                           width=30, pooled=True)
    assert keys[0].nonzero().flatten().tolist() == [11, 12]
    assert keys[1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert look_targets([([3], [(0, 5, None)], "name")], width=30, pooled=True, kind="name")[0] == [3]


def test_training_examples_look_at_the_named_object():
    """Chat turns look at the image they name (and the object's cells), state questions at the
    current frame; the boxes hold the object the question names."""
    rng = np.random.default_rng(3)
    e = ex.multi_image_example(rng)
    mi_turns = [i for i in e.items if isinstance(i, Turn)]
    assert all(t.look for t in mi_turns)
    for t in mi_turns:
        for index, box in t.look:
            assert 0 <= index < len(e.frames)
            assert box is None or (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1)
    state = {"objects": [{"shape": "square", "colour": "red", "size": "small", "x": 10.0, "y": 50.0, "moving": None}]}
    (index, box), = ex.state_look(state, "what colour is the square?", 4, 64)
    assert index == 4 and box[0] < 10 / 64 < box[2] and box[1] < 50 / 64 < box[3]
    assert ex.state_look(state, "how many objects are there?", 4, 64) == [(4, None)]
    assert sw.object_box(state["objects"][0], 64) == box


def test_head_attention_equals_the_layers_own(tiny_with):
    model = tiny_with(**{"frames.image_grid": 2})
    model.lm.config._attn_implementation = "eager"
    rng = np.random.default_rng(4)
    batch = trainer.collate(model, [ex.multi_image_example(rng), ex.qa_stream_example(rng)], look_kinds=["answer"])
    rows, queries, keys = batch["looks"]["answer"]
    assert keys.shape == (len(rows), batch["input_ids"].shape[1])
    with torch.no_grad():
        feats, image_feats = trainer._features(model, batch["pixels"], batch.get("image_rows"))
        tokens = trainer._row_tokens(model, feats, image_feats, batch.get("image_rows"), None)
        embeds = model.embed(batch["input_ids"], tokens, None, batch.get("tags"))
        with AttentionTap(model.lm, [1]) as tap:
            out = model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                         output_attentions=True)
        hidden, (cos, sin) = tap.inputs[1]
        attn = model.lm.get_decoder().layers[1].self_attn
        for head in range(model.lm.config.num_attention_heads):
            mine = head_attention(attn, hidden, cos, sin, head, rows, queries, batch["attention_mask"])
            theirs = out.attentions[1][rows, head, queries]
            torch.testing.assert_close(mine, theirs.float(), rtol=1e-4, atol=1e-5)


def test_the_look_loss_moves_the_heads_attention(tiny_with):
    """A few steps of the addressing loss raise the supervised head's mass on the targets; without it
    the batch has no look loss."""
    model = tiny_with(**{"frames.image_grid": 2})
    rng = np.random.default_rng(5)
    batch = trainer.collate(model, [ex.multi_image_example(rng), ex.qa_stream_example(rng)], look_kinds=["answer"])
    assert "looks" not in trainer.collate(model, [ex.multi_image_example(np.random.default_rng(5))])
    plain, _ = trainer.lm_step(model, batch)
    assert "look_loss" not in plain
    opt = torch.optim.AdamW(list(model.connector.parameters()) + list(model.lm.parameters()), lr=1e-2)
    model.train()
    masses = []
    for _ in range(15):
        parts, _ = trainer.lm_step(model, batch, look_heads=[("answer", 1, 0)], look_weight=1.0)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        masses.append(float(parts["look_mass"]))
    assert masses[-1] > masses[0] + 0.2
    # per head: its mass (the only head: the mean) and its number of queries (the answers' tokens)
    ((name, (mass, n)),) = parts["look_heads_mass"].items()
    assert name == "answer@1.0" and mass == pytest.approx(masses[-1]) and n == len(batch["looks"]["answer"][0])
    torch.testing.assert_close(parts["loss"], parts["text_loss"] + model.config.stream_loss_weight * parts["stream_loss"]
                               + parts["look_loss"])


def test_look_heads_are_checked():
    assert parse_heads(["1.0", "name:0.3"], 2, 4) == [("answer", 1, 0), ("name", 0, 3)]
    for bad in (["2.0"], ["1.4"], ["1"], ["a.b"], ["where:1.0"]):
        with pytest.raises(ConfigError, match="look head"):
            parse_heads(bad, 2, 4)
    with pytest.raises(ConfigError, match="give both"):
        Stage("dialogues", steps=1, lr=1e-3, look_heads=["1.0"])
    with pytest.raises(ConfigError, match="give both"):
        Stage("dialogues", steps=1, lr=1e-3, look_weight=0.5)


def test_a_read_head_writes_its_share_of_the_logits(tiny_with):
    """``head_read_logits``: what each head of the last layer writes, through its slice of o_proj,
    the last norm and the output layer, sums over the heads to the logits of the layer's whole
    attention output at the same positions; and a ``read`` look only asks for answer words the word
    tags carry ("red" of "what colour is the square?", never "image" of "image 2.")."""
    from mmlc.train import reader as rd
    from mmlc.train.look import head_read_logits

    model = tiny_with(**{"frames.image_grid": 2})
    rd.enable_reader(model)
    rng = np.random.default_rng(4)
    examples = [ex.multi_image_example(rng), ex.qa_stream_example(rng)]
    while not any(isinstance(t, Turn) and t.answer and t.answer.startswith("image") and t.look
                  and any(box is not None for _, box in t.look) for t in examples[-1].items):
        examples.append(ex.dense_dialogue_example(rng))    # up to one with "which image has a red star?"
    batch = trainer.collate(model, examples, look_kinds=["answer", "read"])
    rows, queries, _ = batch["looks"]["read"]
    asked = {int(t) for t in batch["labels"][rows, queries]}
    assert asked and asked <= set(trainer._read_candidates(model))
    image = model.layout.answer("image 2.").ids[0]
    assert image not in set(trainer._read_candidates(model))
    with_box = [look for s in (model.layout.build(e.items) for e in examples) for look in s.looks
                if look[2] == "answer" and any(box is not None for _, _, box in look[1])]
    assert len(rows) < len(with_box)     # "which image has a red star?" -> "image 1." is left out
    # each read is ranked among its answer's class: every colour for a colour answer, no size, no shape
    words = model.config.frames.words
    first = {k: {model.layout.answer(f"{w}.").ids[0] for w in ws} for k, ws in words.items()}
    cand = batch["read_candidates"]
    assert cand.shape == (len(rows), model.lm.config.vocab_size)
    for n, t in enumerate(batch["labels"][rows, queries].tolist()):
        marked = set(torch.nonzero(cand[n]).flatten().tolist())
        assert marked == set().union(*(ids for ids in first.values() if t in ids)) and t in marked
    colour = next((n for n, t in enumerate(batch["labels"][rows, queries].tolist()) if t in first["colours"]), None)
    assert colour is not None and not cand[colour, sorted(first["sizes"] - first["colours"])].any()
    arows, aqueries, _ = batch["looks"]["answer"]
    last = model.lm.config.num_hidden_layers - 1
    attn = model.lm.get_decoder().layers[last].self_attn
    written = {}
    hook = attn.o_proj.register_forward_hook(lambda m, a, out: written.__setitem__("out", out))
    with torch.no_grad():
        feats, image_feats = trainer._features(model, batch["pixels"], batch.get("image_rows"))
        tokens = trainer._row_tokens(model, feats, image_feats, batch.get("image_rows"), None)
        embeds = model.embed(batch["input_ids"], tokens, None, batch.get("tags"))
        with AttentionTap(model.lm, [last], final=True) as tap:
            model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        hook.remove()
        hidden, (cos, sin) = tap.inputs[last]
        total = sum(head_read_logits(model.lm, tap, last, h, head_attention(attn, hidden, cos, sin, h, arows, aqueries,
                                                                           batch["attention_mask"]), arows, aqueries)
                    for h in range(model.lm.config.num_attention_heads))
        norm = model.lm.get_decoder().norm
        resid = tap.final[arows, aqueries]
        rms = torch.sqrt(resid.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        theirs = model.lm.get_output_embeddings()(norm.weight * written["out"][arows, aqueries] / rms)
    torch.testing.assert_close(total, theirs, rtol=1e-4, atol=1e-4)


def test_a_read_head_learns_to_write_the_answer(tiny_with):
    """A few steps of the read loss alone (on that head's attention weights only) lower it: its gradient
    reaches the head's values and output projection."""
    from mmlc.train import reader as rd

    model = tiny_with(**{"frames.image_grid": 2})
    rd.enable_reader(model)
    heads = parse_heads(["read:1.0"], model.lm.config.num_hidden_layers, model.lm.config.num_attention_heads)
    rng = np.random.default_rng(6)
    batch = trainer.collate(model, [ex.qa_stream_example(rng) for _ in range(3)], look_kinds=["read"])
    params = [p for n, p in model.lm.named_parameters() if "layers.1.self_attn" in n]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(8):
        parts, _ = trainer.lm_step(model, batch, look_heads=heads, look_weight=1.0)
        opt.zero_grad()
        parts["look_loss"].backward()
        opt.step()
        losses.append(float(parts["look_loss"].detach()))
    # (a head's share is bounded: it is divided by the residual's RMS, which its own write grows)
    assert "read@1.0" in parts["look_heads_mass"] and losses[-1] < 0.95 * losses[0]


def test_the_read_weight_scales_the_read_heads_term_only(tiny_with):
    """``Stage.read_weight``: with an answer head and a read head, the look loss is the mean of the two
    terms, the read term times the weight; the answer head's term and the logged values do not move."""
    from mmlc.train import reader as rd

    model = tiny_with(**{"frames.image_grid": 2})
    rd.enable_reader(model)
    cfg = model.lm.config
    rng = np.random.default_rng(7)
    batch = trainer.collate(model, [ex.qa_stream_example(rng) for _ in range(3)], look_kinds=["answer", "read"])
    alone = {}
    for spec in ("1.0", "read:1.0"):
        parts, _ = trainer.lm_step(model, batch, look_heads=parse_heads([spec], cfg.num_hidden_layers,
                                                                        cfg.num_attention_heads), look_weight=1.0)
        alone[spec] = float(parts["look_loss"])
    both = parse_heads(["1.0", "read:1.0"], cfg.num_hidden_layers, cfg.num_attention_heads)
    for w in (1.0, 4.0):
        parts, _ = trainer.lm_step(model, batch, look_heads=both, look_weight=1.0, read_weight=w)
        assert float(parts["look_loss"]) == pytest.approx((alone["1.0"] + w * alone["read:1.0"]) / 2, rel=1e-5)
        assert set(parts["look_heads_mass"]) == {"answer@1.0", "read@1.0"}
    with pytest.raises(ConfigError, match="read_weight"):
        Stage("words", steps=1, lr=1e-3, look_heads=["read:3.2"], look_weight=0.3, read_weight=0)


def test_tagged_needle_looks_name_the_tag_token_and_the_needles_cells(tiny_with):
    """With tagged needle looks (the ``recall_tagged`` stage) a needle question looks at the memory token
    that carries its shape's tag (1 + the shape's index in frames.words) and at the needle's own cells;
    a ("token", k) box keeps exactly that token of a picture; the ``readall`` look reads every tag word
    of the answer in its in-sentence form ("a yellow diamond." -> " yellow", " diamond"), each ranked
    among its own class, while ``read`` still keeps only an answer's first word."""
    from mmlc.train import reader as rd

    _, keys = look_targets([([20], [(10, 8, ("token", 3))], "answer")], width=30, pooled=True)
    assert keys[0].nonzero().flatten().tolist() == [13]
    needle = {"frame_start": 4, "frame_end": 7, "shape": "diamond", "colour": "yellow", "size": "large",
              "x": 20.0, "y": 40.0}
    assert ex._needle_look(needle, [(0, 10)], 10, 12) == [(("memory", 0), None)]
    with ex.tagged_needle_looks():
        look = ex._needle_look(needle, [(0, 5)], 5, 9)
    assert ex._needle_look(needle, [(0, 5)], 5, 9) == [(("memory", 0), None), (0, None), (1, None)]
    shapes = rd.world_words()["shapes"]
    box = sw.object_box(needle, sw.WorldConfig().size)
    assert look == [(("memory", 0), ("token", 1 + shapes.index("diamond"))), (0, box), (1, box)]

    model = tiny_with()
    rd.enable_reader(model)
    with ex.tagged_needle_looks():
        e = ex.needle_frames_example(np.random.default_rng(4))
    batch = trainer.collate(model, [e], look_kinds=["read", "readall"])
    tok = model.tokenizer
    first = lambda text: tok(text, add_special_tokens=False)["input_ids"][0]   # noqa: E731
    read_ids = batch["labels"][0, batch["looks"]["readall"][1]].tolist()
    answer = next(i.answer for i in e.items if isinstance(i, Question) and i.text == sw.NEEDLE_QUESTION)
    colour, shape = answer.rstrip(".").split()[1:]
    assert first(f" {colour}") in read_ids and first(f" {shape}") in read_ids
    spaced = trainer._read_candidates(model, spaced=True)
    colours = rd.world_words()["colours"]
    assert spaced[first(f" {colour}")] >= {first(f" {c}") for c in colours}
    plain = trainer._read_candidates(model)
    assert set(plain) < set(spaced) and all(plain[k] <= spaced[k] for k in plain)


def test_settle_needle_questions_look_at_the_tag_and_narration_is_back():
    """The ``settle`` mix (stage 28): its needle questions look at the tag token / cells (built inside
    tagged_needle_looks), the switch is off again after each build, and about a third are stream crops."""
    rng = np.random.default_rng(7)
    built = [ex.settle_example(rng) for _ in range(60)]
    looks = [q.look for e in built for q in e.items
             if isinstance(q, ex.Question) and q.text == sw.NEEDLE_QUESTION and q.look]
    assert looks and all(target is not None for look in looks for _, target in look)
    assert not ex._TAGGED_NEEDLE_LOOKS.get()
    assert 0.15 < np.mean([e.meta.get("stage") == "stream" for e in built]) < 0.5


def test_previous_scene_looks_name_the_token_that_holds_the_answer():
    """Inside tagged_needle_looks(previous_scene=True) a question about the previous scene looks at the
    last memory block's room token (0) or the named shape's token (1 + its index); outside, at the block."""
    closed = [(0, 10), (10, 20), (20, 30)]
    room, shape = "what colour was the room before?", "what colour was the star in the previous scene?"
    assert ex._previous_scene_look(closed, 20, shape) == [(("memory", 1), None)]
    with ex.tagged_needle_looks(previous_scene=True):
        assert ex._previous_scene_look(closed, 20, room) == [(("memory", 1), ("token", 0))]
        assert ex._previous_scene_look(closed, 30, shape) == [(("memory", 2), ("token", 1 + sw.SHAPES.index("star")))]
        assert ex._previous_scene_look(closed, 25, room) == []
    with ex.tagged_needle_looks():
        assert ex._previous_scene_look(closed, 20, room) == [(("memory", 1), None)]
