"""``mmlc eval narration``: LIVE's metrics and ShapeWorld ground-truth metrics, per episode and overall.

For every episode (a folder written by ``mmlc data shapeworld``, or ``shapeworld:N`` generated in
memory from held-out seeds):

1. Free running: the model streams the video at the episode's fps with the episode's questions
   queued at their times; its replies are matched to the reference narration
   (:func:`~mmlc.evals.metrics.match_narration`: equal normalised text, within 1 s) and its answers
   scored by normalised exact match, per question kind.
2. Teacher forced: one forward pass over the reference stream (frames, narration, questions with
   answers, in the training layout) gives LM-PPL, LM-Correctness, TimeDiff and Fluency
   (definitions in :mod:`mmlc.evals.metrics`).

Narration P/R/F1 are micro-averaged (match counts summed over episodes); LM-PPL and
LM-Correctness pool all reference tokens; TimeDiff and Fluency average over all replies / turns.
Each finished episode is appended to ``OUT.episodes.jsonl`` at once, so an interrupted run resumes
where it stopped; the file's first line is the run's key (data, seed, threshold, memory and a digest
of the weights), and a rerun with another model or setting is refused instead of mixing the two (a
rerun after retraining once reported the old model's numbers). The final JSON holds the summary,
every episode, and the config.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from mmlc.data import shapeworld as sw
from mmlc.errors import DataError, MmlcError
from mmlc.evals import metrics as M
from mmlc.models.loading import weights_digest
from mmlc.models.layout import DECISION, TEXT, Reply
from mmlc.train.examples import timeline

EVAL_SEED = 1_000_000_000


@dataclass
class EpisodeInput:
    """One episode to evaluate: its id, ground truth, and its frames (a path or (t, frame) iterable)."""

    id: str
    truth: dict
    frames: object


def shapeworld_episodes(n: int, seed: int = EVAL_SEED, duration: float = 120.0, fps: float = 2.0) -> Iterator[EpisodeInput]:
    """``n`` episodes generated in memory from seeds ``seed, seed+1, ...`` (held out from training)."""
    for i in range(n):
        ep = sw.generate_episode(seed + i, sw.WorldConfig(duration=duration, fps=fps))
        yield EpisodeInput(f"sw{seed + i:08d}", ep.truth(), list(ep.frames()))


def folder_episodes(folder: str | Path) -> list[EpisodeInput]:
    """Episodes of a folder written by ``mmlc data shapeworld`` (``<id>.json`` + its video)."""
    from mmlc.data.writer import read_episode_json

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder '{folder}' does not exist: write one with `mmlc data shapeworld --out {folder}` "
                        "or pass --data shapeworld:N")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"data folder '{folder}' has no episode .json files: write some with "
                        f"`mmlc data shapeworld --out {folder} --n 20`")
    out = []
    for file in files:
        truth = read_episode_json(file)
        video = truth.get("video")
        if not isinstance(video, str):
            raise DataError(f"episode file '{file}' has no 'video' field naming its video: rewrite it with "
                            "`mmlc data shapeworld`")
        path = folder / video
        if not path.is_file():
            raise DataError(f"episode file '{file}': its video '{path}' does not exist: regenerate the folder")
        _check_video_length(path, truth, file)
        out.append(EpisodeInput(truth.get("id", file.stem), truth, str(path)))
    return out


def _check_video_length(path: Path, truth: dict, file: Path) -> None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        n, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS) or truth["fps"]
    finally:
        cap.release()
    last = max([n["t"] for n in truth["narration"]] + [q["t"] for q in truth["qa"]] + [0.0])
    if n > 0 and n / fps + 1e-6 < last:
        raise DataError(f"video '{path}' lasts {n / fps:.1f} s but '{file}' has annotations up to "
                        f"{last:.1f} s (field 'narration'/'qa'): regenerate the episode or fix its JSON")


# ---------------------------------------------------------------------- one episode
def evaluate_episode(model, episode: EpisodeInput, threshold: float, memory: bool | None = None) -> dict:
    """Stream one episode (``memory``: None = the model's default) and score it."""
    truth = episode.truth
    fps = float(truth["fps"])
    session = model.stream(fps=fps, threshold=threshold, memory=memory)
    for qa in truth["qa"]:
        session.ask(qa["question"], t=qa["t"])
    t0 = time.perf_counter()
    events = list(session.feed(episode.frames))
    events += session.finish()
    stream_seconds = time.perf_counter() - t0
    errors = [e.text for e in events if e.kind == "error"]
    replies = [{"t": e.t, "text": e.text} for e in events if e.kind == "reply"]
    answers = {(round(e.t, 3), e.question): e.text for e in events if e.kind == "answer"}
    preds = [answers.get((round(q["t"], 3), q["question"]), "") for q in truth["qa"]]
    match = M.match_narration(replies, truth["narration"], tolerance=1.0)
    qa = M.qa_accuracy(preds, [q["answer"] for q in truth["qa"]], [q["kind"] for q in truth["qa"]])
    tf = teacher_forced(model, truth, episode.frames, session.frames_seen, threshold)
    return {
        "id": episode.id, "frames": session.frames_seen, "stream_fps": session.frames_seen / max(stream_seconds, 1e-9),
        "narration": {"n_pred": match.n_pred, "n_ref": match.n_ref, "n_match": match.n_match,
                      "precision": match.precision, "recall": match.recall, "f1": match.f1,
                      "mean_abs_dt": match.mean_abs_dt},
        "qa": qa, "teacher_forced": tf, "errors": errors,
        "replies": replies, "answers": [{"t": q["t"], "question": q["question"], "answer": q["answer"], "prediction": p}
                                        for q, p in zip(truth["qa"], preds)],
    }


@torch.no_grad()
def teacher_forced(model, truth: dict, frames, n_frames: int, threshold: float) -> dict:
    """LM-PPL, LM-Correctness, TimeDiff and Fluency from one forward over the reference stream."""
    from mmlc.streaming.sources import open_source

    pics = [f for _, f in open_source(frames, fps=float(truth["fps"]))] if isinstance(frames, str) else [f for _, f in frames]
    pics = pics[:n_frames]
    items = timeline(truth, 0, len(pics))
    seq = model.layout.build(items)
    pixels = model.preprocess(pics)
    out = model(torch.tensor([seq.ids], device=model.device), pixels=pixels)
    logp = torch.log_softmax(out.logits[0].float(), -1)
    lay = model.layout
    token_logprobs, token_correct, speak_prob = [], [], []
    turns, current = [], []
    reply_frames, frame_no = [], -1
    for pos, (y, k) in enumerate(zip(seq.labels, seq.kinds)):
        if k == DECISION:
            frame_no += 1
            p_silent = float(logp[pos, lay.interval_id].exp())
            speak_prob.append(1.0 - p_silent)
            want_speak = y == lay.assistant_id
            if want_speak:
                reply_frames.append(frame_no)
            current.append((p_silent < threshold) == want_speak)
        elif k == TEXT:
            token_logprobs.append(float(logp[pos, y]))
            ok = int(logp[pos].argmax()) == y
            token_correct.append(ok)
            current.append(ok)
            if y == lay.end_id:
                turns.append(current)
                current = []
    n_replies = sum(isinstance(i, Reply) for i in items)
    return {"lm_ppl": M.lm_ppl(token_logprobs), "lm_correctness": M.lm_correctness(token_correct),
            "time_diff": M.time_diff(speak_prob, reply_frames, float(truth["fps"]), threshold) if reply_frames else math.nan,
            "fluency": M.fluency(turns) if turns else math.nan,
            "n_tokens": len(token_logprobs), "n_turns": len(turns), "n_replies": n_replies,
            "sum_logprob": float(np.sum(token_logprobs)), "n_correct": int(np.sum(token_correct))}


# ---------------------------------------------------------------------- whole runs
def summarize(results: list[dict]) -> dict:
    if not results:
        return {}
    nm = sum(r["narration"]["n_match"] for r in results)
    npred = sum(r["narration"]["n_pred"] for r in results)
    nref = sum(r["narration"]["n_ref"] for r in results)
    p = nm / npred if npred else (1.0 if not nref else 0.0)
    rc = nm / nref if nref else (1.0 if not npred else 0.0)
    f1 = 2 * p * rc / (p + rc) if p + rc else 0.0
    dts = [r["narration"]["mean_abs_dt"] * r["narration"]["n_match"] for r in results if r["narration"]["n_match"]]
    by_kind: dict[str, list[int]] = {}
    for r in results:
        for kind, v in r["qa"]["by_kind"].items():
            c = by_kind.setdefault(kind, [0, 0])
            c[0] += v["correct"]
            c[1] += v["n"]
    n_tok = sum(r["teacher_forced"]["n_tokens"] for r in results)
    tf = [r["teacher_forced"] for r in results]
    qa_n = sum(r["qa"]["n"] for r in results)
    return {
        "episodes": len(results),
        "narration": {"precision": round(p, 4), "recall": round(rc, 4), "f1": round(f1, 4), "n_pred": npred,
                      "n_ref": nref, "n_match": nm, "mean_abs_dt": round(sum(dts) / nm, 4) if nm else None},
        "qa": {"accuracy": round(sum(r["qa"]["correct"] for r in results) / qa_n, 4) if qa_n else None, "n": qa_n,
               "by_kind": {k: {"accuracy": round(c / n, 4), "n": n} for k, (c, n) in sorted(by_kind.items())}},
        "lm_ppl": round(math.exp(-sum(t["sum_logprob"] for t in tf) / n_tok), 4) if n_tok else None,
        "lm_correctness": round(sum(t["n_correct"] for t in tf) / n_tok, 4) if n_tok else None,
        "time_diff": _weighted([(t["time_diff"], t["n_replies"]) for t in tf]),
        "fluency": _weighted([(t["fluency"], t["n_turns"]) for t in tf]),
        "stream_fps": round(float(np.mean([r["stream_fps"] for r in results])), 1),
        "errors": sum(len(r["errors"]) for r in results),
    }


def _weighted(pairs: list[tuple[float, int]]) -> float | None:
    pairs = [(v, n) for v, n in pairs if n and not math.isnan(v)]
    total = sum(n for _, n in pairs)
    return round(sum(v * n for v, n in pairs) / total, 4) if total else None


def resolve_data(data: str, seed: int = EVAL_SEED) -> tuple[list | Iterator, int]:
    """``shapeworld:N`` or a folder -> (episodes, count); bad input fails here, before any work."""
    if data.startswith("shapeworld:"):
        try:
            n = int(data.split(":", 1)[1])
        except ValueError:
            n = 0
        if n <= 0:
            raise MmlcError(f"--data {data!r}: the number after 'shapeworld:' must be a positive integer, e.g. shapeworld:20")
        return shapeworld_episodes(n, seed), n
    episodes = folder_episodes(data)
    return episodes, len(episodes)


def run_key(model, data: str, seed: int, threshold: float, memory: bool | None) -> dict:
    """What an eval's partial results depend on; stored as the first line of ``OUT.episodes.jsonl``."""
    return {"data": str(data), "seed": int(seed), "threshold": float(threshold),
            "memory": (model.bridge is not None) if memory is None else bool(memory),
            "weights": weights_digest(model)}


def run_narration_eval(model, data: str, *, seed: int = EVAL_SEED, threshold: float | None = None,
                       json_out: str | None = None, progress: bool = True, model_name: str = "",
                       memory: bool | None = None) -> dict:
    """Evaluate ``model`` on ``data`` (a folder, or ``shapeworld:N``); resumable through ``json_out``.
    ``memory=False`` streams without the memory bridge (None: the model's default)."""
    threshold = model.config.stream.threshold if threshold is None else threshold
    episodes, total = resolve_data(data, seed)
    partial = Path(str(json_out) + ".episodes.jsonl") if json_out else None
    key = run_key(model, data, seed, threshold, memory)
    done: dict[str, dict] = {}
    if partial is not None and partial.is_file() and partial.read_text().strip():
        rows = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
        if rows[0].get("run") != key:
            was = rows[0].get("run")
            differ = sorted(k for k in key if not isinstance(was, dict) or was.get(k) != key[k])
            raise MmlcError(f"{partial}: holds episodes of another run ({'no run key' if was is None else 'its ' + ', '.join(differ) + ' differ'}); "
                            "a rerun resumes only with the same model weights, data, seed, threshold and memory: delete "
                            "the file to start over, or pass another --json")
        done = {row["id"]: row for row in rows[1:]}
    elif partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"run": key}) + "\n")
    results = []
    bar = tqdm(total=total, desc="narration eval", disable=not progress, dynamic_ncols=True)
    for episode in episodes:
        if episode.id in done:
            results.append(done[episode.id])
        else:
            row = evaluate_episode(model, episode, threshold, memory)
            results.append(row)
            if partial is not None:
                with open(partial, "a") as f:
                    f.write(json.dumps(row) + "\n")
        bar.update(1)
        bar.set_postfix(f1=f"{summarize(results)['narration']['f1']:.3f}")
    bar.close()
    report = {"summary": summarize(results), "episodes": results,
              "config": {"data": data, "seed": seed, "threshold": threshold, "model": model_name,
                         "memory": (model.bridge is not None) if memory is None else memory,
                         "model_config": model.config.name, "tolerance_s": 1.0}}
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(json_out) + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(json_out)
    return report
