"""Training: a few steps lower the loss; the staged recipe runs end to end, resumes, and refuses clashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmlc.errors import ConfigError, MmlcError
from mmlc.train import examples as ex
from mmlc.train import trainer
from mmlc.models.layout import Turn
from mmlc.train import recipes
from mmlc.train.recipes import Stage


def test_a_few_steps_lower_the_loss(tiny_model):
    """Overfit one fixed stream batch: the LIVE loss must fall."""
    rng = np.random.default_rng(0)
    batch = trainer.collate(tiny_model, [ex.stream_example(rng), ex.change_example(rng)])
    params = list(tiny_model.connector.parameters()) + list(tiny_model.lm.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    tiny_model.train()
    losses = []
    for _ in range(20):
        parts, _ = trainer.lm_step(tiny_model, batch)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(float(parts["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert float(parts["stream_loss"].detach()) > 0 and float(parts["text_loss"].detach()) > 0


def test_labelled_only_loss_equals_full_logits_loss(tiny_model):
    rng = np.random.default_rng(1)
    batch = trainer.collate(tiny_model, [ex.stream_example(rng), ex.align_example(rng)])
    with torch.no_grad():
        fast, _ = trainer.lm_step(tiny_model, batch)
        full, _ = trainer.lm_step(tiny_model, batch, full_logits=True)
    for k in ("loss", "stream_loss", "text_loss"):
        torch.testing.assert_close(fast[k], full[k], rtol=1e-4, atol=1e-5)


def test_examples_are_valid_timelines(tiny_model):
    rng = np.random.default_rng(2)
    for name, build in ex.BUILDERS.items():
        for _ in range(5):
            e = build(rng)
            n_frames = sum(isinstance(i, ex.Frame) for i in e.items) + sum(
                isinstance(part, int) for i in e.items if isinstance(i, Turn) for part in i.parts)
            assert n_frames == len(e.frames) - e.frame_offset >= 1
            n_memory = sum(isinstance(i, ex.Memory) for i in e.items)
            assert n_memory == len(e.memory_spans) and (name in ("memory", "memalign", "long", "refresh", "final", "tags", "grid", "dialogues", "look", "needle", "words", "recall", "recall_tagged", "settle")
                                                  or n_memory == 0)
            if n_memory:
                continue   # tiny_model has no bridge; tests/test_memory_stream.py builds these
            seq = tiny_model.layout.build(e.items)
            assert seq.ids.count(tiny_model.layout.frame_id) == n_frames * tiny_model.layout.tokens_per_frame
    # change examples are balanced between ending on an event and not
    ends = [isinstance(ex.change_example(rng).items[-1], ex.Reply) for _ in range(60)]
    assert 0.3 < np.mean(ends) < 0.8


def test_optimizer_state_round_trip(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    trainer.save_optimizer(opt, tmp_path / "opt.safetensors")
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=0.1)
    trainer.load_optimizer(opt2, tmp_path / "opt.safetensors")
    torch.testing.assert_close(opt2.state[q]["exp_avg"], opt.state[p]["exp_avg"])
    p.grad = q.grad = torch.ones_like(p)
    opt.step()
    opt2.step()
    torch.testing.assert_close(p, q)


def test_lr_schedule():
    st = Stage("stream", steps=100, lr=1.0, warmup=10)
    assert trainer.lr_at(st, 0) == pytest.approx(0.1)
    assert trainer.lr_at(st, 9) == pytest.approx(1.0)
    assert trainer.lr_at(st, 99) == pytest.approx(0.1, abs=1e-3)


def test_a_kill_at_a_stage_end_keeps_the_stage_model_whole(tmp_path, monkeypatch):
    """--keep-stages: the stage's model folder is written (whole, under a temporary name, then
    renamed) before the checkpoint moves on, so a kill between the two loses nothing."""
    full_recipe = recipes.RECIPES["tiny-smoke"]

    def two_stages():
        r = full_recipe()
        r.stages = r.stages[:2]    # vision, align
        return r

    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", two_stages)
    real_save = trainer.Run._save

    def killed_at_stage_end(self, model, heads, opt, stage, step, elapsed):
        if (stage, step) == (1, 0):     # the checkpoint that says "vision done, align next"
            raise KeyboardInterrupt("simulated kill")
        return real_save(self, model, heads, opt, stage, step, elapsed)

    out, logs = tmp_path / "run", []
    monkeypatch.setattr(trainer.Run, "_save", killed_at_stage_end)
    with pytest.raises(KeyboardInterrupt):
        trainer.train("tiny-smoke", out, progress=False, log=logs.append, keep_stages=True)
    import mmlc
    kept = mmlc.load(out / "stages" / "01-vision")     # whole and loadable although the run died
    assert kept.config.name and not list((out / "stages").glob("*.tmp"))
    monkeypatch.setattr(trainer.Run, "_save", real_save)
    final = trainer.train("tiny-smoke", out, progress=False, log=logs.append, keep_stages=True)
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["01-vision", "02-align"]
    assert (final / "model.safetensors").is_file()


def test_recipe_runs_resumes_and_refuses(tmp_path, monkeypatch):
    out = tmp_path / "run"
    logs: list[str] = []
    calls = {"n": 0}
    real = ex.BUILDERS["change"]

    def crash_on_second_step(rng):
        calls["n"] += 1
        if calls["n"] > 4:  # stage 'change', batch 4: the second step's examples
            raise KeyboardInterrupt("simulated kill")
        return real(rng)

    full_recipe = recipes.RECIPES["tiny-smoke"]

    def earlier():
        r = full_recipe()
        r.stages = r.stages[:-6]    # without chat, memory, memalign, reader, words and rare
        return r

    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", earlier)   # an earlier version of the recipe
    monkeypatch.setitem(ex.BUILDERS, "change", crash_on_second_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.train("tiny-smoke", out, progress=False, log=logs.append)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["stage"] == 2  # vision and align finished; change was interrupted
    assert not (out / "model").exists()

    monkeypatch.setitem(ex.BUILDERS, "change", real)
    final = trainer.train("tiny-smoke", out, progress=False, log=logs.append)
    assert any(line.startswith("resuming stage 2 (change)") for line in logs)
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals if "eval" in e] == ["vision", "align", "change", "stream"]

    import mmlc
    model = mmlc.load(final)
    assert model.config.name == "tiny-test"

    with pytest.raises(MmlcError, match="finished run"):
        trainer.train("tiny-smoke", out, progress=False, log=logs.append)
    # the recipe gains a stage: the finished run continues with it, keeping the earlier model aside
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", full_recipe)
    final = trainer.train("tiny-smoke", out, progress=False, log=logs.append)
    assert any("continuing with them" in line and "chat" in line and "memalign" in line for line in logs)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals if "eval" in e] == ["vision", "align", "change", "stream", "chat", "memory",
                                                              "memalign", "reader", "words", "rare"]
    assert (out / "model.stage4" / "model.safetensors").is_file() and (final / "model.safetensors").is_file()
    with pytest.raises(MmlcError, match="finished run"):
        trainer.train("tiny-smoke", out, progress=False, log=logs.append)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MmlcError, match="not an mmlc training run"):
        trainer.train("tiny-smoke", other, progress=False)
    with pytest.raises(MmlcError, match="unknown recipe"):
        trainer.train("enormous", tmp_path / "x", progress=False)


def test_vision_pairs_show_the_needle_as_often_as_asked():
    """The needle is on screen in 3 frames of one episode in four: drawn at random it is almost never
    seen, so the vision stage draws a share of its pairs from needle frames."""
    from mmlc.train.vision_aux import sample_pairs

    world = lambda r: ex.training_world(r, 60.0)  # noqa: E731
    _, curs, labels = sample_pairs(np.random.default_rng(3), 160, world, needle_fraction=0.5)
    shown = (labels["needle_colour"] > 0).float().mean().item()
    assert 0.2 < shown < 0.5     # two pairs per needle episode, four per other: a third expected
    _, _, labels = sample_pairs(np.random.default_rng(3), 160, world, needle_fraction=0.0)
    assert (labels["needle_colour"] > 0).float().mean().item() < 0.05
    # the needle frames really show the needle: its colour's pixels are in the frame
    from mmlc.data import shapeworld as sw
    k = int(torch.nonzero(labels["needle_colour"] > 0)[0]) if (labels["needle_colour"] > 0).any() else None
    if k is not None:
        colour = np.array(sw._colour_rgb(sw.COLOURS[int(labels["needle_colour"][k]) - 1]))
        assert (np.abs(curs[k].astype(int) - colour).sum(-1) < 60).any()


def test_memory_probe_counts_needles_only_where_shown():
    probe = trainer.MemoryProbe(tokens=2, width=3)
    memory = torch.randn(4, 2, 3)
    targets = torch.zeros(4, len(ex.MEMORY_TARGETS), dtype=torch.long)
    targets[1, 0], targets[1, 1] = 1, 2                 # one memory of four holds a needle
    _, right = probe(memory, targets)
    names = list(ex.MEMORY_TARGETS)
    assert right["needle_shape"][1] == 1 and right["needle_colour"][1] == 1
    assert right[names[2]][1] == 4                      # the room head counts every memory



def test_memory_probe_weighs_the_needle_heads():
    """``Stage.probe_needle_weight`` scales the needle heads' terms of the probe loss and nothing else."""
    torch.manual_seed(0)
    probe = trainer.MemoryProbe(tokens=2, width=3)
    memory = torch.randn(4, 2, 3)
    targets = torch.zeros(4, len(ex.MEMORY_TARGETS), dtype=torch.long)
    targets[1, 0], targets[1, 1] = 1, 2
    terms = {name: float(torch.nn.functional.cross_entropy(head(memory.flatten(1)), targets[:, j]).detach())
             for j, (name, head) in enumerate(probe.heads.items())}
    base, _ = probe(memory, targets)
    probe.needle_weight = 5.0
    weighted, _ = probe(memory, targets)
    needle = terms["needle_shape"] + terms["needle_colour"]
    assert float(base.detach()) == pytest.approx(sum(terms.values()) / len(terms), rel=1e-5)
    assert float(weighted.detach()) == pytest.approx((sum(terms.values()) + 4 * needle) / len(terms), rel=1e-5)


