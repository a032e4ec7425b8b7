"""NIAVH (needle in a video haystack): needle placement at exact depths (ShapeWorld truth, pixels of
text / image / clip needles on real video files), the grid and its JSON, resume after a finished or
killed run, sharding, exact-match scoring on hand-made predictions, the judge against a real local
HTTP server, the heatmap PNG, the sliding-window baseline and bad input."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmlc.data.shapeworld import generate_episode
from mmlc.errors import ConfigError, DataError
from mmlc.evals import niavh as N
from mmlc.evals.judge import JudgeClient, JudgeFatalError
from mmlc.streaming.session import Event
from mmlc.streaming.sources import open_source

cv2 = pytest.importorskip("cv2")

FPS = 2.0


# ---------------------------------------------------------------------- helpers
def _video(path: Path, seconds: float, fps: float = 10.0, size=(32, 32), seed: int = 0) -> Path:
    """A real mp4 (OpenCV, mp4v): each frame a different flat colour with a little noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for i in range(round(seconds * fps)):
        rgb = np.empty((h, w, 3), np.uint8)
        rgb[:] = ((37 * i) % 200 + 20, (91 * i) % 200 + 20, (53 * i) % 200 + 20)
        rgb = np.clip(rgb.astype(int) + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _png(path: Path, colour=(250, 20, 20), size=(8, 8)) -> Path:
    Image.fromarray(np.full((*size, 3), colour, np.uint8)).save(path)
    return path


def _args(*argv) -> argparse.Namespace:
    return N.add_niavh_args(argparse.ArgumentParser()).parse_args(list(argv))


class Counting:
    """A model whose ``stream`` calls are counted (and can be made to fail at call ``fail_at``)."""

    def __init__(self, model, fail_at: int | None = None):
        self.model, self.calls, self.fail_at = model, 0, fail_at

    def stream(self, **kw):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("killed")
        return self.model.stream(**kw)


class FakeSession:
    def __init__(self, model, fps, options):
        self.model, self.fps, self.options = model, fps, options
        self.frames_seen, self.pending = 0, None

    def ask(self, question, t=None):
        self.pending = (question, t)

    def feed(self, frames, fps=None):
        self.frames = [f for _, f in frames]
        self.frames_seen = len(self.frames)
        return iter([Event(t=0.0, kind="reply", text="a red circle appears.", frame=1)])

    def finish(self):
        q, t = self.pending
        return [Event(t=t, kind="answer", text=self.model.answers[len(self.model.sessions) - 1], question=q)]

    def stats(self):
        return {"kv_length": 10 * self.frames_seen}


class FakeModel:
    """Answers the i-th cell it streams with ``answers[i]`` (hand-made predictions)."""

    def __init__(self, answers):
        self.answers, self.sessions = list(answers), []

    def stream(self, fps=None, **options):
        s = FakeSession(self, fps, options)
        self.sessions.append(s)
        return s


def _fail_loader():
    raise AssertionError("the model was loaded: a finished cell was recomputed")


# ---------------------------------------------------------------------- the grid
def test_parse_grid_and_cells():
    assert N.parse_lengths("60, 300,900,60") == [60.0, 300.0, 900.0]
    assert N.parse_depths([0, 25, 100]) == [0.0, 25.0, 100.0]
    for bad, what in (("0", "must be > 0"), ("-5", "must be > 0"), ("ten", "not a number"), ("", "empty"),
                      ("inf", "finite"), (",", "empty")):
        with pytest.raises(ConfigError, match=f"--lengths.*{what}"):
            N.parse_lengths(bad)
    for bad in ("101", "-1", "50,100.5"):
        with pytest.raises(ConfigError, match="--depths .*percentage in 0-100"):
            N.parse_depths(bad)
    cells = N.plan_cells([4.0, 6.0], [0.0, 50.0], 2)
    assert [c.name for c in cells] == ["L4_d0_r0", "L4_d0_r1", "L4_d50_r0", "L4_d50_r1",
                                       "L6_d0_r0", "L6_d0_r1", "L6_d50_r0", "L6_d50_r1"]
    assert [c.index for c in cells] == list(range(8))
    with pytest.raises(ConfigError, match="--seeds 0"):
        N.plan_cells([4.0], [0.0], 0)


@pytest.mark.parametrize("n, k, depth, span", [(20, 4, 0, (0, 4)), (20, 4, 100, (16, 20)), (20, 4, 50, (8, 12)),
                                               (21, 1, 25, (5, 6)), (120, 6, 75, (86, 92))])
def test_needle_span_at_exact_depths(n, k, depth, span):
    assert N.needle_span(n, k, depth) == span


# ---------------------------------------------------------------------- needle placement
def test_shapeworld_needle_is_where_the_truth_says(tmp_path):
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=11)
    length = 30.0
    n = round(length * FPS)
    nf = round(N.SHAPEWORLD_NEEDLE_SECONDS * FPS)
    for depth in (0, 25, 50, 75, 100):
        cell = N.Cell(0, length, float(depth), 0)
        inp = hay.cell(cell)
        truth = generate_episode(11, hay.world(length, depth)).truth()
        shown = [i for i, s in enumerate(truth["states"]) if s["needle"] is not None]
        info = inp.needle
        assert shown == list(range(info["frame_start"], info["frame_end"])) and len(shown) == nf
        # the generator keeps the needle inside one scene with free frames around it: a few frames off at most
        target = depth / 100 * (n - nf)
        assert abs(info["frame_start"] - target) <= 3, (depth, info)
        assert info["t_start"] == info["frame_start"] / FPS and inp.n_frames == n
        needle = truth["needles"][0]
        assert inp.question == "what rare object appeared?"
        assert inp.answer.rstrip(".").endswith(f"{needle['colour']} {needle['shape']}")
        # the frames streamed are the episode's frames
        frames = list(inp.frames)
        assert len(frames) == n and frames[0][0] == 0.0 and frames[-1][0] == (n - 1) / FPS


