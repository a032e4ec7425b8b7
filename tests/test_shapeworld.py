"""ShapeWorld: determinism, ground truth against rendered frames, timeline rules, QA, multi-image, writer."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest

from mmlc.data.shapeworld import (
    COLOURS,
    DIRECTIONS,
    ROOMS,
    WorldConfig,
    describe_state,
    generate_episode,
    generate_multi_image,
    question_subject,
    render_state,
    state_questions,
)
from mmlc.data.writer import read_episode_json, write_shapeworld
from mmlc.errors import ConfigError, DataError, MmlcError

SEEDS = range(12)
NUMBERS = ["zero", "one", "two", "three", "four", "five"]


@pytest.fixture(scope="module")
def episodes():
    return [generate_episode(s) for s in SEEDS]


def _truth_bytes(ep) -> str:
    return json.dumps(ep.truth(), sort_keys=True)


# --- helpers that read a rendered frame -------------------------------------------------------------


def _mask(frame: np.ndarray, colour: str, tol: int = 30) -> np.ndarray:
    return (np.abs(frame.astype(int) - np.array(COLOURS[colour])) <= tol).all(axis=2)


def _patch_is(frame: np.ndarray, x: float, y: float, colour: str, tol: int = 25) -> bool:
    cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
    patch = frame[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).astype(float).mean(axis=0)
    return bool(np.abs(patch - np.array(COLOURS[colour])).max() <= tol)


def _centroid(frame: np.ndarray, colour: str) -> np.ndarray:
    ys, xs = np.nonzero(_mask(frame, colour))
    assert len(xs) > 5, f"no {colour} pixels"
    return np.array([xs.mean(), ys.mean()])


def _background(frame: np.ndarray) -> np.ndarray:
    return np.median(frame.reshape(-1, 3), axis=0)


def _nearest_room(rgb: np.ndarray) -> str:
    return min(ROOMS, key=lambda r: np.abs(np.array(ROOMS[r]) - rgb).sum())


def _event_frames(ep) -> list[int]:
    return [i for i, evs in enumerate(ep.events) for _ in evs]


# --- determinism --------------------------------------------------------------------------------------


def test_same_seed_same_truth_and_frames():
    a, b = generate_episode(7), generate_episode(7)
    assert _truth_bytes(a) == _truth_bytes(b)
    for i in (0, 1, 57, a.n_frames - 1):
        np.testing.assert_array_equal(a.frame(i), b.frame(i))
    c = generate_episode(8)
    assert _truth_bytes(a) != _truth_bytes(c)
    assert not np.array_equal(a.frame(0), c.frame(0))
    frame = a.frame(3)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    ts = [t for t, _ in a.frames()]
    assert len(ts) == a.n_frames == 240 and ts[1] == 0.5


def test_noise_is_per_frame_and_bounded():
    ep = generate_episode(3)
    clean = render_state(ep.states[10], 64, None, 0)
    noisy = ep.frame(10)
    diff = noisy.astype(int) - clean.astype(int)
    assert np.abs(diff).max() <= ep.config.noise and diff.std() > 1
    state = ep.states[10]
    assert not np.array_equal(ep.frame(10), render_state(state, 64, np.random.default_rng([3, 11]), 6))


# --- ground truth against the rendered frames ---------------------------------------------------------


def test_every_object_is_drawn_where_the_state_says(episodes):
    for ep in episodes[:6]:
        for i, state in enumerate(ep.states):
            frame = ep.frame(i)
            assert _nearest_room(_background(frame)) == state["room"]
            for obj in state["objects"]:
                assert _patch_is(frame, obj["x"], obj["y"], obj["colour"]), (ep.seed, i, obj)


def test_events_are_visible_between_consecutive_frames(episodes):
    speed = WorldConfig().speed_px
    seen = set()
    for ep in episodes:
        for i, evs in enumerate(ep.events):
            if i == 0:
                continue
            for ev in evs:
                before, after = ep.frame(i - 1), ep.frame(i)
                kind = ev["type"]
                seen.add(kind)
                if kind == "cut":
                    assert _nearest_room(_background(after)) == ev["room"]
                    assert _nearest_room(_background(before)) == ep.states[i - 1]["room"] != ev["room"]
                elif kind == "appear":
                    assert _patch_is(after, ev["x"], ev["y"], ev["colour"])
                    assert not _patch_is(before, ev["x"], ev["y"], ev["colour"])
                elif kind == "leave":
                    assert _patch_is(before, ev["x"], ev["y"], ev["colour"])
                    assert not _patch_is(after, ev["x"], ev["y"], ev["colour"])
                    assert not _mask(after, ev["colour"]).any()
                elif kind == "colour":
                    assert _patch_is(before, ev["x"], ev["y"], ev["old"])
                    assert _patch_is(after, ev["x"], ev["y"], ev["new"])
                elif kind == "move":
                    shift = _centroid(after, ev["colour"]) - _centroid(before, ev["colour"])
                    step = np.array(DIRECTIONS[ev["dir"]])
                    assert shift @ step >= 0.6 * speed, (ep.seed, i, ev, shift)
                    assert abs(shift @ step[::-1]) <= 1.0, (ep.seed, i, ev, shift)
                elif kind == "stop":
                    shift = _centroid(after, ev["colour"]) - _centroid(before, ev["colour"])
                    assert np.abs(shift).max() <= 0.5, (ep.seed, i, ev, shift)
    assert seen == {"cut", "appear", "leave", "colour", "move", "stop"}


# --- timeline rules -----------------------------------------------------------------------------------


def test_event_spacing_narration_and_scenes(episodes):
    for ep in episodes:
        cfg, truth = ep.config, ep.truth()
        frames = _event_frames(ep)
        assert frames[0] == 0 and ep.events[0][0]["type"] == "start"
        assert all(b - a >= cfg.event_gap_frames for a, b in zip(frames, frames[1:]))
        assert len(truth["narration"]) == len(frames) == len(truth["events"])
        assert [n["t"] for n in truth["narration"]] == [f / cfg.fps for f in frames]
        for n in truth["narration"]:
            assert n["text"] == n["text"].lower() and n["text"].endswith(".")
        assert truth["narration"][0]["text"] == describe_state(ep.states[0])
        scenes = truth["scenes"]
        assert scenes[0]["start"] == 0.0 and scenes[-1]["end"] == cfg.duration
        assert all(a["end"] == b["start"] for a, b in zip(scenes, scenes[1:]))
        assert all(s["end"] - s["start"] >= cfg.min_scene_seconds for s in scenes)
        assert all(a["background"] != b["background"] for a, b in zip(scenes, scenes[1:]))
        assert cfg.min_scenes <= len(scenes) <= cfg.max_scenes
        cuts = [i for i, evs in enumerate(ep.events) for e in evs if e["type"] == "cut"]
        assert cuts == [round(s["start"] * cfg.fps) for s in scenes[1:]]


def test_states_follow_the_events(episodes):
    speed = WorldConfig().speed_px
    for ep in episodes:
        size = ep.config.size
        for i, state in enumerate(ep.states):
            objs = state["objects"]
            assert len({o["shape"] for o in objs}) == len(objs)
            assert len({o["colour"] for o in objs}) == len(objs)
            assert len(objs) <= ep.config.max_objects
            for o in objs:
                ext = 1.25 * (6 if o["size"] == "small" else 9) + 0.5  # the drawn shape fits in this circle
                assert ext - 1e-6 <= o["x"] <= size - 1 - ext + 1e-6 and ext - 1e-6 <= o["y"] <= size - 1 - ext + 1e-6
            for a in objs:
                for b in objs:
                    if a is not b:
                        assert math.hypot(a["x"] - b["x"], a["y"] - b["y"]) > 10
            if i == 0 or ep.events[i] and ep.events[i][0]["type"] == "cut":
                continue
            prev = {o["shape"]: o for o in ep.states[i - 1]["objects"]}
            cur = {o["shape"]: o for o in objs}
            ev = ep.events[i][0] if ep.events[i] else None
            for shape, o in cur.items():
                if shape not in prev:
                    assert ev["type"] == "appear" and ev["shape"] == shape
                    continue
                p = prev[shape]
                dx, dy = o["x"] - p["x"], o["y"] - p["y"]
                if o["moving"]:
                    ux, uy = DIRECTIONS[o["moving"]]
                    assert abs(dx - ux * speed) < 0.02 and abs(dy - uy * speed) < 0.02
                    if not p["moving"]:
                        assert (ev["type"], ev["shape"], ev["dir"]) == ("move", shape, o["moving"])
                else:
                    assert dx == 0 and dy == 0
                    if p["moving"]:
                        assert ev["type"] == "stop" and ev["shape"] == shape
                if o["colour"] != p["colour"]:
                    assert ev["type"] == "colour" and (ev["old"], ev["new"]) == (p["colour"], o["colour"])
            for shape in prev.keys() - cur.keys():
                assert ev["type"] == "leave" and ev["shape"] == shape


def test_narration_templates(episodes):
    obj = r"an? \w+ \w+"
    objects = rf"{obj}(?:, {obj})*(?: and {obj})?"
    patterns = {
        "start": rf"an? \w+ room with {objects}\.",
        "cut": rf"the scene changes to an? \w+ room with {objects}\.",
        "appear": r"an? \w+ \w+ appears\.",
        "leave": r"the \w+ \w+ leaves\.",
        "move": r"the \w+ \w+ moves (left|right|up|down)\.",
        "stop": r"the \w+ \w+ stops\.",
        "colour": r"the \w+ \w+ turns \w+\.",
    }
    for ep in episodes:
        for n in ep.truth()["narration"]:
            assert re.fullmatch(patterns[n["type"]], n["text"]), n
            assert "small" not in n["text"] and "large" not in n["text"]
    state = {"room": "olive", "objects": [
        {"shape": "star", "colour": "blue", "size": "small", "x": 40.0, "y": 9.0, "moving": None},
        {"shape": "circle", "colour": "red", "size": "large", "x": 10.0, "y": 9.0, "moving": None},
        {"shape": "square", "colour": "orange", "size": "small", "x": 50.0, "y": 9.0, "moving": None}]}
    assert describe_state(state) == "an olive room with a red circle, a blue star and an orange square."


def test_event_mix_over_many_episodes():
    counts: dict[str, int] = {}
    empty = total = 0
    for s in range(40):
        ep = generate_episode(100 + s)
        for evs in ep.events:
            for e in evs:
                counts[e["type"]] = counts.get(e["type"], 0) + 1
        empty += sum(not st["objects"] for st in ep.states)
        total += ep.n_frames
    per_minute = (sum(counts.values()) - counts["start"]) / 40 / 2
    assert 9 <= per_minute <= 13, counts
    assert counts["move"] == counts["stop"]
    for kind in ("appear", "leave", "colour", "cut"):
        assert counts[kind] / 40 >= 1, counts
    assert counts["move"] > counts["colour"] > counts["leave"] / 2
    assert empty / total < 0.02


# --- questions ---------------------------------------------------------------------------------------


def _expected_answer(ep, q) -> str:
    state = ep.states[q["frame"]]
    by_shape = {o["shape"]: o for o in state["objects"]}
    text = q["question"]
    if text == "what colour is the room?":
        return state["room"] + "."
    if m := re.fullmatch(r"what colour is the (\w+)\?", text):
        return by_shape[m[1]]["colour"] + "."
    if m := re.fullmatch(r"how big is the (\w+)\?", text):
        return by_shape[m[1]]["size"] + "."
    if text == "how many objects are there?":
        return NUMBERS[len(state["objects"])] + "."
    if text == "what is moving?":
        movers = sorted((o for o in state["objects"] if o["moving"]), key=lambda o: o["x"])
        names = [f"the {o['colour']} {o['shape']}" for o in movers]
        if not names:
            return "nothing."
        return (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]) + "."
    start = ep.scene_starts[state["scene"]]
    previous = ep.states[start - 1]
    if text == "what colour was the room before?":
        return previous["room"] + "."
    if m := re.fullmatch(r"what colour was the (\w+) in the previous scene\?", text):
        return {o["shape"]: o for o in previous["objects"]}[m[1]]["colour"] + "."
    raise AssertionError(f"unexpected question {text!r}")


def test_qa_answers_match_the_states(episodes):
    kinds = set()
    for ep in episodes:
        qa = ep.truth()["qa"]
        assert 6 <= len(qa) <= 8
        for q in qa:
            assert q["t"] == q["frame"] / ep.config.fps
            assert not ep.events[q["frame"]], "questions are never asked at event frames"
            assert q["answer"] == _expected_answer(ep, q), q
            if q["kind"] == "memory":
                assert ep.states[q["frame"]]["scene"] >= 1
            kinds.add(q["kind"])
            if q["kind"] == "state":
                assert (q["question"], q["answer"]) in state_questions(ep.states[q["frame"]])
    assert kinds == {"state", "memory"}
    for ep in episodes[:3]:
        for i in (0, 50, 100):
            for question, answer in state_questions(ep.states[i]):
                assert answer == _expected_answer(ep, {"frame": i, "question": question})
                # the object a question names is read back from its text (None for the whole frame)
                subject = question_subject(ep.states[i], question)
                if question.startswith(("what colour is the room", "how many", "what is moving")):
                    assert subject is None
                else:
                    assert subject is not None and subject["shape"] in question
                    assert answer == f"{subject['colour' if 'colour' in question else 'size']}."


def test_needle_shown_at_depth_not_narrated_and_asked_after():
    for seed, depth in ((1, 0.0), (2, 0.5), (3, 1.0), (4, None), (5, 0.25)):
        cfg = WorldConfig(needle=True, needle_depth=depth)
        ep = generate_episode(seed, cfg)
        (needle,) = ep.truth()["needles"]
        f0, f1 = needle["frame_start"], needle["frame_end"]
        assert f1 - f0 == 3 and needle["t_end"] - needle["t_start"] == cfg.needle_seconds
        if depth is not None:
            assert abs(f0 - depth * ep.n_frames) <= 8
        shown = [i for i, s in enumerate(ep.states) if s["needle"]]
        assert shown == list(range(f0, f1))
        assert ep.states[f0 - 1]["scene"] == ep.states[min(f1, ep.n_frames - 1)]["scene"]
        events = _event_frames(ep)
        assert all(i <= f0 - cfg.event_gap_frames or i >= f1 + cfg.event_gap_frames for i in events)
        assert _patch_is(ep.frame(f0), needle["x"], needle["y"], needle["colour"])
        assert not _patch_is(ep.frame(f0 - 1), needle["x"], needle["y"], needle["colour"])
        (q,) = [q for q in ep.qa if q["kind"] == "needle"]
        assert q["frame"] >= f1 and q["question"] == "what rare object appeared?"
        assert q["answer"] in (f"a {needle['colour']} {needle['shape']}.", f"an {needle['colour']} {needle['shape']}.")
        assert all(needle["shape"] not in n["text"] for n in ep.narration)
    assert not generate_episode(1).truth()["needles"]


# --- multi-image --------------------------------------------------------------------------------------


def _multi_expected(states, question, previous):
    if m := re.fullmatch(r"what colour is the room in image (\d+)\?", question):
        return states[int(m[1]) - 1]["room"] + ".", ("room", None)
    if m := re.fullmatch(r"what colour is the (\w+) in image (\d+)\?", question):
        obj = {o["shape"]: o for o in states[int(m[2]) - 1]["objects"]}[m[1]]
        return obj["colour"] + ".", ("colour", m[1])
    if m := re.fullmatch(r"how many objects are in image (\d+)\?", question):
        return NUMBERS[len(states[int(m[1]) - 1]["objects"])] + ".", ("count", None)
    if m := re.fullmatch(r"and in image (\d+)\?", question):
        assert previous is not None, "a followup must follow a single or followup question"
        attr, shape = previous
        state = states[int(m[1]) - 1]
        if attr == "colour":
            return {o["shape"]: o for o in state["objects"]}[shape]["colour"] + ".", previous
        if attr == "count":
            return NUMBERS[len(state["objects"])] + ".", previous
        return state["room"] + ".", previous
    if question == "which image has more objects?":
        counts = [len(s["objects"]) for s in states]
        assert counts.count(max(counts)) == 1
        return f"image {counts.index(max(counts)) + 1}.", None
    if m := re.fullmatch(r"which image has an? (\w+) (\w+)\?", question):
        ks = [k for k, s in enumerate(states) if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in s["objects"])]
        assert len(ks) == 1
        return f"image {ks[0] + 1}.", None
    if m := re.fullmatch(r"do image (\d+) and image (\d+) have the same room colour\?", question):
        same = states[int(m[1]) - 1]["room"] == states[int(m[2]) - 1]["room"]
        return ("yes." if same else "no."), None
    raise AssertionError(f"unexpected question {question!r}")


def test_multi_image_dialogues():
    kinds, yes_no = set(), set()
    for seed in range(40):
        mi = generate_multi_image(seed)
        n = len(mi.images)
        assert 2 <= n <= 4 and len(mi.states) == n and 3 <= len(mi.turns) <= 6
        assert mi.turns[0]["images"] == list(range(n)) and all(not t["images"] for t in mi.turns[1:])
        for image, state in zip(mi.images, mi.states):
            assert image.shape == (64, 64, 3) and 1 <= len(state["objects"]) <= 3
            assert _nearest_room(_background(image)) == state["room"]
            for o in state["objects"]:
                assert _patch_is(image, o["x"], o["y"], o["colour"])
        previous = None
        for turn in mi.turns:
            assert "<" not in turn["question"]
            answer, previous = _multi_expected(mi.states, turn["question"], previous)
            assert turn["answer"] == answer, (seed, turn)
            assert (turn["kind"] == "followup") == turn["question"].startswith("and in image")
            kinds.add(turn["kind"])
            if turn["answer"] in ("yes.", "no."):
                yes_no.add(turn["answer"])
        assert len({t["question"] for t in mi.turns if t["kind"] != "followup"}) == sum(
            t["kind"] != "followup" for t in mi.turns)
        assert json.dumps(mi.truth(), sort_keys=True) == json.dumps(generate_multi_image(seed).truth(), sort_keys=True)
    assert kinds == {"single", "compare", "followup"} and yes_no == {"yes.", "no."}
    assert len(generate_multi_image(0, n_images=3).images) == 3
    with pytest.raises(ConfigError, match="n_images"):
        generate_multi_image(0, n_images=1)


# --- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("size", 8), ("size", 64.0), ("fps", 0), ("duration", -1.0), ("noise", 300), ("max_objects", 5),
    ("max_objects", 0), ("event_gap_frames", 0), ("speed", 0.0), ("needle_depth", 1.5),
    ("shapes", ("circle", "hexagon")), ("colours", ()), ("rooms", "gray"), ("needle", "yes"),
    ("needle_shapes", ("circle",)), ("min_scenes", 0),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"WorldConfig\.{field}="):
        WorldConfig(**{field: value})


def test_config_cross_field_errors():
    with pytest.raises(ConfigError, match="min_scenes"):
        WorldConfig(duration=30.0, min_scenes=4)
    with pytest.raises(ConfigError, match="needle_seconds"):
        WorldConfig(needle=True, needle_seconds=20.0)
    with pytest.raises(ConfigError, match="seed"):
        generate_episode(-1)
    cfg = WorldConfig(shapes=["circle", "star"], max_objects=2)
    assert cfg.shapes == ("circle", "star")


def test_small_config_episode():
    cfg = WorldConfig(size=32, duration=30.0, fps=4.0, min_scene_seconds=5.0, max_objects=2, noise=0)
    ep = generate_episode(11, cfg)
    assert ep.n_frames == 120 and ep.frame(5).shape == (32, 32, 3)
    assert all(len(s["objects"]) <= 2 for s in ep.states)


def test_palette_contrast():
    for c, rgb in COLOURS.items():
        for r, room in ROOMS.items():
            assert np.linalg.norm(np.subtract(rgb, room)) > 100, (c, r)
    names = list(ROOMS)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert np.abs(np.subtract(ROOMS[names[a]], ROOMS[names[b]])).max() >= 35


# --- writer -------------------------------------------------------------------------------------------


def test_writer_video_resume(tmp_path):
    cv2 = pytest.importorskip("cv2")
    out = tmp_path / "sw"
    paths = write_shapeworld(out, 2, 5, duration=10.0, progress=False)
    assert [p.name for p in paths] == ["sw00000005.json", "sw00000006.json"]
    for p in paths:
        data = read_episode_json(p)
        assert data["id"] == p.stem and data["video"] == p.stem + ".mp4"
        cap = cv2.VideoCapture(str(out / data["video"]))
        assert cap.isOpened()
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        cap.release()
        assert len(frames) == 20 and frames[0].shape == (64, 64, 3)
        expected = generate_episode(data["seed"], WorldConfig(duration=10.0, min_scene_seconds=10.0))
        assert json.dumps(data["narration"], sort_keys=True) == json.dumps(expected.truth()["narration"], sort_keys=True)
        room = np.array(ROOMS[expected.states[0]["room"]])[::-1]  # BGR
        assert np.abs(np.median(frames[0].reshape(-1, 3), axis=0) - room).max() < 20
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    write_shapeworld(out, 2, 5, duration=10.0, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    os.remove(out / "sw00000006.json")
    (out / "sw00000006.mp4").write_bytes(b"half written")
    write_shapeworld(out, 2, 5, duration=10.0, progress=False)
    assert (out / "sw00000006.json").exists()
    assert (out / "sw00000005.json").stat().st_mtime_ns == stamps["sw00000005.json"]
    assert (out / "sw00000006.mp4").stat().st_size > 100
    assert not [p for p in out.iterdir() if "tmp" in p.name]


def test_writer_multi_image(tmp_path):
    (path,) = write_shapeworld(tmp_path, 1, 9, kind="multi-image", progress=False)
    data = json.loads(path.read_text())
    assert data["id"] == "sw00000009" and len(data["images"]) == data["n_images"]
    from PIL import Image

    for k, rel in enumerate(data["images"]):
        assert rel == f"sw00000009/image{k + 1}.png"
        image = np.asarray(Image.open(tmp_path / rel))
        np.testing.assert_array_equal(image, generate_multi_image(9).images[k])


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0, "seed": 0}, "n=0"), ({"n": 1, "seed": 0, "kind": "audio"}, "kind='audio'"),
    ({"n": 1, "seed": -3}, "seed=-3"),
])
def test_writer_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(MmlcError, match=match):
        write_shapeworld(tmp_path, progress=False, **kwargs)


def test_read_episode_json_errors(tmp_path):
    good = generate_episode(2, WorldConfig(duration=12.0)).truth()
    path = tmp_path / "ep.json"
    path.write_text(json.dumps(good))
    assert read_episode_json(path)["seed"] == 2
    for field in ("seed", "fps", "scenes", "narration", "qa"):
        broken = dict(good)
        del broken[field]
        path.write_text(json.dumps(broken))
        with pytest.raises(DataError, match=rf"ep\.json.*'{field}'"):
            read_episode_json(path)
    path.write_text(json.dumps(good | {"fps": "2"}))
    with pytest.raises(DataError, match="'fps' must be"):
        read_episode_json(path)
    path.write_text(json.dumps(good | {"qa": [{"t": 1.0, "question": "q?"}]}))
    with pytest.raises(DataError, match=r"qa\[0\].*'answer'"):
        read_episode_json(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="ep.json"):
        read_episode_json(path)
    with pytest.raises(DataError, match="not found"):
        read_episode_json(tmp_path / "missing.json")
