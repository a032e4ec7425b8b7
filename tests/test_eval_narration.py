"""`mmlc eval narration`: the loop over real episode files, its report, resume, and bad data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmlc.data.writer import write_shapeworld
from mmlc.errors import DataError, MmlcError
from mmlc.evals import narration


@pytest.fixture()
def episodes(tmp_path):
    write_shapeworld(tmp_path / "eps", 2, 7, duration=12.0, progress=False)
    return tmp_path / "eps"


def test_eval_on_folder_and_resume(tiny_model, episodes, tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    report = narration.run_narration_eval(tiny_model, str(episodes), json_out=str(out), progress=False)
    summary = report["summary"]
    assert summary["episodes"] == 2 and summary["errors"] == 0
    assert summary["narration"]["n_ref"] == sum(len(json.loads(p.read_text())["narration"])
                                                for p in episodes.glob("*.json"))
    assert 0.0 <= summary["narration"]["f1"] <= 1.0
    assert summary["lm_ppl"] > 1.0 and 0.0 <= summary["lm_correctness"] <= 1.0
    assert summary["fluency"] is None or 0.0 <= summary["fluency"] <= 1.0
    for ep in report["episodes"]:
        assert ep["frames"] == 24  # 12 s at 2 fps
        assert len(ep["answers"]) == ep["qa"]["n"]
    assert json.loads(out.read_text())["config"]["data"] == str(episodes)

    # a rerun resumes: finished episodes are read back, not evaluated again
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished episode was evaluated again")

    monkeypatch.setattr(narration, "evaluate_episode", must_not_run)
    again = narration.run_narration_eval(tiny_model, str(episodes), json_out=str(out), progress=False)
    assert again["summary"] == summary

    # ... but not with other weights or settings: their episodes are not mixed in
    with torch.no_grad():
        next(tiny_model.lm.parameters()).add_(1e-3)
    with pytest.raises(MmlcError, match="weights differ.*delete the file"):
        narration.run_narration_eval(tiny_model, str(episodes), json_out=str(out), progress=False)
    with pytest.raises(MmlcError, match="threshold, weights differ"):
        narration.run_narration_eval(tiny_model, str(episodes), json_out=str(out), progress=False, threshold=0.3)


def test_teacher_forced_metrics_are_consistent(tiny_model):
    (ep,) = list(narration.shapeworld_episodes(1, duration=10.0))
    tf = narration.teacher_forced(tiny_model, ep.truth, ep.frames, 20, threshold=0.725)
    assert tf["n_tokens"] > 0 and tf["n_replies"] == len(ep.truth["narration"])
    assert math.isclose(tf["lm_ppl"], math.exp(-tf["sum_logprob"] / tf["n_tokens"]), rel_tol=1e-6)
    assert tf["lm_correctness"] == tf["n_correct"] / tf["n_tokens"]


def test_bad_data(tmp_path, episodes):
    with pytest.raises(MmlcError, match="positive integer"):
        narration.resolve_data("shapeworld:-3")
    with pytest.raises(DataError, match="does not exist"):
        narration.resolve_data(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no episode .json"):
        narration.resolve_data(str(empty))
    first = sorted(episodes.glob("*.json"))[0]
    data = json.loads(first.read_text())
    data["narration"].append({"t": 99.0, "text": "the red circle leaves."})
    first.write_text(json.dumps(data))
    with pytest.raises(DataError, match="lasts"):
        narration.resolve_data(str(episodes))
    del data["qa"]
    first.write_text(json.dumps(data))
    with pytest.raises(DataError, match="qa"):
        narration.resolve_data(str(episodes))