def test_text_overlay_on_a_video_file_only_at_its_depth(tmp_path):
    video = _video(tmp_path / "hay.mp4", 8.0)
    needle = N.load_needle("text:the word is apple", 1.5, FPS)
    hay = N.FileHaystack(video, needle, "what word was shown?", "apple", fps=FPS)
    hay.check([6.0], [0.0, 50.0, 100.0])
    plain = [f for _, f in open_source(str(video), fps=FPS)]
    n, nf = 12, 3
    for depth in (0.0, 50.0, 100.0):
        inp = hay.cell(N.Cell(0, 6.0, depth, 0))
        start, end = N.needle_span(n, nf, depth)
        assert (inp.needle["frame_start"], inp.needle["frame_end"]) == (start, end)
        frames = list(inp.frames)
        assert len(frames) == n
        for k, (t, frame) in enumerate(frames):
            assert t == pytest.approx(k / FPS)
            changed = np.abs(frame.astype(int) - plain[k].astype(int)).max(-1) > 0
            if start <= k < end:
                assert changed.sum() > 50, (depth, k)
                assert (frame.min(-1) > 128).sum() > 20 and (frame.max(-1) == 0).sum() > 20   # white text, black band
            else:
                assert not changed.any(), (depth, k)


def test_image_and_clip_needles_replace_the_frames_at_their_depth(tmp_path):
    image = _png(tmp_path / "needle.png", (250, 20, 20), (8, 12))
    needle = N.load_needle(str(image), 1.0, FPS)
    assert needle.kind == "image" and needle.n_frames(FPS) == 2
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=3, needle=needle, question="what colour was the card?",
                               answer="red")
    inp = hay.cell(N.Cell(0, 10.0, 50.0, 0))
    start, end = N.needle_span(20, 2, 50.0)
    assert (inp.needle["frame_start"], inp.needle["frame_end"], inp.needle["kind"]) == (start, end, "image")
    assert (inp.question, inp.answer) == ("what colour was the card?", "red")
    for k, (_, frame) in enumerate(inp.frames):
        red = (frame == (250, 20, 20)).all(-1)
        assert frame.shape == (16, 16, 3)
        assert red.all() if start <= k < end else not red.all()
    # the user's needle replaces ShapeWorld's: the episode has none
    assert all(s["needle"] is None for s in generate_episode(3, hay.world(10.0, 50.0)).truth()["states"])

    clip = _video(tmp_path / "clip.mp4", 2.0, fps=10.0, size=(24, 40), seed=9)   # 2 s -> 4 frames at 2 fps
    cneedle = N.load_needle(str(clip), None, FPS)
    assert cneedle.kind == "clip" and cneedle.n_frames(FPS) == 4 and cneedle.seconds == 2.0
    assert N.load_needle(str(clip), 1.0, FPS).n_frames(FPS) == 2
    clip_frames = [f for _, f in open_source(str(clip), fps=FPS)]
    video = _video(tmp_path / "hay.mp4", 6.0)
    hay = N.FileHaystack(video, cneedle, "q?", "a", fps=FPS)
    inp = hay.cell(N.Cell(0, 5.0, 100.0, 0))
    assert (inp.needle["frame_start"], inp.needle["frame_end"]) == (6, 10)
    plain = [f for _, f in open_source(str(video), fps=FPS)]
    for k, (_, frame) in enumerate(inp.frames):
        if 6 <= k < 10:
            want = np.asarray(Image.fromarray(clip_frames[k - 6]).resize((32, 32), Image.BILINEAR))
            assert np.array_equal(frame, want)
        else:
            assert np.array_equal(frame, plain[k])