def test_needle_examples_ask_for_a_needle_held_in_memory():
    """The ``needle`` stage's practice: the needle was shown in an earlier scene, its question is always
    asked and looks at the memory block(s) that folded the needle's frames."""
    rng = np.random.default_rng(2)
    seen = 0
    for _ in range(8):
        e = ex.needle_memory_example(rng)
        if e.meta["stage"] != "needle":          # the needle in the last span: a memalign draw instead
            continue
        seen += 1
        questions = [i for i in e.items if isinstance(i, ex.Question)]
        assert questions[0].text == ex.sw.NEEDLE_QUESTION and 2 <= len(questions) <= 3
        targets = [j for (kind, j), _ in questions[0].look]
        assert targets and all(kind == "memory" for (kind, _), _ in questions[0].look)
        needles = [t["needle_shape"] > 0 for t in e.meta["memory_targets"]]
        assert all(needles[j] for j in targets) and sum(needles) == len(targets)
        shape = next(t["needle_shape"] for t in e.meta["memory_targets"] if t["needle_shape"])
        assert questions[0].answer.endswith(f" {ex.sw.NEEDLE_SHAPES[shape - 1]}.")
        assert e.memory_spans[-1][1] == e.frame_offset
    assert seen >= 4

def _smoke_recipe(stages):
    """A recipe factory for RECIPES["tiny-smoke"] with these stages (tiny-test preset, saves every 2 steps)."""
    return lambda: recipes.Recipe(name="tiny-smoke", preset="tiny-test", tokenizer_episodes=20, save_every=2,
                                  stages=stages)


