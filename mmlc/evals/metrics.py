"""Evaluation metrics for streaming narration and question answering.

All functions are pure: they take plain Python / numpy data and return numbers, so the evaluation
loop (which runs the model) stays separate from the arithmetic here.

Two families:

* Free-running metrics, over what the model actually said while streaming: :func:`match_narration`
  (timed text matching against ShapeWorld ground truth) and :func:`qa_accuracy`.
* Teacher-forced metrics of the LIVE recipe (VideoLLM-online, Chen et al., CVPR 2024, Sec. 5),
  over arrays computed from one forward pass on the reference stream: :func:`lm_ppl`,
  :func:`lm_correctness`, :func:`time_diff` and :func:`fluency`. The exact definitions used here
  are stated in each docstring; where they differ from the public reference implementation
  (``models/modeling_live.py::stream_evaluate`` in showlab/videollm-online) the docstring says so.

Empty inputs give ``nan`` (there is nothing to average), except in :func:`match_narration`, whose
ratios have documented 0/0 conventions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "NarrationMatch",
    "normalize_text",
    "match_narration",
    "qa_accuracy",
    "lm_ppl",
    "lm_correctness",
    "response_frames",
    "time_diff",
    "fluency",
]

# Slack on the time tolerance so that e.g. |1.1 - 0.1| (= 1.0000000000000002) counts as 1.0.
_TIME_EPS = 1e-9


def normalize_text(text: str) -> str:
    """Normalise text for exact-match comparison.

    Lowercase; delete every character that is neither a letter, a digit nor whitespace (so
    ``"It's red."`` -> ``"its red"``); collapse runs of whitespace to one space; strip the ends.
    Letters and digits are Unicode-aware (``str.isalnum``).
    """
    kept = "".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace())
    return " ".join(kept.split())


# --------------------------------------------------------------------------------------------
# Narration matching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NarrationMatch:
    """Result of :func:`match_narration`.

    ``pairs`` holds ``(prediction_index, reference_index)`` into the lists as given (not sorted),
    ordered by prediction index. ``mean_abs_dt`` is the mean of ``|t_pred - t_ref|`` in seconds
    over the matched pairs, ``None`` when nothing matched.
    """

    precision: float
    recall: float
    f1: float
    n_pred: int
    n_ref: int
    n_match: int
    mean_abs_dt: float | None
    pairs: list[tuple[int, int]] = field(default_factory=list)


def _read_events(events: Sequence[Mapping], name: str) -> list[tuple[float, str]]:
    out = []
    for i, ev in enumerate(events):
        try:
            t, text = float(ev["t"]), ev["text"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{name}[{i}] must be a dict with a numeric 't' and a 'text': {ev!r}") from exc
        if not math.isfinite(t):
            raise ValueError(f"{name}[{i}] has a non-finite time {t!r}")
        out.append((t, normalize_text(str(text))))
    return out


def _match_on_line(
    pred: list[tuple[float, int]], ref: list[tuple[float, int]], tolerance: float
) -> list[tuple[int, int, float]]:
    """Max-cardinality, then min-total-|dt| matching of two sorted point sets on the time line.

    ``pred``/``ref`` are ``(t, original_index)`` sorted by ``t``; an edge joins points within
    ``tolerance``. Returns ``(pred_index, ref_index, abs_dt)`` triples.

    Why an order-preserving DP is exact: take an optimal matching with a crossing, i.e. pairs
    (p1, r2), (p2, r1) with p1 <= p2 and r1 <= r2. Uncrossing to (p1, r1), (p2, r2) keeps both
    edges valid (p1 - r1 <= p2 - r1 <= tol and r1 - p1 <= r2 - p1 <= tol; likewise for (p2, r2))
    and does not increase |p1-r1| + |p2-r2| (the classic fact that sorted order minimises the
    L1 assignment cost of points on a line). Each uncrossing removes an inversion, so some
    optimal matching is order-preserving, and the longest-common-subsequence style DP below,
    which searches exactly the order-preserving matchings, finds one. Cost O(len(pred) *
    len(ref)). (Greedy by smallest |dt| is *not* optimal: preds 1.0, 2.05 and refs 0.1, 1.1 at
    tol 1 give 1 match greedily, 2 optimally.)
    """
    n, m = len(pred), len(ref)
    # best[i][j] = (matches, -total_dt) over pred[:i], ref[:j]; compared lexicographically.
    best = [[(0, 0.0)] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        pt = pred[i - 1][0]
        row, prev = best[i], best[i - 1]
        for j in range(1, m + 1):
            cand = max(prev[j], row[j - 1])
            dt = abs(pt - ref[j - 1][0])
            if dt <= tolerance + _TIME_EPS:
                k, c = prev[j - 1]
                cand = max(cand, (k + 1, c - dt))
            row[j] = cand
    # Trace back one optimal path.
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if best[i][j] == best[i - 1][j]:
            i -= 1
        elif best[i][j] == best[i][j - 1]:
            j -= 1
        else:
            pairs.append((pred[i - 1][1], ref[j - 1][1], abs(pred[i - 1][0] - ref[j - 1][0])))
            i, j = i - 1, j - 1
    return pairs


def match_narration(
    predictions: Sequence[Mapping], references: Sequence[Mapping], tolerance: float = 1.0
) -> NarrationMatch:
    """Match timed narrations one-to-one and score them.

    ``predictions`` and ``references`` are lists of ``{"t": seconds, "text": str}``. A prediction
    may match a reference when ``normalize_text`` makes their texts equal and
    ``|t_pred - t_ref| <= tolerance`` (inclusive, with 1e-9 s slack for float error). Every
    prediction and every reference is used at most once. The matching maximises the number of
    matches and, among maximum matchings, minimises the total ``|dt|`` (exact; see
    :func:`_match_on_line` for the argument). Texts are matched independently per normalised text.

    With ``M`` matches, ``P = M / n_pred``, ``R = M / n_ref``, ``F1 = 2PR / (P + R)``. Conventions:

    * no predictions and no references: ``P = R = F1 = 1.0`` (nothing to say, nothing said);
    * predictions but no references: ``P = 0``, ``R = 0``, ``F1 = 0`` (every prediction is spurious);
    * references but no predictions: ``P = 0``, ``R = 0``, ``F1 = 0`` (staying silent earns nothing);
    * otherwise ``F1 = 0`` when ``P + R = 0``.
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 seconds, got {tolerance!r}")
    pred = _read_events(predictions, "predictions")
    ref = _read_events(references, "references")

    by_text: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for i, (t, text) in enumerate(pred):
        by_text[text][0].append((t, i))
    for j, (t, text) in enumerate(ref):
        by_text[text][1].append((t, j))

    triples = []
    for ps, rs in by_text.values():
        if ps and rs:
            triples += _match_on_line(sorted(ps), sorted(rs), tolerance)
    triples.sort()

    n_pred, n_ref, n_match = len(pred), len(ref), len(triples)
    if n_pred == 0 and n_ref == 0:
        precision = recall = 1.0
    else:
        precision = n_match / n_pred if n_pred else 0.0
        recall = n_match / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    mean_abs_dt = sum(dt for _, _, dt in triples) / n_match if n_match else None
    return NarrationMatch(
        precision=precision,
        recall=recall,
        f1=f1,
        n_pred=n_pred,
        n_ref=n_ref,
        n_match=n_match,
        mean_abs_dt=mean_abs_dt,
        pairs=[(i, j) for i, j, _ in triples],
    )