# ---------------------------------------------------------------------- runs, JSON, resume
def test_grid_json_structure(tmp_path, tiny_model):
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=5)
    out = tmp_path / "res.json"
    res = N.run_niavh(tiny_model, hay, lengths="4,6", depths="0,100", repeats=2, json_out=out, model_name="tiny",
                      max_reply_tokens=2, progress=False, shard=(0, 1))
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert (tmp_path / "res.json.cells" / "results.json").is_file()
    names = ["L4_d0_r0", "L4_d0_r1", "L4_d100_r0", "L4_d100_r1", "L6_d0_r0", "L6_d0_r1", "L6_d100_r0", "L6_d100_r1"]
    assert [c["cell"] for c in res["cells"]] == names
    assert sorted(p.stem for p in (tmp_path / "res.json.cells" / "cells").glob("*.json")) == sorted(names)
    for c in res["cells"]:
        assert {"question", "answer", "prediction", "exact", "needle", "frames", "wall_s", "kv_length"} <= set(c)
        assert c["frames"] == round(c["length"] * FPS) and c["t_question"] == c["length"]
        assert isinstance(c["exact"], bool) and "settings" not in c
    s = res["summary"]
    assert (s["n_cells"], s["n_done"], s["n_pending"], s["n_errors"]) == (8, 8, 0, 0)
    assert s["grid"]["lengths"] == [4.0, 6.0] and s["grid"]["depths"] == [0.0, 100.0]
    assert np.array(s["grid"]["exact_match"]).shape == (2, 2)
    assert set(s["by_length"]) == {"4", "6"} and set(s["by_depth"]) == {"0", "100"}
    cfg = res["config"]
    assert cfg["memory"] == N.MEMORY_FULL and cfg["window_seconds"] is None
    assert cfg["lengths"] == [4.0, 6.0] and cfg["repeats"] == 2 and cfg["model"] == "tiny"
    assert cfg["haystack"]["kind"] == "shapeworld" and cfg["haystack"]["seed"] == 5


def test_rerun_resumes_and_never_recomputes_finished_cells(tmp_path, tiny_model):
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=5)
    kw = dict(lengths=[4.0, 6.0], depths=[0.0, 50.0, 100.0], output_dir=tmp_path / "o", model_name="tiny",
              max_reply_tokens=2, progress=False, shard=(0, 1))
    killed = Counting(tiny_model, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        N.run_niavh(killed, hay, **kw)
    files = sorted((tmp_path / "o" / "cells").glob("*.json"))
    assert [p.stem for p in files] == ["L4_d0_r0", "L4_d50_r0"]
    again = Counting(tiny_model)
    first = N.run_niavh(again, hay, **kw)
    assert again.calls == 6 - 2
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "cells").glob("*.json")}
    second = N.run_niavh(_fail_loader, hay, **kw)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert second["cells"] == first["cells"] and second["summary"] == first["summary"]
    # one cell lost: only it is redone
    (tmp_path / "o" / "cells" / "L6_d50_r0.json").unlink()
    once = Counting(tiny_model)
    N.run_niavh(once, hay, **kw)
    assert once.calls == 1
    # another model's cells in the same folder: a clear error, not a silent mix
    with pytest.raises(ConfigError, match="other settings .*model.*another --output-dir"):
        N.run_niavh(_fail_loader, hay, **(kw | {"model_name": "other"}))