# the tower, then an LM stage that moves frames to a 4x4 grid
_GRID_STAGES = [Stage("vision", steps=2, lr=1e-3, batch_size=4, warmup=1, eval_examples=8),
                Stage("align", steps=2, lr=1e-3, batch_size=2, warmup=1, eval_examples=2, frames_grid=4)]


def test_a_stage_moves_frames_to_a_finer_grid_and_later_stages_keep_it(tmp_path, monkeypatch):
    """Stage(frames_grid=4): from that stage on batches carry 1 + 4x4 tokens a frame, the saved model says
    so, and a run continued after it (a stage appended) still reads 4x4 while the bridge folds 2x2."""
    grid_at_draw = []
    recipe, first = _smoke_recipe, _GRID_STAGES
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", recipe(first))
    real_draw = trainer.draw_batch
    monkeypatch.setattr(trainer, "draw_batch", lambda model, stage, rng: grid_at_draw.append(
        (stage.name, model.tokens_per_frame)) or real_draw(model, stage, rng))
    out = tmp_path / "run"
    logs: list[str] = []
    import mmlc
    model = mmlc.load(trainer.train("tiny-smoke", out, progress=False, log=logs.append))
    assert (model.config.frames.grid, model.config.memory_grid) == (4, 2)
    assert any("frames read at 4x4" in line for line in logs)
    later = first + [Stage("memory", steps=2, lr=1e-3, batch_size=2, max_batch_tokens=4096, warmup=1, eval_examples=2)]
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", recipe(later))
    model = mmlc.load(trainer.train("tiny-smoke", out, progress=False, log=logs.append))
    assert (model.config.frames.grid, model.config.memory_grid) == (4, 2)
    assert {(name, n) for name, n in grid_at_draw} == {("align", 17), ("memory", 17)}
    with pytest.raises(ConfigError, match="vision"):
        Stage("vision", steps=1, lr=1e-3, frames_grid=4)


