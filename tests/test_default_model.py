"""The shipped mmlc-tiny: loads offline with no argument, narrates and answers on a held-out ShapeWorld
video file, and chats about held-out multi-image sets."""

from __future__ import annotations

import pytest

import mmlc
from mmlc.data import shapeworld as sw
from mmlc.data.writer import write_shapeworld
from mmlc.evals import metrics as M
from mmlc.models.loading import DEFAULT_MODEL, WEIGHTS_FILE

HELD_OUT = 1_000_000_123   # evaluation seeds start at 1e9; training draws from another stream


@pytest.fixture(scope="module")
def model():
    assert (DEFAULT_MODEL / WEIGHTS_FILE).is_file(), "mmlc-tiny is not in the package: mmlc/assets/mmlc-tiny"
    return mmlc.load()


def test_default_model_loads_offline(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model.config.name == "tiny" and model.device.type == "cpu"
    assert 1e6 < model.num_parameters() < 2e7
    # by its name too (as --model mmlc-tiny on the command line): the same weights
    named = mmlc.load("mmlc-tiny")
    assert all(bool((a == b).all()) for a, b in zip(named.state_dict().values(), model.state_dict().values()))


def test_narrates_a_generated_video_file(model, tmp_path):
    (truth_file,) = write_shapeworld(tmp_path, 1, HELD_OUT, duration=60.0, progress=False)
    import json

    truth = json.loads(truth_file.read_text())
    session = model.stream()
    for qa in truth["qa"]:
        session.ask(qa["question"], t=qa["t"])
    events = list(session.feed(str(tmp_path / truth["video"]))) + session.finish()
    assert session.frames_seen == 120 and not [e for e in events if e.kind == "error"]
    replies = [{"t": e.t, "text": e.text} for e in events if e.kind == "reply"]
    match = M.match_narration(replies, truth["narration"], tolerance=1.0)
    assert match.n_match >= 1, f"no correct sentence: {replies[:5]} vs {truth['narration'][:5]}"
    answers = {e.question: e.text for e in events if e.kind == "answer"}
    right = sum(M.normalize_text(answers.get(q["question"], "")) == M.normalize_text(q["answer"]) for q in truth["qa"])
    assert right >= 1


def test_chats_about_held_out_image_sets(model):
    right = total = 0
    for k in range(3):
        mi = sw.generate_multi_image(HELD_OUT + k)
        chat = model.chat()
        for j, turn in enumerate(mi.turns):
            reply = chat.send(turn["question"], images=mi.images if j == 0 else None)
            right += M.normalize_text(reply) == M.normalize_text(turn["answer"])
            total += 1
    assert right >= 1, f"0 of {total} chat answers right"


def test_scene_events_match_shapeworld_cuts(model):
    """Online SceneTiling on the model's pooled features finds the scene cuts of held-out episodes."""
    tp = n_pred = n_true = 0
    for k in range(3):
        ep = sw.generate_episode(HELD_OUT + 10 + k, sw.WorldConfig(duration=120.0))
        session = model.stream(threshold=0.0, scenes=True, max_scene_seconds=128.0)   # no forced cut in 120 s
        events = list(session.feed(ep.frames()))          # (t, frame) pairs
        assert not [e for e in events if e.kind == "error"]
        pred = [e.t for e in events if e.kind == "scene"]
        cuts = [s["start"] for s in ep.truth()["scenes"][1:]]
        from mmlc.streaming.scenes import boundary_f1

        r = boundary_f1(pred, cuts, tolerance=1.0)
        tp, n_pred, n_true = tp + r["tp"], n_pred + len(pred), n_true + len(cuts)
    assert n_true >= 2 and tp >= 0.8 * n_true and n_pred - tp <= 0.2 * max(n_true, 1)


def test_recalls_a_needle_from_memory(model):
    """NIAVH on held-out haystacks (not the eval's seeds), the question at the end of 120 s: at depth 10
    the 1.5 s needle was shown ~12 s in, scenes (at most 32 s) have closed over it since, and only
    memory blocks hold it; the answer names its colour and shape."""
    from mmlc.evals.niavh import Cell, ShapeWorldHaystack, exact_match, run_cell

    hay = ShapeWorldHaystack(seed=HELD_OUT + 20)
    right = []
    for repeat, depth in enumerate((10.0, 50.0)):
        inp = hay.cell(Cell(index=repeat, length=120.0, depth=depth, repeat=repeat))
        out = run_cell(model, inp, 2.0, {})
        assert out["memories_kept"] >= 1 and "error" not in out
        right.append(exact_match(out["prediction"], inp.answer))
    assert all(right), f"needle answers right: {right}"