def test_retrained_weights_under_the_same_name_do_not_reuse_cells(tiny_model, tmp_path):
    """Cells are keyed by a digest of the named folder's weights file: after retraining into the same
    folder a rerun is refused (not mixed with the old weights' cells); the same weights resume."""
    import torch

    from mmlc.models.loading import save_pretrained, weights_id

    folder = tmp_path / "m"
    save_pretrained(tiny_model, folder)
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=5)
    kw = dict(lengths=[4.0], depths=[0.0], output_dir=tmp_path / "o", model_name=str(folder), max_reply_tokens=2,
              progress=False, shard=(0, 1))
    first = weights_id(folder)
    N.run_niavh(tiny_model, hay, **kw)
    N.run_niavh(_fail_loader, hay, **kw)                      # same weights: resumed, nothing to run
    with torch.no_grad():
        next(tiny_model.lm.parameters()).add_(1.0)
    save_pretrained(tiny_model, folder)
    assert weights_id(folder) not in (None, first) and weights_id("tiny") is None
    with pytest.raises(ConfigError, match="weights differ"):
        N.run_niavh(_fail_loader, hay, **kw)


def test_sharded_run_equals_single_process(tmp_path):
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=2)
    answers = ["x"] * 6
    kw = dict(lengths=[4.0, 6.0], depths=[0.0, 50.0, 100.0], model_name="fake", progress=False)
    single = N.run_niavh(FakeModel(answers), hay, output_dir=tmp_path / "a", shard=(0, 1), **kw)
    parts = [FakeModel(answers), FakeModel(answers)]
    for i, m in enumerate(parts):
        N.run_niavh(m, hay, output_dir=tmp_path / "b", shard=(i, 2), merge=False, **kw)
    assert [len(m.sessions) for m in parts] == [3, 3]
    assert [s.frames_seen for s in parts[1].sessions] == [8, 12, 12]          # cells 1, 3, 5
    merged = N.run_niavh(_fail_loader, hay, output_dir=tmp_path / "b", shard=(0, 1), **kw)
    strip = lambda cells: [{k: v for k, v in c.items() if k not in ("wall_s", "stream_fps")} for c in cells]  # noqa: E731
    assert strip(merged["cells"]) == strip(single["cells"])


def test_exact_match_on_hand_made_predictions(tmp_path):
    assert N.exact_match("A  blue CROSS", "a blue cross.") and not N.exact_match("blue cross", "a blue cross.")
    assert not N.exact_match(None, "red")
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=7)
    cells = N.plan_cells([4.0, 6.0], [0.0, 100.0], 1)
    truth = [hay.cell(c).answer for c in cells]
    preds = [truth[0].upper(), "nothing.", truth[2].rstrip("."), "a red star."]   # right, wrong, right, wrong
    model = FakeModel(preds)
    res = N.run_niavh(model, hay, lengths=[4.0, 6.0], depths=[0.0, 100.0], output_dir=tmp_path / "o",
                      model_name="fake", progress=False, shard=(0, 1))
    assert [c["prediction"] for c in res["cells"]] == preds
    assert [c["exact"] for c in res["cells"]] == [True, False, True, False]
    s = res["summary"]
    assert s["exact_match"] == 0.5 and s["by_length"] == {"4": 0.5, "6": 0.5}
    assert s["by_depth"] == {"0": 1.0, "100": 0.0} and s["grid"]["exact_match"] == [[1.0, 0.0], [1.0, 0.0]]
    # the question was asked once, after the last frame
    assert [sess.pending for sess in model.sessions] == [("what rare object appeared?", c.length) for c in cells]
    assert all(c["n_replies"] == 1 and c["kv_length"] == 10 * c["frames"] for c in res["cells"])
    # summaries by hand: pending and failed cells are not scored
    recs = [{"prediction": "a", "exact": True}, None, {"prediction": "", "exact": False, "error": "boom"},
            {"prediction": "b", "exact": False}]
    s = N.summarize(recs, cells, [4.0, 6.0], [0.0, 100.0])
    assert (s["exact_match"], s["n_done"], s["n_pending"], s["n_errors"]) == (0.5, 2, 1, 1)
    assert s["grid"]["exact_match"] == [[1.0, None], [None, 0.0]]