def test_saved_recipe_compares_with_fields_added_since():
    """A run folder saved before a Recipe/Stage field existed still matches the same recipe today."""
    r = recipes.RECIPES["tiny"]()
    saved = r.to_dict()
    saved.pop("frozen_tower_dtype")
    for s in saved["stages"]:
        if s["max_batch_frames"] == 0:
            s.pop("max_batch_frames")
    assert trainer._with_defaults(saved) == r.to_dict()
    assert trainer._with_defaults({"name": "x", "bogus": 1}) == {}
    assert recipes.RECIPES["tiny-v2"]().frozen_tower_dtype == "bfloat16"


def test_tokenizer_corpus_holds_chat_turns():
    """With dialogues in its corpus the tokenizer keeps chat words whole (without, "image" and the
    "ImageK:" labels were cut into letters, so every chat turn cost the LM a few times more tokens)."""
    from mmlc.data.tokenizer import train_tokenizer
    from mmlc.models.presets import preset

    texts = list(trainer.corpus(np.random.default_rng(0), 60, 60))
    assert any(t.startswith("Image1: ") for t in texts)
    tok = train_tokenizer(texts, 512, preset("tiny").template)
    pieces = tok.convert_ids_to_tokens(tok("which image has a red star?")["input_ids"])
    assert len(pieces) <= 8, pieces
    # the first recipe's corpus (no dialogues) is drawn exactly as before
    first = list(trainer.corpus(np.random.default_rng(0), 5))
    assert first == list(trainer.corpus(np.random.default_rng(0), 5, 0)) and not any("Image" in t for t in first)


