"""MMDU: the benchmark format, the ShapeWorld writer, the judge client against a real local HTTP
server, aggregation, resume, sharding and the command-line errors."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmlc.data.mmdu import read_mmdu, write_shapeworld_mmdu
from mmlc.data.shapeworld import WorldConfig, generate_multi_image
from mmlc.errors import ConfigError, DataError, MmlcError
from mmlc.evals import mmdu as E
from mmlc.evals.judge import DIMS, JudgeClient, JudgeError, JudgeFatalError, last_braces, parse_scores
from mmlc.models.loading import build
from mmlc.models.presets import preset
from mmlc.streaming.chat import ChatSession


# ---------------------------------------------------------------------- helpers
@pytest.fixture()
def chat_model(tokenizer):
    """A tiny random model whose replies are not empty and differ between turns (seed 4)."""
    return build(preset("tiny-test"), tokenizer, seed=4)


def _png(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), colour, np.uint8)).save(path)


def _item(ident, questions, answers, images, kinds=None):
    conv = []
    for j, (q, a) in enumerate(zip(questions, answers)):
        conv.append({"from": "user", "value": q})
        conv.append({"from": "assistant", "value": a} | ({"kind": kinds[j]} if kinds else {}))
    return {"id": ident, "image": images, "conversations": conv}


def _bench(tmp_path: Path, items, name="benchmark.json", form="list") -> Path:
    for item in (items if form == "list" else items.values()):
        for k, rel in enumerate(item.get("image", []) if isinstance(item, dict) else []):
            if isinstance(rel, str) and not (tmp_path / rel).exists() and "missing" not in rel:
                _png(tmp_path / rel, (40 * k % 255, 100, 200))
    path = tmp_path / name
    path.write_text(json.dumps(items))
    return path


def _two_dialogues():
    return [
        _item("d1", ["Image1: <ImageHere>\nImage2: <ImageHere>\nwhich image has a red circle?", "and a blue one?"],
              ["image 1.", "image 2."], ["img/a.png", "img/b.png"], kinds=["compare", "followup"]),
        _item("d2", ["<ImageHere> what colour is the room?"], ["gray."], ["img/c.png"], kinds=["single"]),
    ]


# ---------------------------------------------------------------------- reading the format
@pytest.mark.parametrize("form", ["list", "dict"])
def test_read_official_format_list_and_dict(tmp_path, form):
    items = _two_dialogues()
    if form == "dict":
        items = {"d1": items[0], "d2": {k: v for k, v in items[1].items() if k != "id"}}  # key stands in for id
    data = read_mmdu(_bench(tmp_path, items, form=form), strict=True)
    assert [it.id for it in data.items] == ["d1", "d2"] and not data.invalid
    d1 = data.items[0]
    assert [t.question for t in d1.turns][1] == "and a blue one?"
    assert [t.answer for t in d1.turns] == ["image 1.", "image 2."]
    assert [t.kind for t in d1.turns] == ["compare", "followup"]
    # placeholders take the images in order, turn by turn
    assert d1.turns[0].images == [tmp_path / "img/a.png", tmp_path / "img/b.png"] and d1.turns[1].images == []
    assert data.items[1].turns[0].images == [tmp_path / "img/c.png"]


def test_image_dir_and_placeholders_across_turns(tmp_path):
    item = _item("x", ["<ImageHere> first", "then <ImageHere> and <ImageHere>"], ["a", "b"],
                 ["p1.png", "p2.png", "p3.png"])
    for name in ("p1.png", "p2.png", "p3.png"):
        _png(tmp_path / "pics" / name)
    path = tmp_path / "data" / "benchmark.json"
    path.parent.mkdir()
    path.write_text(json.dumps([item]))
    with pytest.raises(DataError, match=r"item 'x': field 'image'\[0\].*does not exist"):
        read_mmdu(path, strict=True)        # default image dir: the data file's folder
    data = read_mmdu(path, tmp_path / "pics", strict=True)
    t0, t1 = data.items[0].turns
    assert [p.name for p in t0.images] == ["p1.png"] and [p.name for p in t1.images] == ["p2.png", "p3.png"]


def _drop(d, key):
    return {k: v for k, v in d.items() if k != key}


MALFORMED = {
    "missing id": (lambda it: _drop(it, "id"), r"item 1: missing field 'id'"),
    "missing image": (lambda it: _drop(it, "image"), r"item 'bad': missing field 'image'"),
    "missing conversations": (lambda it: _drop(it, "conversations"), r"item 'bad': missing field 'conversations'"),
    "missing value": (lambda it: it | {"conversations": [{"from": "user"}, {"from": "assistant", "value": "x"}]},
                      r"item 'bad': conversations\[0\] is missing field 'value'"),
    "roles do not alternate": (lambda it: it | {"conversations": [it["conversations"][0], it["conversations"][0]]},
                               r"item 'bad': conversations\[1\]\.from is 'user'.*expected 'assistant'"),
    "ends with a user turn": (lambda it: it | {"conversations": it["conversations"][:1]},
                              r"item 'bad': field 'conversations' ends with a user turn"),
    "more placeholders than images": (lambda it: it | {"image": it["image"][:1]},
                                      r"item 'bad': .*2 <ImageHere> placeholders, more than the 1 images "
                                      r"of field 'image'"),
    "fewer placeholders than images": (lambda it: it | {"image": it["image"] + ["img/z.png"]},
                                       r"item 'bad': .*2 <ImageHere> placeholders, fewer than the 3 images "
                                       r"of field 'image'"),
    "missing image file": (lambda it: it | {"image": ["img/a.png", "img/missing.png"]},
                           r"item 'bad': field 'image'\[1\]: image file .*missing\.png.* does not exist"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_items_name_file_item_and_field(tmp_path, case):
    mutate, pattern = MALFORMED[case]
    good = _two_dialogues()[0]
    bad = mutate(dict(good, id="bad"))
    path = _bench(tmp_path, [good, bad])
    with pytest.raises(DataError, match=pattern) as info:
        read_mmdu(path, strict=True)
    assert str(path) in str(info.value)
    data = read_mmdu(path)   # not strict: the broken item is set aside, the good one kept
    assert [it.id for it in data.items] == ["d1"] and len(data.invalid) == 1
    assert re.search(pattern, str(data.invalid[0][1]))


def test_broken_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_mmdu(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: cannot be read as JSON"):
        read_mmdu(tmp_path / "bad.json")
    (tmp_path / "num.json").write_text("3")
    with pytest.raises(DataError, match="expected a list"):
        read_mmdu(tmp_path / "num.json")
    dup = _two_dialogues()
    dup[1]["id"] = "d1"
    with pytest.raises(DataError, match="repeats an earlier item's id"):
        read_mmdu(_bench(tmp_path, dup, "dup.json"), strict=True)


# ---------------------------------------------------------------------- the ShapeWorld writer
def test_shapeworld_mmdu_is_deterministic_and_matches_the_generator(tmp_path):
    a = write_shapeworld_mmdu(tmp_path / "a", 4, 77, size=32, progress=False)
    b = write_shapeworld_mmdu(tmp_path / "b", 4, 77, size=32, progress=False)
    c = write_shapeworld_mmdu(tmp_path / "c", 4, 78, size=32, progress=False)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    names = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "images").iterdir())
    assert all((tmp_path / "a/images" / n).read_bytes() == (tmp_path / "b/images" / n).read_bytes() for n in names)

    data = read_mmdu(a, strict=True)
    assert len(data.items) == 4
    for i, item in enumerate(data.items):
        mis = generate_multi_image(77 + i, config=WorldConfig(size=32))
        assert item.id == f"sw{77 + i:08d}"
        assert [t.answer for t in item.turns] == [t["answer"] for t in mis.turns]
        assert [t.kind for t in item.turns] == [t["kind"] for t in mis.turns]
        assert [t.question.split("\n")[-1] for t in item.turns] == [t["question"] for t in mis.turns]
        first = item.turns[0].question
        assert first.startswith("".join(f"Image{k + 1}: <ImageHere>\n" for k in range(len(mis.images))))
        assert all("<ImageHere>" not in t.question for t in item.turns[1:])
        assert [p.name for p in item.images] == [f"{item.id}_{k + 1}.png" for k in range(len(mis.images))]
        for path, expected in zip(item.images, mis.images):
            np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), expected)


def test_shapeworld_mmdu_resumes_and_refuses_other_settings(tmp_path):
    out = tmp_path / "sw"
    write_shapeworld_mmdu(out, 2, 5, progress=False)
    image = next((out / "images").iterdir())
    before = image.stat().st_mtime_ns
    bench = write_shapeworld_mmdu(out, 3, 5, progress=False)   # extends: old images kept
    assert image.stat().st_mtime_ns == before and len(json.loads(bench.read_text())) == 3
    with pytest.raises(MmlcError, match="other settings"):
        write_shapeworld_mmdu(out, 2, 5, size=32, progress=False)
    with pytest.raises(MmlcError, match="positive integer"):
        write_shapeworld_mmdu(tmp_path / "z", 0, 5, progress=False)


# ---------------------------------------------------------------------- exact scorer
def _write_predictions(out: Path, answers: dict[str, list[str]], items) -> None:
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for item in items:
        conv = []
        for turn, ans in zip(item["conversations"][0::2], answers[item["id"]]):
            conv += [turn, {"from": "assistant", "value": ans}]
        (out / "predictions" / f"{item['id']}.json").write_text(json.dumps(
            {"id": item["id"], "conversations": conv, "complete": True}))


@pytest.mark.parametrize("answers, accuracy, by_kind", [
    ({"d1": ["image 1.", "image 2."], "d2": ["gray."]}, 1.0, {"compare": 1.0, "followup": 1.0, "single": 1.0}),
    ({"d1": ["", ""], "d2": [""]}, 0.0, {"compare": 0.0, "followup": 0.0, "single": 0.0}),
    # normalisation: case, punctuation and articles do not matter; a wrong answer is wrong
    ({"d1": ["The Image 1", "image 3."], "d2": [" GRAY! "]}, 0.6667, {"compare": 1.0, "followup": 0.0, "single": 1.0}),
])
def test_exact_scorer_on_hand_made_predictions(tmp_path, answers, accuracy, by_kind):
    items = _two_dialogues()
    path = _bench(tmp_path, items)
    _write_predictions(tmp_path / "out", answers, items)
    res = E.run_mmdu(None, path, output_dir=tmp_path / "out", mode="eval", scorer="exact", progress=False)
    assert res["scores"]["all"]["accuracy"] == accuracy
    assert {k: v["accuracy"] for k, v in res["scores"]["by_kind"].items()} == by_kind
    assert res["n_turns"] == 3 and res["n_dialogues"] == 2
    assert json.loads((tmp_path / "out" / "results.json").read_text())["scores"] == res["scores"]


def test_eval_without_predictions_is_an_error(tmp_path):
    path = _bench(tmp_path, _two_dialogues())
    with pytest.raises(DataError, match="no finished predictions.*--mode infer"):
        E.run_mmdu(None, path, output_dir=tmp_path / "out", mode="eval", scorer="exact", progress=False)


# ---------------------------------------------------------------------- judge: parsing and aggregation
def test_parse_scores_is_safe_and_tolerant():
    full = {d: i + 1 for i, d in enumerate(DIMS)}
    text = "I looked at {the images}. Creativity: 2 ...\n" + json.dumps(full)
    assert parse_scores(text) == ({d: float(v) for d, v in full.items()}, None)
    single = "blah {'Creativity': 9, 'Richness': 6, 'Visual Perception': 7, 'Logical Coherence': 8, " \
             "'Answer Accuracy': 5, 'Image Relationship Understanding': 4, 'Overall Score': 7}."
    scores, why = parse_scores(single)
    assert why is None and scores["Creativity"] == 9 and scores["Overall Score"] == 7
    assert parse_scores("no dict here")[0] is None
    assert "lacks scores for" in parse_scores("{'Creativity': 9}")[1]
    assert "outside 0-10" in parse_scores(json.dumps(full | {"Richness": 42}))[1]
    assert parse_scores("{'Creativity': __import__('os').system('echo hi')}")[0] is None
    assert last_braces("a {x} b {y}") == "{y}"


def test_aggregation_all_vs_valid_by_hand(tmp_path):
    items = _two_dialogues()
    path = _bench(tmp_path, items)
    out = tmp_path / "out"
    _write_predictions(out, {"d1": ["x", "y"], "d2": ["z"]}, items)
    (out / "judgements").mkdir()
    ok = lambda s: {"status": "ok", "scores": {d: s for d in DIMS}}  # noqa: E731
    (out / "judgements" / "d1.json").write_text(json.dumps({"id": "d1", "turns": {"0": ok(8), "1": ok(6)}}))
    (out / "judgements" / "d2.json").write_text(json.dumps(
        {"id": "d2", "turns": {"0": {"status": "unparsed", "scores": None, "reply": "???"}}}))
    res = E.collect_results(read_mmdu(path), out)
    assert res["n_turns"] == 3 and res["n_valid"] == 2 and res["n_failed"] == 1
    for d in DIMS:
        assert res["scores"]["all"][d] == pytest.approx((8 + 6) / 3 * 10, abs=1e-4)
        assert res["scores"]["valid"][d] == pytest.approx(70.0)


# ---------------------------------------------------------------------- a real local judge server
def _section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def expected_scores(question: str, answer: str) -> dict:
    base = len(question) + 3 * len(answer)
    return {d: 1 + (base + i) % 10 for i, d in enumerate(DIMS)}


def mmdu_judge(server, headers, body):
    """Scores derived from the request. Questions containing GARBAGE get a reply without scores; FLAKY
    answers 500 on its first attempt; DOWN always answers 503. A wrong key gets 401."""
    if headers.get("Authorization") != "Bearer test-key":
        return 401, {"error": {"message": "bad key"}}
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[0]["text"]
    question = _section(text, "[Question]\n", "\n\n[The Start of Reference Answer]")
    answer = _section(text, "[The Start of Assistant\u2019s Answer]\n", "\n[The End of Assistant")
    with server.lock:
        n = server.seen[question] = server.seen.get(question, 0) + 1
    if "DOWN" in question:
        return 503, {"error": {"message": "overloaded"}}
    if "FLAKY" in question and n == 1:
        return 500, {"error": {"message": "try again"}}
    if "GARBAGE" in question:
        return "The answer is fine {but I will not give numbers}"
    scores = expected_scores(question, answer)
    return "Creativity: the answer {is short}. ... Final: {" + ", ".join(f"'{d}': {v}" for d, v in scores.items()) + "}"


@pytest.fixture()
def judge_server(chat_server):
    """A real local judge (tests/conftest.py ChatServer) answering like an MMDU judge."""
    server = chat_server(mmdu_judge)
    server.seen = {}
    server.client = lambda key="test-key", **kw: JudgeClient(
        base_url=server.url, model="judge-x", api_key=key, retries=kw.pop("retries", 2), backoff=0.01, timeout=10, **kw)
    return server


def test_judge_client_retries_and_errors(judge_server):
    client = judge_server.client()
    text, attempts = client.complete(mmdu := E.mmdu_prompt("FLAKY q", "ref", "ans"))
    assert attempts == 2
    assert parse_scores(text)[0] == {d: float(v) for d, v in expected_scores("FLAKY q", "ans").items()}
    with pytest.raises(JudgeError, match=r"after 3 attempts .*HTTP 503") as info:
        client.complete(mmdu.replace("FLAKY", "DOWN"))
    assert info.value.attempts == 3
    with pytest.raises(JudgeFatalError, match="HTTP 401"):
        judge_server.client(key="wrong").complete(mmdu)
    payload = client.payload("hi", images=[])
    assert payload["messages"][-1]["content"] == "hi" and payload["model"] == "judge-x"


def test_judge_end_to_end(tmp_path, judge_server, chat_model):
    items = [
        _item("d1", ["Image1: <ImageHere>\nImage2: <ImageHere>\nwhat differs?", "FLAKY and then?"],
              ["the colour.", "nothing."], ["img/a.png", "img/b.png"]),
        _item("d2", ["<ImageHere> GARBAGE describe it", "DOWN why?", "and now?"], ["red.", "because.", "ok."],
              ["img/c.png"]),
    ]
    path = _bench(tmp_path, items)
    out = tmp_path / "out"
    res = E.run_mmdu(chat_model, path, output_dir=out, judge=judge_server.client(), judge_concurrency=3,
                     max_reply_tokens=4, model_name="tiny-test", progress=False)
    preds = {i["id"]: json.loads((out / "predictions" / f"{i['id']}.json").read_text()) for i in items}
    answers = {k: [t["value"] for t in p["conversations"][1::2]] for k, p in preds.items()}
    assert all(p["complete"] for p in preds.values()) and [len(a) for a in answers.values()] == [2, 3]
    assert all(r["auth"] == "Bearer test-key" for r in judge_server.requests)
    # 5 turns: d2/0 unparsed, d2/1 failed after retries (both count 0 in "all"); the FLAKY turn was retried
    assert res["n_turns"] == 5 and res["n_valid"] == 3 and res["n_failed"] == 2
    assert res["n_unparsed"] == 1 and res["n_judge_errors"] == 1
    valid = [("Image1: <ImageHere>\nImage2: <ImageHere>\nwhat differs?", answers["d1"][0]),
             ("FLAKY and then?", answers["d1"][1]), ("and now?", answers["d2"][2])]
    for d in DIMS:
        total = sum(expected_scores(q, a)[d] for q, a in valid)
        assert res["scores"]["all"][d] == round(total / 5 * 10, 4)
        assert res["scores"]["valid"][d] == round(total / 3 * 10, 4)
    judged = json.loads((out / "judgements" / "d1.json").read_text())["turns"]
    assert judged["1"]["attempts"] == 2 and judged["1"]["status"] == "ok"
    d2 = json.loads((out / "judgements" / "d2.json").read_text())["turns"]
    assert d2["0"]["status"] == "unparsed" and "lacks scores" in d2["0"]["error"]
    assert d2["1"]["status"] == "error" and "503" in d2["1"]["error"]
    assert json.loads((out / "results.json").read_text())["config"]["judge"]["model"] == "judge-x"
    assert "test-key" not in (out / "results.json").read_text()

    # rerun: nothing regenerated; only the failed request is asked again (the unparsed one is final)
    n_before = len(judge_server.requests)
    res2 = E.run_mmdu(None, path, output_dir=out, mode="eval", judge=judge_server.client(), progress=False)
    new = judge_server.requests[n_before:]
    assert len(new) == 3 and all("DOWN why?" in r["body"]["messages"][-1]["content"] for r in new)
    assert res2["scores"] == res["scores"]
    # a prediction that changed is judged again (the judgement is keyed by what the judge was asked)
    pred = json.loads((out / "predictions" / "d1.json").read_text())
    pred["conversations"][1]["value"] = "a different answer"
    (out / "predictions" / "d1.json").write_text(json.dumps(pred))
    n_before = len(judge_server.requests)
    E.run_mmdu(None, path, output_dir=out, mode="eval", judge=judge_server.client(retries=0), progress=False)
    new = [r["body"]["messages"][-1]["content"] for r in judge_server.requests[n_before:]]
    assert len(new) == 2 and sum("a different answer" in c for c in new) == 1   # + the DOWN turn, once

    # --judge-images: every image of the dialogue goes with every turn, as data URLs
    out2 = tmp_path / "out2"
    shutil.copytree(out / "predictions", out2 / "predictions")
    n_before = len(judge_server.requests)
    E.run_mmdu(None, path, output_dir=out2, mode="eval", judge=judge_server.client(), judge_images=True,
               progress=False)
    for r in judge_server.requests[n_before:]:
        content = r["body"]["messages"][-1]["content"]
        n_images = 2 if "what differs" in content[0]["text"] or "FLAKY" in content[0]["text"] else 1
        urls = [p["image_url"]["url"] for p in content[1:]]
        assert len(urls) == n_images and all(u.startswith("data:image/png;base64,") for u in urls)


def test_bad_judge_key_stops_the_run(tmp_path, judge_server, chat_model):
    path = _bench(tmp_path, _two_dialogues())
    with pytest.raises(JudgeFatalError, match="401"):
        E.run_mmdu(chat_model, path, output_dir=tmp_path / "out", judge=judge_server.client(key="nope"),
                   max_reply_tokens=2, progress=False)


# ---------------------------------------------------------------------- resume
@pytest.fixture()
def sw_bench(tmp_path):
    return write_shapeworld_mmdu(tmp_path / "sw", 4, 1234, size=32, progress=False)


@pytest.fixture()
def count_sends(monkeypatch):
    calls = {"n": 0, "fail_at": None, "chats": 0}
    original, init = ChatSession.send, ChatSession.__init__

    def new_chat(self, *args, **kwargs):
        calls["chats"] += 1
        init(self, *args, **kwargs)

    def send(self, text, images=None):
        calls["n"] += 1
        if calls["fail_at"] is not None and calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt("killed")
        return original(self, text, images=images)

    monkeypatch.setattr(ChatSession, "send", send)
    monkeypatch.setattr(ChatSession, "__init__", new_chat)
    return calls


def test_resume_skips_finished_dialogues_and_turns(tmp_path, sw_bench, chat_model, count_sends):
    data = read_mmdu(sw_bench)
    turns = [len(it.turns) for it in data.items]
    out = tmp_path / "out"
    kw = dict(output_dir=out, mode="infer", max_reply_tokens=3, model_name="tiny-test", progress=False)
    res = E.run_mmdu(chat_model, sw_bench, limit=2, **kw)
    assert count_sends["n"] == turns[0] + turns[1] and res["n_complete"] == 2
    first = out / "predictions" / f"{data.items[0].id}.json"
    stamp = first.stat().st_mtime_ns
    count_sends.update(n=0, chats=0)
    res = E.run_mmdu(chat_model, sw_bench, **kw)
    assert count_sends["n"] == turns[2] + turns[3] and res["n_complete"] == 4
    assert count_sends["chats"] == 2     # finished dialogues are not even opened
    assert first.stat().st_mtime_ns == stamp

    # killed in the middle of the third turn of dialogue 2: its two saved turns are kept, the rest resumes
    out2 = tmp_path / "out2"
    kw["output_dir"] = out2
    count_sends.update(n=0, fail_at=turns[0] + 3)
    with pytest.raises(KeyboardInterrupt):
        E.run_mmdu(chat_model, sw_bench, **kw)
    partial = json.loads((out2 / "predictions" / f"{data.items[1].id}.json").read_text())
    assert partial["complete"] is False and len(partial["conversations"]) == 4
    count_sends.update(n=0, fail_at=None)
    res = E.run_mmdu(chat_model, sw_bench, **kw)
    assert count_sends["n"] == sum(turns) - turns[0] - 2 and res["n_complete"] == 4
    done = json.loads((out2 / "predictions" / f"{data.items[1].id}.json").read_text())
    assert done["complete"] and done["conversations"][:4] == partial["conversations"]
    assert len(done["conversations"]) == 2 * turns[1]
    assert [t["value"] for t in done["conversations"][0::2]] == [t.question for t in data.items[1].turns]
    # the saved turns were replayed token for token: the resumed run answers as the uninterrupted one did
    for item in data.items:
        name = f"{item.id}.json"
        resumed, straight = (json.loads((o / "predictions" / name).read_text()) for o in (out2, out))
        assert resumed == straight

    # another model's predictions in the same folder are refused
    with pytest.raises(ConfigError, match="holds answers of model 'tiny-test'"):
        E.run_mmdu(chat_model, sw_bench, **(kw | {"model_name": "other"}))


def test_unreadable_image_fails_that_dialogue_only(tmp_path, chat_model):
    items = _two_dialogues()
    path = _bench(tmp_path, items)
    (tmp_path / "img" / "c.png").write_text("not a png")
    res = E.run_mmdu(chat_model, path, output_dir=tmp_path / "out", scorer="exact", max_reply_tokens=2,
                     progress=False)
    assert res["n_dialogues"] == 1 and res["n_turns"] == 2
    assert res["skipped"][0]["id"] == "d2" and "c.png" in res["skipped"][0]["error"]


# ---------------------------------------------------------------------- sharding
def test_sharded_run_equals_single_process(tmp_path, sw_bench, chat_model, judge_server):
    data = read_mmdu(sw_bench)
    kw = dict(max_reply_tokens=3, model_name="tiny-test", progress=False, judge=judge_server.client())
    single = E.run_mmdu(chat_model, sw_bench, output_dir=tmp_path / "single", **kw)
    n_single = len(judge_server.requests)
    assert single["n_turns"] == sum(len(it.turns) for it in data.items) and single["n_valid"] == single["n_turns"]

    shared = tmp_path / "shared"
    for index in (1, 0):
        assert E.run_mmdu(chat_model, sw_bench, output_dir=shared, shard=(index, 2), merge=False, **kw) == {}
        mine = sorted(p.stem for p in (shared / "predictions").iterdir())
        if index == 1:
            assert mine == [data.items[1].id, data.items[3].id]
    assert len(judge_server.requests) == 2 * n_single   # every turn judged once across the two shares
    merged = E.run_mmdu(None, sw_bench, output_dir=shared, mode="eval", **kw)
    assert len(judge_server.requests) == 2 * n_single   # merging judges nothing again
    for key in ("scores", "n_turns", "n_valid", "n_failed", "n_dialogues"):
        assert merged[key] == single[key]

    exact_single = E.run_mmdu(None, sw_bench, output_dir=tmp_path / "single", mode="eval", scorer="exact",
                              progress=False)
    exact_merged = E.collect_results(data, shared, scorer="exact")
    assert exact_merged["scores"] == exact_single["scores"]
    assert E.shard_items(list(range(7)), 1, 3) == [1, 4]


# ---------------------------------------------------------------------- command line
def _args(*argv):
    parser = E.add_mmdu_args(argparse.ArgumentParser())
    return parser.parse_args(list(argv))


def test_cli_flags_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = _bench(tmp_path, _two_dialogues())
    out = str(tmp_path / "out")
    args = _args("--data", str(path), "--output-dir", out, "--judge-images")
    assert args.judge_images is True and _args("--no-judge-images").judge_images is False
    assert args.mode == "all" and args.scorer == "judge" and args.judge_concurrency == 4
    with pytest.raises(ConfigError, match="--data FILE"):
        E.cmd_mmdu(_args("--output-dir", out))
    with pytest.raises(ConfigError, match="--output-dir"):
        E.cmd_mmdu(_args("--data", str(path)))
    with pytest.raises(DataError, match="nope.json: MMDU data file not found"):
        E.cmd_mmdu(_args("--data", str(tmp_path / "nope.json"), "--output-dir", out, "--scorer", "exact"))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        E.cmd_mmdu(_args("--data", str(path), "--output-dir", out))
    with pytest.raises(ConfigError, match="--judge-concurrency 0"):
        E.cmd_mmdu(_args("--data", str(path), "--output-dir", out, "--judge-concurrency", "0"))
    with pytest.raises(ConfigError, match="--limit 0"):
        E.cmd_mmdu(_args("--data", str(path), "--output-dir", out, "--limit", "0"))
    with pytest.raises(ConfigError, match="not an http"):
        E.cmd_mmdu(_args("--data", str(path), "--output-dir", out, "--judge-base-url", "localhost:8000"))
    with pytest.raises(ConfigError, match="--judge-prompt"):
        E.cmd_mmdu(_args("--data", str(path), "--output-dir", out, "--judge-base-url", "http://127.0.0.1:9/v1",
                         "--judge-prompt", str(tmp_path / "none.txt")))
    with pytest.raises(MmlcError):
        E.run_mmdu(None, path, output_dir=out, mode="bogus")
    # a whole run through the command: prints the results JSON
    assert E.cmd_mmdu(_args("--data", str(path), "--output-dir", out, "--scorer", "exact", "--model", "tiny-test",
                            "--init", "random", "--max-reply-tokens", "2", "--limit", "1", "--no-progress")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_dialogues"] == 1 and printed["config"]["model"] == "tiny-test (random init)"
    assert printed["config"]["limit"] == 1 and "accuracy" in printed["scores"]["all"]