# ---------------------------------------------------------------------- judge
def niavh_judge(server, headers, body):
    """10 when the answer matches the reference, else 3; GARBAGE gets no score; DOWN answers 503 while
    ``server.down``."""
    text = body["messages"][-1]["content"]
    ref = re.search(r"\[Reference Answer\]\n(.*)\n\n", text).group(1)
    ans = re.search(r"\[Assistant's Answer\]\n(.*)$", text, re.S).group(1)
    if "DOWN" in ans and server.down:
        return 503, {"error": {"message": "overloaded"}}
    if "GARBAGE" in ans:
        return "I cannot rate {this}."
    if ans.strip(" .").lower() == ref.strip(" .").lower():
        return 'The answer matches. {"score": 10}'
    return "{'score': '3'}"


@pytest.fixture()
def judge_server(chat_server):
    """A real local judge (tests/conftest.py ChatServer) answering with a NIAVH-style score."""
    server = chat_server(niavh_judge)
    server.down = True
    server.client = lambda **kw: JudgeClient(base_url=kw.pop("url", server.url), model="judge-x", api_key="k",
                                             retries=1, backoff=0.01, timeout=10, **kw)
    return server


def test_parse_score_is_safe_and_tolerant():
    assert N.parse_score('{"score": 7}') == (7.0, None)
    assert N.parse_score('reasoning {x} ... {"Score": "8"}') == (8.0, None)
    assert N.parse_score("{'score': 9}") == (9.0, None)
    assert N.parse_score("Score: 6") == (6.0, None)
    assert N.parse_score(" 4 ") == (4.0, None)
    for bad in ('{"score": 11}', '{"score": 0}', "no idea", "", None, '{"score": "__import__(\'os\')"}',
                '{"rating": 5} and nothing else'):
        score, why = N.parse_score(bad)
        assert score is None and why


def test_judge_scores_through_a_real_http_server(tmp_path, judge_server):
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=7)
    cells = N.plan_cells([4.0, 6.0], [0.0, 100.0], 1)
    truth = [hay.cell(c).answer for c in cells]
    preds = [truth[0], "a red star.", "GARBAGE", "DOWN"]
    kw = dict(lengths=[4.0, 6.0], depths=[0.0, 100.0], output_dir=tmp_path / "o", model_name="fake",
              progress=False, shard=(0, 1))
    res = N.run_niavh(FakeModel(preds), hay, judge=judge_server.client(), **kw)
    judged = [c["judge"] for c in res["cells"]]
    assert [j["status"] for j in judged] == ["ok", "ok", "unparsed", "error"]
    assert [j["score"] for j in judged] == [10.0, 3.0, None, None]
    assert judged[3]["attempts"] == 2 and "503" in judged[3]["error"]
    assert len(judge_server.requests) == 5                    # the 503 was retried once
    first = judge_server.requests[0]["body"]
    assert first["model"] == "judge-x" and "1 to 10" in first["messages"][-1]["content"]
    s = res["summary"]
    assert s["judge"]["mean_score"] == 6.5 and (s["judge"]["n_ok"], s["judge"]["n_unparsed"],
                                                s["judge"]["n_errors"]) == (2, 1, 1)
    assert s["grid"]["judge_score"] == [[10.0, 3.0], [None, None]] and s["exact_match"] == 0.25
    assert res["config"]["judge"]["model"] == "judge-x"
    # rerun: no generation; only the failed judgement is asked again
    judge_server.down = False
    res = N.run_niavh(_fail_loader, hay, judge=judge_server.client(), **kw)
    assert len(judge_server.requests) == 6
    assert [c["judge"]["status"] for c in res["cells"]] == ["ok", "ok", "unparsed", "ok"]
    assert res["summary"]["judge"]["mean_score"] == round((10 + 3 + 3) / 3, 4)
    # a wrong URL stops the run (every request would fail alike)
    cell = tmp_path / "o" / "cells" / "L4_d0_r0.json"
    cell.write_text(json.dumps({k: v for k, v in json.loads(cell.read_text()).items() if k != "judge"}))
    with pytest.raises(JudgeFatalError, match="HTTP 404"):
        N.run_niavh(_fail_loader, hay, judge=judge_server.client(url=judge_server.url + "/nope"), **kw)