@pytest.mark.parametrize("which", ["digits", "answer words"])
def test_fresh_embeddings_separate_collapsed_tokens(tiny_model, which):
    """Tokens whose embeddings collapsed to one vector (digits; the first tokens of "small"/"large"/
    "yes"/"no" as answers start) are drawn apart again (nearly orthogonal, at the table's mean norm),
    deterministically, and no other token moves."""
    tok = tiny_model.tokenizer
    if which == "digits":
        ids = trainer.digit_tokens(tok)
        assert ids and all(tok.decode([i]).strip().isdigit() for i in ids)
        draw = lambda: trainer.fresh_digit_embeddings(tiny_model, seed=3)   # noqa: E731
    else:
        words = ["small", "large", "yes", "no"]
        ids = trainer.word_start_tokens(tok, words)
        assert ids == sorted({tok.encode(w, add_special_tokens=False)[0] for w in words}) and len(ids) >= 2
        assert all(any(w.startswith(tok.decode([i])) for w in words) for i in ids)
        draw = lambda: trainer.fresh_token_embeddings(tiny_model, ids, seed=3)   # noqa: E731
    table = tiny_model.lm.get_input_embeddings().weight
    with torch.no_grad():
        table[ids] = table[ids[0]].clone()        # collapsed, as in mmlc-tiny before the stages that redraw them
    before = table.detach().clone()
    assert draw() == len(ids)
    after = table.detach().clone()
    others = [i for i in range(table.shape[0]) if i not in ids]
    torch.testing.assert_close(after[others], before[others])
    if len(ids) > 1:
        unit = after[ids] / after[ids].norm(dim=1, keepdim=True)
        cos = unit @ unit.T - torch.eye(len(ids))
        assert float(cos.abs().max()) < 0.9
    torch.testing.assert_close(after[ids].norm(dim=1), torch.full((len(ids),), float(before.norm(dim=1).mean())),
                               atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        table.copy_(before)
    draw()
    torch.testing.assert_close(table.detach(), after)          # the same seed draws the same vectors


def test_spread_embeddings_push_words_apart_and_keep_their_logit_order(tiny_model):
    """Spreading the answer colours' embeddings from their mean lowers their cosine, moves no other
    token, and for any hidden state keeps the order of their logits (differences scaled exactly)."""
    tok = tiny_model.tokenizer
    ids = trainer.word_start_tokens(tok, ["red", "green", "blue", "yellow"])
    assert len(ids) == 4
    table = tiny_model.lm.get_input_embeddings().weight
    with torch.no_grad():   # nearly collapsed: a shared direction plus a little of their own
        shared = table[ids[0]].clone()
        table[ids] = shared + 0.3 * shared.norm() / table.shape[1] ** 0.5 * torch.randn(len(ids), table.shape[1])
    before = table.detach().clone()
    h = torch.randn(50, table.shape[1])
    cos0, cos1 = trainer.spread_token_embeddings(tiny_model, ids, 3.0)
    after = table.detach().clone()
    assert cos0 > 0.8 and cos1 < cos0 - 0.2
    others = [i for i in range(table.shape[0]) if i not in ids]
    torch.testing.assert_close(after[others], before[others])
    lb, la = h @ before[ids].T, h @ after[ids].T
    assert torch.equal(lb.argmax(1), la.argmax(1))
    torch.testing.assert_close(la[:, 1:] - la[:, :1], 3.0 * (lb[:, 1:] - lb[:, :1]), atol=1e-3, rtol=1e-3)
    with pytest.raises(ConfigError, match="spread"):
        Stage("words", steps=1, lr=1e-3, spread_words=["red"])


def test_chat_images_take_their_own_grid_in_training_batches(tiny_with):
    """With ``frames.image_grid`` a batch mixing a stream and a dialogue gives the stream's frames the
    frames' tokens and the dialogue's images the finer image tokens, in placeholder order, exactly
    what the streaming and chat sessions compute."""
    model = tiny_with(**{"frames.image_grid": 4})
    fc = model.config.frames
    assert (fc.tokens_per_frame, fc.tokens_per_image) == (5, 17)
    rng = np.random.default_rng(2)
    stream, chat = ex.stream_example(rng), ex.multi_image_example(rng)
    batch = trainer.collate(model, [stream, chat])
    assert batch["image_rows"].tolist() == [False] * len(stream.frames) + [True] * len(chat.frames)
    n_slots = int((batch["input_ids"] == model.layout.frame_id).sum())
    assert n_slots == len(stream.frames) * fc.tokens_per_frame + len(chat.frames) * fc.tokens_per_image
    n = len(stream.frames)
    with torch.no_grad():
        feats, image_feats = trainer._features(model, batch["pixels"], batch["image_rows"])
        tokens = trainer._row_tokens(model, feats, image_feats, batch["image_rows"], None)
        expected = torch.cat([model.frame_embeddings(batch["pixels"][:n]).flatten(0, 1),
                              model.image_embeddings(batch["pixels"][n:]).flatten(0, 1)])
        full, _ = trainer.lm_step(model, batch, full_logits=True)
        fast, _ = trainer.lm_step(model, batch)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full["loss"], fast["loss"], atol=1e-5, rtol=1e-5)


