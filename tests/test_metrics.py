"""Hand-made cases with known answers for mmlc.evals.metrics."""

from __future__ import annotations

import math
import random

import pytest

from mmlc.evals.metrics import (
    fluency,
    lm_correctness,
    lm_ppl,
    match_narration,
    normalize_text,
    qa_accuracy,
    response_frames,
    time_diff,
)


def ev(t, text):
    return {"t": t, "text": text}


REFS = [ev(1.0, "The red square moves left"), ev(3.0, "The blue circle appears"), ev(5.0, "A green triangle stops")]


# ---------------------------------------------------------------- normalize_text


def test_normalize_text():
    assert normalize_text("  The RED square, moves-left!!  ") == "the red square movesleft"
    assert normalize_text("It's\tred.\n") == "its red"
    assert normalize_text("Cube 3 is  BIG") == "cube 3 is big"
    assert normalize_text("...") == ""


# ---------------------------------------------------------------- match_narration


def test_narration_perfect():
    m = match_narration(REFS, REFS)
    assert (m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0)
    assert (m.n_pred, m.n_ref, m.n_match) == (3, 3, 3)
    assert m.mean_abs_dt == 0.0
    assert m.pairs == [(0, 0), (1, 1), (2, 2)]


def test_narration_empty_predictions():
    m = match_narration([], REFS)
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)
    assert m.n_match == 0 and m.mean_abs_dt is None and m.pairs == []


def test_narration_no_references():
    m = match_narration(REFS, [])
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)


def test_narration_both_empty():
    m = match_narration([], [])
    assert (m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0)
    assert m.mean_abs_dt is None


def test_narration_shift_within_tolerance():
    preds = [ev(e["t"] + 0.5, e["text"]) for e in REFS]
    m = match_narration(preds, REFS, tolerance=1.0)
    assert m.f1 == 1.0
    assert m.mean_abs_dt == pytest.approx(0.5)


def test_narration_tolerance_is_inclusive():
    m = match_narration([ev(1.1, "a")], [ev(0.1, "a")], tolerance=1.0)  # |dt| is 1.0000000000000002
    assert m.n_match == 1


def test_narration_shift_beyond_tolerance():
    preds = [ev(e["t"] + 1.5, e["text"]) for e in REFS]
    m = match_narration(preds, REFS, tolerance=1.0)
    assert m.n_match == 0 and m.f1 == 0.0 and m.mean_abs_dt is None


def test_narration_duplicate_prediction_matches_once():
    preds = [ev(1.0, "The red square moves left"), ev(1.2, "the red square moves left")]
    m = match_narration(preds, REFS[:1])
    assert m.n_match == 1 and m.pairs == [(0, 0)]
    assert m.precision == 0.5 and m.recall == 1.0
    assert m.f1 == pytest.approx(2 / 3)


def test_narration_case_and_punctuation():
    preds = [ev(1.0, "the RED square moves left."), ev(3.0, "The blue circle, appears!")]
    m = match_narration(preds, REFS)
    assert m.n_match == 2
    assert m.recall == pytest.approx(2 / 3) and m.precision == 1.0


def test_narration_text_must_match():
    m = match_narration([ev(1.0, "the red square moves right")], REFS)
    assert m.n_match == 0


def test_narration_greedy_would_be_suboptimal():
    # Nearest-first greedy pairs pred 1.0 with ref 1.1 (dt 0.1), leaving pred 2.05 with only
    # ref 0.1 (dt 1.95 > 1): 1 match. The maximum is 2: (1.0, 0.1) and (2.05, 1.1).
    preds = [ev(1.0, "x"), ev(2.05, "x")]
    refs = [ev(0.1, "x"), ev(1.1, "x")]
    m = match_narration(preds, refs, tolerance=1.0)
    assert m.n_match == 2
    assert sorted(m.pairs) == [(0, 0), (1, 1)]
    assert m.mean_abs_dt == pytest.approx((0.9 + 0.95) / 2)


def test_narration_prefers_small_dt_among_maximum_matchings():
    # Earliest-first greedy would pair 1.0 with 0.1 (dt 0.9); the better single match is 1.0-1.0.
    m = match_narration([ev(1.0, "x")], [ev(0.1, "x"), ev(1.0, "x")])
    assert m.n_match == 1 and m.pairs == [(0, 1)] and m.mean_abs_dt == 0.0


def test_narration_unsorted_input_indices():
    preds = [ev(5.0, "c"), ev(1.0, "a")]
    refs = [ev(1.2, "a"), ev(4.9, "c")]
    m = match_narration(preds, refs)
    assert m.pairs == [(0, 1), (1, 0)]
    assert m.mean_abs_dt == pytest.approx(0.15)


def _brute_force(preds, refs, tol):
    """Max matches, then min total dt, by trying every matching (tiny inputs only)."""

    def best(i, free):
        if i == len(preds):
            return (0, 0.0)
        out = best(i + 1, free)  # pred i unmatched
        for j in free:
            dt = abs(preds[i] - refs[j])
            if dt <= tol + 1e-9:
                k, c = best(i + 1, free - {j})
                out = max(out, (k + 1, c - dt))
        return out

    return best(0, frozenset(range(len(refs))))