# ---------------------------------------------------------------------- plot, window, command line
def test_heatmap_png_is_written(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=7)
    png = tmp_path / "plots" / "niavh.png"
    res = N.run_niavh(FakeModel(["x"] * 4), hay, lengths=[4.0, 6.0], depths=[0.0, 100.0], output_dir=tmp_path / "o",
                      plot=png, progress=False, shard=(0, 1))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    res["summary"]["grid"]["exact_match"][1][0] = None                   # a pending cell draws too
    N.plot_heatmap(res, tmp_path / "p2.png")
    with pytest.raises(ConfigError, match="--judge"):
        N.plot_heatmap(res, tmp_path / "p3.png", metric="judge")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="pip install matplotlib"):
        N.plot_heatmap(res, tmp_path / "p4.png")
    with pytest.raises(ConfigError, match="pip install matplotlib"):   # before any work
        N.run_niavh(_fail_loader, hay, lengths=[4.0], depths=[0.0], output_dir=tmp_path / "o2",
                    plot=tmp_path / "p5.png", progress=False, shard=(0, 1))


def test_no_memory_uses_a_sliding_window(tmp_path, tiny_model):
    try:
        tiny_model.stream(fps=FPS, window_seconds=1.0)
    except ConfigError as err:
        if "unknown stream options" in str(err):
            pytest.skip("model.stream(window_seconds=...) is not in StreamSession yet: the --no-memory baseline "
                        "cannot run")
        raise
    hay = N.ShapeWorldHaystack(fps=FPS, size=16, seed=5)
    kw = dict(lengths=[10.0], depths=[0.0], model_name="tiny", max_reply_tokens=2, progress=False, shard=(0, 1))
    full = N.run_niavh(tiny_model, hay, output_dir=tmp_path / "full", **kw)
    window = N.run_niavh(tiny_model, hay, output_dir=tmp_path / "win", no_memory=True, window_seconds=1.0, **kw)
    assert window["config"]["memory"] == "sliding-window 1 s" and window["config"]["window_seconds"] == 1.0
    assert window["cells"][0]["kv_length"] < full["cells"][0]["kv_length"]
    with pytest.raises(ConfigError, match="other settings .*memory"):
        N.run_niavh(_fail_loader, hay, output_dir=tmp_path / "full", no_memory=True, window_seconds=1.0, **kw)
    with pytest.raises(ConfigError, match="--window-seconds"):
        N.run_niavh(_fail_loader, hay, output_dir=tmp_path / "x", no_memory=True, window_seconds=0, **kw)