def test_a_run_starts_from_a_model_at_a_later_stage(tmp_path, monkeypatch):
    """``--from DIR --from-stage N``: the run takes DIR's weights and tokenizer as what stages 1..N-1
    made (grids they switched included), trains only N.., checkpoints before its first step (an
    interruption there resumes, not restarts from scratch), and refuses a model that does not fit."""
    import mmlc
    from safetensors.torch import load_file

    recipe, first = _smoke_recipe, _GRID_STAGES
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", recipe(first))
    base = trainer.train("tiny-smoke", tmp_path / "base", progress=False, log=lambda _: None)
    more = first + [Stage("change", steps=3, lr=1e-3, batch_size=2, warmup=1, eval_examples=2,
                          tower_dtype="bfloat16")]
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", recipe(more))

    drawn = []
    real_draw = trainer.draw_batch

    def crash_at_first_step(model, stage, rng):
        drawn.append((stage.name, model.tokens_per_frame))
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "draw_batch", crash_at_first_step)
    out, logs = tmp_path / "later", []
    with pytest.raises(KeyboardInterrupt):
        trainer.train("tiny-smoke", out, progress=False, log=logs.append, start_from=base, start_stage=3)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["stage"] == 2
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    started = json.loads((out / "recipe.json").read_text())["started_from"]
    assert started == {"model": str(base), "stage": 3}
    monkeypatch.setattr(trainer, "draw_batch", lambda model, stage, rng: drawn.append(
        (stage.name, model.tokens_per_frame)) or real_draw(model, stage, rng))
    final = trainer.train("tiny-smoke", out, progress=False, log=logs.append)   # resumed, no --from needed
    assert any(line.startswith("resuming stage 2 (change)") for line in logs)
    assert {name for name, _ in drawn} == {"change"} and {n for _, n in drawn} == {17}
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals if "eval" in e] == ["change"]
    before, after = load_file(str(base / "model.safetensors")), load_file(str(final / "model.safetensors"))
    tower = [k for k in before if k.startswith("vision.")]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)   # the frozen tower came from --from
    assert not torch.equal(before["lm.model.layers.0.mlp.up_proj.weight"], after["lm.model.layers.0.mlp.up_proj.weight"])
    assert mmlc.load(final).config.frames.grid == 4

    with pytest.raises(MmlcError, match=r"differs .*after stage 1 .*frames\.grid"):    # stage 2 had not run yet: grid 2 expected
        trainer.train("tiny-smoke", tmp_path / "early", progress=False, log=lambda _: None, start_from=base,
                      start_stage=2)
    for kwargs, match in (({"start_from": base}, "go together"), ({"start_from": base, "start_stage": 1}, "2..3"),
                          ({"start_from": base, "start_stage": 9}, "2..3"),
                          ({"start_from": tmp_path, "start_stage": 3}, "not a model folder")):
        with pytest.raises(ConfigError, match=match):
            trainer.train("tiny-smoke", tmp_path / "bad", progress=False, **kwargs)
    with pytest.raises(ConfigError, match="tower_dtype"):
        Stage("change", steps=1, lr=1e-3, tower_dtype="int8")
    from mmlc.models.loading import DEFAULT_MODEL    # "mmlc-tiny" names the embedded model wherever installed
    assert trainer._check_start(recipes.RECIPES["tiny"](), "mmlc-tiny", 14) == DEFAULT_MODEL


def test_dense_dialogues_ask_more_of_the_same_images():
    """``n_turns`` lengthens a dialogue about the same kind of images; the default draw is unchanged."""
    from mmlc.data import shapeworld as sw

    lengths = []
    for seed in range(30):
        dense = sw.generate_multi_image(seed, n_turns=(8, 16))
        assert len(dense.images) == len(sw.generate_multi_image(seed).images)
        lengths.append(len(dense.turns))
        assert len(dense.turns) < 16 and dense.turns[0]["images"] and not any(t["images"] for t in dense.turns[1:])
        assert json.dumps(dense.truth()) == json.dumps(sw.generate_multi_image(seed, n_turns=(8, 16)).truth())
    assert np.mean(lengths) > 2 * np.mean([len(sw.generate_multi_image(s).turns) for s in range(30)])
    e = ex.dense_dialogue_example(np.random.default_rng(0))
    assert sum(isinstance(i, Turn) for i in e.items) >= 2 and e.still and not e.decisions
    for bad in ((8,), (0, 5), (6, 6), (2.0, 5), "8-16"):
        with pytest.raises(ConfigError, match="n_turns"):
            sw.generate_multi_image(0, n_turns=bad)