def test_narration_matches_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        preds = [round(rng.uniform(0, 5), 2) for _ in range(rng.randint(0, 5))]
        refs = [round(rng.uniform(0, 5), 2) for _ in range(rng.randint(0, 5))]
        m = match_narration([ev(t, "x") for t in preds], [ev(t, "x") for t in refs], tolerance=1.0)
        k, neg_cost = _brute_force(preds, refs, 1.0)
        assert m.n_match == k
        if k:
            assert m.mean_abs_dt * k == pytest.approx(-neg_cost)
        assert len({i for i, _ in m.pairs}) == len({j for _, j in m.pairs}) == k
        assert all(abs(preds[i] - refs[j]) <= 1.0 + 1e-9 for i, j in m.pairs)


def test_narration_bad_input():
    with pytest.raises(ValueError):
        match_narration([{"text": "no time"}], REFS)
    with pytest.raises(ValueError):
        match_narration(REFS, REFS, tolerance=-1)


# ---------------------------------------------------------------- qa_accuracy


def test_qa_accuracy_by_kind():
    preds = ["Red", "two", "left.", "circle"]
    answers = ["red", "3", "Left", "square"]
    kinds = ["color", "count", "direction", "shape"]
    out = qa_accuracy(preds, answers, kinds)
    assert out["n"] == 4 and out["correct"] == 2 and out["accuracy"] == 0.5
    assert out["by_kind"]["color"] == {"accuracy": 1.0, "n": 1, "correct": 1}
    assert out["by_kind"]["count"] == {"accuracy": 0.0, "n": 1, "correct": 0}

    out = qa_accuracy(["red", "blue", "3"], ["red", "red", "3"], ["color", "color", "count"])
    assert out["by_kind"] == {
        "color": {"accuracy": 0.5, "n": 2, "correct": 1},
        "count": {"accuracy": 1.0, "n": 1, "correct": 1},
    }


def test_qa_accuracy_edges():
    assert qa_accuracy(["a"], ["A"])["by_kind"] == {}
    assert math.isnan(qa_accuracy([], [])["accuracy"])
    with pytest.raises(ValueError):
        qa_accuracy(["a"], [])
    with pytest.raises(ValueError):
        qa_accuracy(["a"], ["a"], [])


# ---------------------------------------------------------------- lm_ppl / lm_correctness


def test_lm_ppl():
    assert lm_ppl([math.log(0.5)] * 7) == pytest.approx(2.0)
    assert lm_ppl([0.0, 0.0]) == 1.0
    assert lm_ppl([math.log(0.5), math.log(0.125)]) == pytest.approx(4.0)  # exp(-(mean)) = 2^2
    assert math.isnan(lm_ppl([]))
    assert lm_ppl([-1e6]) == math.inf


def test_lm_correctness():
    assert lm_correctness([True, False, True, True]) == 0.75
    assert lm_correctness([True]) == 1.0
    assert math.isnan(lm_correctness([]))


# ---------------------------------------------------------------- time_diff


def _speak_at(n, frames, high=0.9, low=0.1):
    return [high if k in frames else low for k in range(n)]


def test_time_diff_perfect():
    probs = _speak_at(12, {2, 6, 10})
    assert response_frames(probs, [2, 6, 10], threshold=0.5) == [2, 6, 10]
    assert time_diff(probs, [10, 2, 6], fps=2.0, threshold=0.5) == 0.0


def test_time_diff_late_by_two_frames():
    probs = _speak_at(12, {4})  # reply at frame 2, model speaks at frame 4
    assert time_diff(probs, [2], fps=2.0, threshold=0.5) == pytest.approx(1.0)


def test_time_diff_early():
    probs = _speak_at(12, {1, 6})  # replies at 3 and 6; first spoken one at frame 1 (early by 2)
    assert response_frames(probs, [3, 6], threshold=0.5) == [1, 6]
    assert time_diff(probs, [3, 6], fps=1.0, threshold=0.5) == pytest.approx(1.0)


def test_time_diff_never_speaks_uses_window_end():
    probs = _speak_at(12, set())
    # windows: reply 2 -> [0, 5], reply 6 -> [3, 9], reply 10 -> [7, 11]
    assert response_frames(probs, [2, 6, 10], threshold=0.5) == [5, 9, 11]
    assert time_diff(probs, [2, 6, 10], fps=1.0, threshold=0.5) == pytest.approx((3 + 3 + 1) / 3)


def test_time_diff_threshold():
    probs = [0.0, 0.3, 0.0, 0.0]  # P(interval) at frame 1 is 0.7
    assert time_diff(probs, [1], fps=1.0, threshold=0.5) == 2.0  # never speaks -> frame 3
    assert time_diff(probs, [1], fps=1.0, threshold=0.8) == 0.0  # 0.7 < 0.8 -> speaks at 1


def test_time_diff_edges():
    assert math.isnan(time_diff([0.1, 0.9], [], fps=2.0, threshold=0.5))
    with pytest.raises(ValueError):
        time_diff([0.1, 0.9], [2], fps=2.0, threshold=0.5)
    with pytest.raises(ValueError):
        time_diff([0.1, 0.9], [1, 1], fps=2.0, threshold=0.5)
    with pytest.raises(ValueError):
        time_diff([0.1, 0.9], [1], fps=0.0, threshold=0.5)


# ---------------------------------------------------------------- fluency


def test_fluency():
    assert fluency([[True, True, True, True]]) == 1.0
    # first error at index 2 of 4 -> 0.5; first error at 0 -> 0; all right -> 1
    assert fluency([[True, True, False, True], [False, True], [True]]) == pytest.approx(0.5)
    assert math.isnan(fluency([]))
    with pytest.raises(ValueError):
        fluency([[True], []])