def test_bad_inputs_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("mmlc.load", lambda *a, **k: pytest.fail("the model was loaded"), raising=False)
    video = _video(tmp_path / "hay.mp4", 6.0)
    image = _png(tmp_path / "n.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    base = ["--no-progress", "--output-dir", str(tmp_path / "o")]
    cases = [
        (["--haystack", str(tmp_path / "none.mp4"), "--needle", str(image), "--question", "q", "--answer", "a"],
         DataError, "--haystack .*none.mp4.*no such file"),
        (["--haystack", str(video), "--needle", str(tmp_path / "none.png"), "--question", "q", "--answer", "a"],
         DataError, "--needle .*none.png.*no such file"),
        (["--haystack", str(video), "--needle", str(broken), "--question", "q", "--answer", "a"],
         DataError, "--needle .*broken.png.*cannot be read as an image"),
        (["--haystack", str(video), "--needle", str(image), "--question", "q", "--answer", "a", "--lengths", "5",
          "--needle-seconds", "5"], ConfigError, "--needle-seconds 5: the needle .* not shorter than the haystack"),
        (["--haystack", str(video), "--needle", str(image), "--question", "q", "--answer", "a", "--lengths", "4,10"],
         DataError, "lasts 6 s .*shorter than --lengths 10"),
        (["--haystack", str(video), "--needle", str(image), "--answer", "a"], ConfigError, "needs --question"),
        (["--haystack", str(video), "--needle", "text:hi"], ConfigError, "needs --question and --answer"),
        (["--haystack", str(video), "--question", "q", "--answer", "a"], ConfigError, "needs a needle.*--needle"),
        (["--needle", "text:  "], ConfigError, "has no text"),
        (["--depths", "0,150"], ConfigError, "--depths '0,150': 150 must be a percentage in 0-100"),
        (["--lengths", "0"], ConfigError, "--lengths '0': 0 must be > 0 seconds"),
        (["--lengths", ""], ConfigError, "the grid is empty"),
        (["--seeds", "0"], ConfigError, "--seeds 0"),
        (["--answer", "red"], ConfigError, "come from the generator"),
        (["--lengths", "3", "--needle-seconds", "3"], ConfigError, "--needle-seconds 3: .*not shorter"),
        (["--lengths", "4", "--needle-seconds", "2.5"], ConfigError, "--haystack shapeworld at --lengths 4.*needle"),
        (["--fps", "0"], ConfigError, "--fps 0"),
        (["--no-memory", "--window-seconds", "-1", "--lengths", "4"], ConfigError, "--window-seconds"),
    ]
    for argv, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            N.cmd_niavh(_args(*argv, *base))
    # a clip needle longer than the haystack, and --needle-seconds longer than the clip
    clip = _video(tmp_path / "clip.mp4", 3.0, seed=4)
    with pytest.raises(ConfigError, match="--needle .*clip.mp4.*not shorter than the haystack of --lengths 2"):
        N.cmd_niavh(_args("--haystack", str(video), "--needle", str(clip), "--question", "q", "--answer", "a",
                          "--lengths", "2", *base))
    with pytest.raises(ConfigError, match="--needle-seconds 4 is longer than the clip"):
        N.cmd_niavh(_args("--haystack", str(video), "--needle", str(clip), "--needle-seconds", "4", "--question", "q",
                          "--answer", "a", *base))
    assert not (tmp_path / "o").exists()
    assert N.main(["--depths", "200", "--no-progress"]) == 2


def test_command_runs_a_file_haystack_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    video = _video(tmp_path / "hay.mp4", 5.0)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["--haystack", str(video), "--needle", "text:apple", "--needle-seconds", "1", "--question",
            "what word was shown?", "--answer", "apple", "--lengths", "3,5", "--depths", "0,100", "--model",
            "tiny-test", "--init", "random", "--max-reply-tokens", "2", "--json", str(out), "--plot", str(png),
            "--no-progress"]
    assert N.cmd_niavh(_args(*argv)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_cells"] == 4 and printed["n_done"] == 4 and printed["memory"] == N.MEMORY_FULL
    assert printed["model"] == "tiny-test (random init)" and printed["grid"]["lengths"] == [3.0, 5.0]
    res = json.loads(out.read_text())
    assert res["config"]["haystack"]["needle"] == {"kind": "text", "seconds": 1.0, "text": "apple"}
    assert res["config"]["init"] == "random" and png.is_file()
    assert [c["needle"]["frame_start"] for c in res["cells"]] == [0, 4, 0, 8]
    assert (tmp_path / "r.json.cells" / "cells" / "L5_d100_r0.json").is_file()
    assert N.main(argv) == 0                       # resumes: nothing recomputed, same numbers
    assert json.loads(capsys.readouterr().out)["exact_match"] == printed["exact_match"]