def test_tiny_short_is_tiny_s_stages_in_order_with_fewer_steps():
    """tiny-short keeps tiny's stages as they are, in tiny's order, changing only their steps and warmup
    (and where memory tags switch on, as the recall stage it drops did), so the two compare stage by stage."""
    import dataclasses
    full, short = recipes.RECIPES["tiny"]().stages, recipes.RECIPES["tiny-short"]().stages
    plain = lambda s: dataclasses.replace(s, steps=0, warmup=0, tower_dtype="", memory_tags=False)
    at = [[plain(s) for s in full].index(plain(s)) for s in short]
    assert at == sorted(at) and len(set(at)) == len(at)
    assert all(s.steps <= full[k].steps for s, k in zip(short, at))
    assert [s.name for s in short if s.memory_tags] == ["recall_tagged"]
    assert {s.name for s in short} == {s.name for s in full} - {"qa", "refresh", "recall"}


def test_tiny_2h_is_tiny_without_qa_and_cuts_only_the_lm_stages():
    """tiny-2h keeps every stage of tiny but qa, in order, with the same settings: the stages that are not
    LM stages (vision, reader, rare) and the short early ones keep their steps, the others run 65% of
    theirs; it saves the config tiny saves (the same switches on the same stages)."""
    import dataclasses
    full, cut = recipes.RECIPES["tiny"](), recipes.RECIPES["tiny-2h"]()
    kept = [s for s in full.stages if s.name != "qa"]
    assert len(cut.stages) == len(full.stages) - 1
    plain = lambda s: dataclasses.replace(s, steps=0, warmup=0)
    assert [plain(s) for s in cut.stages] == [plain(s) for s in kept]
    for a, b in zip(cut.stages, kept):
        if a.name in ("vision", "reader", "rare", "align", "change", "chat"):
            assert (a.steps, a.warmup) == (b.steps, b.warmup)
        else:
            assert a.steps == round(0.65 * b.steps) and 1 <= a.warmup < b.warmup
    assert (cut.lm_dtype, cut.frozen_tower_dtype, cut.preset) == ("bfloat16", "bfloat16", full.preset)
    assert 0.6 < sum(s.steps for s in cut.stages) / sum(s.steps for s in full.stages) < 0.8


@pytest.mark.slow
def test_tiny_short_runs_every_stage_and_ends_with_tiny_s_structure(tmp_path, monkeypatch):
    """recipe tiny-short, each stage cut to 2 steps (about a minute): it runs through, and the model it
    saves has what tiny's stages switch on (4x4 grid, reader, needle detector, memory tags, copy head)
    with the same config as tiny's shipped model, so tiny-short's weights could ship in its place."""
    import dataclasses
    import mmlc
    short = recipes.RECIPES["tiny-short"]()
    assert sum(s.steps for s in short.stages) < 0.5 * sum(s.steps for s in recipes.RECIPES["tiny"]().stages)
    small = [dataclasses.replace(s, steps=2, batch_size=min(s.batch_size, 4), warmup=1, eval_examples=2,
                                 max_batch_tokens=min(s.max_batch_tokens, 4096) if s.max_batch_tokens else 0)
             for s in short.stages]
    monkeypatch.setitem(recipes.RECIPES, "tiny-smoke", lambda: dataclasses.replace(
        short, name="tiny-smoke", stages=small, tokenizer_episodes=20, save_every=2))
    out = trainer.train("tiny-smoke", tmp_path / "run", progress=False, log=lambda *_: None)
    model = mmlc.load(out)
    assert model.reader is not None and model.reader.rare is not None
    shipped = json.loads((Path(mmlc.__file__).parent / "assets" / "mmlc-tiny" / "config.json").read_text())
    assert json.loads((Path(out) / "config.json").read_text()) == shipped