# --------------------------------------------------------------------------------------------
# Question answering
# --------------------------------------------------------------------------------------------


def qa_accuracy(
    predictions: Sequence[str], answers: Sequence[str], kinds: Sequence[str] | None = None
) -> dict:
    """Exact-match accuracy after :func:`normalize_text`.

    ``accuracy = correct / n`` where ``correct`` counts ``normalize_text(pred) ==
    normalize_text(answer)``. Returns ``{"accuracy", "n", "correct", "by_kind"}``; ``by_kind`` maps
    each question kind to the same three fields over its questions, and is ``{}`` when ``kinds``
    is ``None``. ``accuracy`` is ``nan`` when ``n == 0``. Lengths must agree.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    if kinds is not None and len(kinds) != len(answers):
        raise ValueError(f"{len(kinds)} kinds but {len(answers)} answers")
    hits = [normalize_text(p) == normalize_text(a) for p, a in zip(predictions, answers)]

    def summary(flags: list[bool]) -> dict:
        n, correct = len(flags), sum(flags)
        return {"accuracy": correct / n if n else math.nan, "n": n, "correct": correct}

    out = summary(hits)
    groups: dict[str, list[bool]] = {}
    for kind, hit in zip(kinds or [], hits):
        groups.setdefault(kind, []).append(hit)
    out["by_kind"] = {kind: summary(flags) for kind, flags in sorted(groups.items())}
    return out


# --------------------------------------------------------------------------------------------
# Teacher-forced LIVE metrics
# --------------------------------------------------------------------------------------------


def lm_ppl(token_logprobs: Sequence[float]) -> float:
    """LM-PPL: language-model perplexity of the reference replies under teacher forcing.

    ``LM-PPL = exp(-(1/N) * sum_i log p(y_i | context))`` over all ``N`` reference reply tokens
    ``y_i`` (end-of-turn token included), natural log. Empty -> ``nan``; overflow -> ``inf``.

    Pooled over tokens; the reference implementation instead takes ``exp`` of the mean loss per
    turn and averages the per-turn perplexities (call this per turn and average to get that).
    """
    lp = np.asarray(token_logprobs, dtype=np.float64).ravel()
    if lp.size == 0:
        return math.nan
    try:
        return math.exp(-float(lp.mean()))
    except OverflowError:
        return math.inf


def lm_correctness(correct: Sequence[bool]) -> float:
    """LM-Correctness: fraction of reference reply tokens whose argmax prediction is right.

    ``LM-Correctness = (1/N) * sum_i [argmax_v p(v | context_i) == y_i]`` over all ``N`` reference
    reply tokens under teacher forcing (the caller passes the booleans). Empty -> ``nan``.

    Token accuracy, pooled over tokens. (The reference implementation counts, per turn, only the
    correct tokens before the first error, divided by the turn's reply length, then averages turns.)
    """
    flags = np.asarray(correct, dtype=bool).ravel()
    return float(flags.mean()) if flags.size else math.nan


def response_frames(
    speak_prob: Sequence[float], reply_frames: Sequence[int], threshold: float
) -> list[int]:
    """The frame at which the model responds to each reference reply (the rule behind TimeDiff).

    The model "speaks" after frame ``k`` when ``P(interval) < threshold``, i.e. when
    ``speak_prob[k] > 1 - threshold`` (``speak_prob[k] = 1 - P(interval)`` after frame ``k``,
    teacher-forced). With the reference reply frames sorted, ``r_0 < r_1 < ... < r_{n-1}``, and
    ``K = len(speak_prob)``, reply ``i`` owns the window

        ``W_i = [r_{i-1} + 1, r_{i+1} - 1]``  (with ``r_{-1} + 1 := 0`` and ``r_n - 1 := K - 1``),

    i.e. from just after the previous reply to just before the next one. The response frame is
    the first speaking frame in ``W_i``; if the model never speaks there, the window's last frame
    (the latest the response could still be credited to reply ``i``). Returned in sorted reply
    order. Reply frames must be distinct and within ``[0, K)``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    probs = np.asarray(speak_prob, dtype=np.float64).ravel()
    frames = sorted(int(r) for r in reply_frames)
    k = probs.size
    if frames and (frames[0] < 0 or frames[-1] >= k):
        raise ValueError(f"reply frames must lie in [0, {k}), got {frames[0]}..{frames[-1]}")
    if any(a == b for a, b in zip(frames, frames[1:])):
        raise ValueError(f"reply frames must be distinct, got {frames}")
    speaks = probs > 1.0 - threshold
    out = []
    for i in range(len(frames)):
        start = frames[i - 1] + 1 if i > 0 else 0
        stop = frames[i + 1] if i + 1 < len(frames) else k  # exclusive
        hits = np.flatnonzero(speaks[start:stop])
        out.append(start + int(hits[0]) if hits.size else stop - 1)
    return out


def time_diff(
    speak_prob: Sequence[float], reply_frames: Sequence[int], fps: float, threshold: float
) -> float:
    """TimeDiff: mean absolute timing error of the model's responses, in seconds.

    ``TimeDiff = (1/n) * sum_i |f_i - r_i| / fps``, where ``r_i`` are the sorted reference reply
    frames and ``f_i`` the response frames of :func:`response_frames` (first frame in reply
    ``i``'s window where ``speak_prob > 1 - threshold``; the window's last frame if none).
    Early and late responses count alike; a model that never speaks is charged up to the end of
    each window. Empty ``reply_frames`` -> ``nan``.

    Differences from the reference implementation, which re-runs the model on the frames after
    a reply without the reply in context: it looks ahead at most as many frames as the turn had
    (to keep the error symmetric) and charges 0 for a silent last turn. Here ``speak_prob`` comes
    from the single teacher-forced pass, so frames after ``r_i`` already have reply ``i`` in
    context, and the late side of the window runs to the next reply (or the stream's end).
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    refs = sorted(int(r) for r in reply_frames)
    if not refs:
        return math.nan
    got = response_frames(speak_prob, refs, threshold)
    return float(np.mean([abs(f - r) for f, r in zip(got, refs)])) / fps


def fluency(turns: Sequence[Sequence[bool]]) -> float:
    """Fluency: how far into each dialogue turn the model stays right, averaged over turns.

    A turn is the model's teacher-forced predictions for one reference reply: the silent/speak
    decision after each frame since the previous reply (silent is right for every frame but the
    reply frame, speak is right there), followed by the reply's tokens including end-of-turn.
    For a turn of ``L`` booleans with its first ``False`` at index ``e`` (``e = L`` if none),
    ``fluency_turn = e / L``; ``Fluency = mean over turns``. Empty list -> ``nan``; an empty turn
    is an error (every turn holds at least its end-of-turn token).
    """
    scores = []
    for i, turn in enumerate(turns):
        flags = np.asarray(turn, dtype=bool).ravel()
        if flags.size == 0:
            raise ValueError(f"turn {i} is empty; a turn holds at least its end-of-turn token")
        wrong = np.flatnonzero(~flags)
        scores.append((wrong[0] if wrong.size else flags.size) / flags.size)
    return float(np.mean(scores)) if scores else math.nan
