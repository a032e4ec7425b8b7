"""``mmlc eval mmdu``: multi-image, multi-turn dialogues scored as MMDU scores them, resumably.

Generation (``--mode infer`` or ``all``): each dialogue of the data file is answered turn by turn on
a fresh :class:`~mmlc.streaming.chat.ChatSession`: the user turns come from the file (their
``<ImageHere>`` placeholders take the dialogue's images in order), the history holds the model's own
replies, never the reference answers. Every reply is saved at once in
``OUTPUT_DIR/predictions/<id>.json`` (written atomically, in the MMDU format with the model's
answers as the assistant turns, plus each reply's ``token_ids``), so a rerun skips finished
dialogues, and in an unfinished one replays the saved turns into the cache (the same tokens, so the
rest of the dialogue comes out as it would have) and goes on from the first unanswered turn. A dialogue whose
images cannot be read is recorded as failed (``"error"``), reported and skipped; a rerun tries it again.

Judging (``--mode eval`` or ``all``, ``--scorer judge``): every turn goes to the judge
(:mod:`mmlc.evals.judge`) from a thread pool, with MMDU's per-turn prompt (the question, the reference
answer, the model's answer) and optionally every image of the dialogue (``--judge-images``, as
MMDU's own script does; VLMEvalKit sends text only). Each judgement is saved as soon as it comes, in
``OUTPUT_DIR/judgements/<id>.json``, keyed by a hash of what was asked: a rerun judges only turns
with no judgement, with a failed request (``"status": "error"``), or whose prediction changed. A
reply without parsable scores is recorded as ``"unparsed"`` and kept (it is not judged twice).

Aggregation (as MMDU): for each dimension, the mean over turns of the score x 10, over all turns
(an unparsed or failed turn counts 0) and over the valid (parsed) turns only. ``--scorer exact``
scores by normalised exact match against the reference answer instead (ShapeWorld sets), overall
and per turn ``kind``. The result, ``OUTPUT_DIR/results.json``, is computed from the per-dialogue
files in id order, so it is the same however the work was split.

Sharding: under ``accelerate launch``, dialogue i (in file order) goes to process
``i % num_processes``; after all finish, the main process merges. ``shard=(index, count)`` runs one
share without accelerate (tests, or jobs split by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from mmlc.data.mmdu import MmduData, MmduItem, read_mmdu
from mmlc.errors import ConfigError, DataError, SourceError
from mmlc.evals.common import (distributed, empty_cache, oom_errors, read_json, run_cli, shard_items, warn,
                               write_json)
from mmlc.evals.judge import DIMS, MMDU_RUBRIC, JudgeClient, JudgeError, mmdu_prompt, parse_scores
from mmlc.evals.metrics import normalize_text

MODES = ("all", "infer", "eval")
SCORERS = ("judge", "exact")
PREDICTIONS = "predictions"
JUDGEMENTS = "judgements"
RESULTS = "results.json"
_ARTICLES = {"a", "an", "the"}


# ---------------------------------------------------------------------- exact match
def normalize_answer(text) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    words = normalize_text(text if isinstance(text, str) else "").split()
    return " ".join(w for w in words if w not in _ARTICLES)


def exact_match(prediction, reference) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


# ---------------------------------------------------------------------- sharding
# ---------------------------------------------------------------------- generation
def _prediction_path(output_dir: Path, item: MmduItem) -> Path:
    return output_dir / PREDICTIONS / f"{item.file_stem}.json"


def _judgement_path(output_dir: Path, item: MmduItem) -> Path:
    return output_dir / JUDGEMENTS / f"{item.file_stem}.json"


def _answers(record: dict | None) -> list[str]:
    if not record:
        return []
    return [t["value"] for t in record.get("conversations", []) if t.get("from") == "assistant"]


def _usable_record(record, item: MmduItem, model_name: str | None, path: Path, weights: str | None = None) -> dict | None:
    """A saved prediction record that belongs to this item (and model, and weights), else None (start over)."""
    if not isinstance(record, dict) or record.get("id") != item.id or not isinstance(record.get("conversations"), list):
        return None
    saved_model = record.get("model")
    if model_name and saved_model and saved_model != model_name:
        raise ConfigError(f"{path}: holds answers of model {saved_model!r}, not {model_name!r}: use another "
                          "--output-dir for another model (or delete its predictions folder)")
    if weights and record.get("weights") != weights:
        raise ConfigError(f"{path}: holds answers of other weights than {model_name or 'this model'}'s now "
                          f"({record.get('weights')!r}, now {weights!r}; retrained?): use another --output-dir "
                          "(or delete its predictions folder)")
    conv = record["conversations"]
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or j // 2 >= len(item.turns):
            return None
        if j % 2 == 0 and (turn.get("from") != "user" or turn["value"] != item.turns[j // 2].question):
            return None   # the data file changed: this dialogue is redone
        if j % 2 == 1 and turn.get("from") != "assistant":
            return None
    if len(conv) % 2:
        record["conversations"] = conv[:-1]
    return record


def is_complete(record: dict | None, item: MmduItem) -> bool:
    return bool(record) and record.get("complete") is True and len(_answers(record)) == len(item.turns)


def _last_reply_ids(chat) -> list[int] | None:
    """The token ids of the reply ``send`` just generated (from the chat's history), or None."""
    hist = getattr(chat, "history_ids", None)
    lay = chat.layout
    if not hist or hist[-1] != lay.end_id or lay.assistant_id not in hist:
        return None
    start = len(hist) - 1 - hist[::-1].index(lay.assistant_id)
    return [int(i) for i in hist[start + 1:-1]]


def generate_dialogue(model, item: MmduItem, record: dict, save: Callable[[dict], None],
                      max_reply_tokens: int | None = None) -> dict:
    """Answer the turns of ``item`` not yet in ``record`` (replaying those that are), saving after each."""
    chat = model.chat(max_reply_tokens=max_reply_tokens, keep_history=True)
    saved = [t for t in record["conversations"] if t.get("from") == "assistant"]
    done = [t["value"] for t in saved]
    record["conversations"] = record["conversations"][:2 * len(done)]
    record.pop("error", None)
    try:
        for t, turn in enumerate(item.turns):
            images = [str(p) for p in turn.images]
            if t < len(done):
                chat.replay(turn.question, images, done[t], saved[t].get("token_ids"))
                continue
            reply = chat.send(turn.question, images=images)
            answer = {"from": "assistant", "value": reply}
            ids = _last_reply_ids(chat)
            if ids is not None:
                answer["token_ids"] = ids
            record["conversations"] += [{"from": "user", "value": turn.question}, answer]
            record["complete"] = t + 1 == len(item.turns)
            save(record)
    except (SourceError, ConfigError) as err:
        record["error"] = f"turn {t + 1}: {err}"
    except oom_errors() as err:
        record["error"] = f"turn {t + 1}: out of memory ({str(err).splitlines()[0][:200]})"
        empty_cache()
    if "error" in record:
        record["complete"] = False
        save(record)
    elif not item.turns or record.get("complete") is not True:
        record["complete"] = True
        save(record)
    return record


# ---------------------------------------------------------------------- judging
def _judge_key(judge: JudgeClient, prompt: str, images: list[str]) -> str:
    blob = json.dumps([judge.model, prompt, images], ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


class _JudgementStore:
    """Per-dialogue judgement files, updated turn by turn from many threads."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self._lock = threading.Lock()
        self._docs: dict[str, dict] = {}

    def load(self, item: MmduItem) -> dict:
        with self._lock:
            return self._load(item)

    def _load(self, item: MmduItem) -> dict:
        if item.id not in self._docs:
            doc = read_json(_judgement_path(self.output_dir, item))
            if not isinstance(doc, dict) or doc.get("id") != item.id or not isinstance(doc.get("turns"), dict):
                doc = {"id": item.id, "turns": {}}
            self._docs[item.id] = doc
        return self._docs[item.id]

    def put(self, item: MmduItem, turn: int, record: dict) -> None:
        with self._lock:
            doc = self._load(item)
            doc["turns"][str(turn)] = record
            doc["turns"] = dict(sorted(doc["turns"].items(), key=lambda kv: int(kv[0])))
            write_json(_judgement_path(self.output_dir, item), doc)


def _turn_requests(item: MmduItem, answers: list[str], judge: JudgeClient, judge_images: bool,
                   rubric: str) -> list[tuple[str, list[str], str]]:
    """(prompt, image files to send, key) per turn; the key names the images as the data file does, so
    moving the image folder does not invalidate the judgements."""
    images = [str(p) for p in item.images] if judge_images else []
    names = list(item.raw_images) if judge_images else []
    out = []
    for turn, answer in zip(item.turns, answers):
        prompt = mmdu_prompt(turn.question, turn.answer, answer, rubric)
        out.append((prompt, images, _judge_key(judge, prompt, names)))
    return out


def _needs_judging(record) -> bool:
    return not isinstance(record, dict) or record.get("status") not in ("ok", "unparsed")


def judge_turn(judge: JudgeClient, prompt: str, images: list[str], key: str) -> dict:
    """Ask the judge about one turn; the record to save (``status`` ok / unparsed / error)."""
    try:
        text, attempts = judge.complete(prompt, images)
    except JudgeError as err:
        return {"status": "error", "scores": None, "reply": None, "error": str(err), "attempts": err.attempts,
                "key": key}
    scores, why = parse_scores(text)
    return {"status": "ok" if scores else "unparsed", "scores": scores, "reply": text, "error": why,
            "attempts": attempts, "key": key}


class _JudgePool:
    """Submits turns to the judge from a thread pool; saves each record as it comes."""

    def __init__(self, judge: JudgeClient, store: _JudgementStore, concurrency: int, judge_images: bool,
                 rubric: str, progress: bool):
        from tqdm.auto import tqdm

        self.judge, self.store, self.judge_images, self.rubric = judge, store, judge_images, rubric
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mmdu-judge")
        self.futures: list[Future] = []
        self.bar = tqdm(total=0, desc="mmdu judge", unit="turn", disable=not progress, position=1, leave=True)
        self._bar_lock = threading.Lock()

    def submit(self, item: MmduItem, answers: list[str]) -> None:
        doc = self.store.load(item)
        for t, (prompt, images, key) in enumerate(_turn_requests(item, answers, self.judge, self.judge_images,
                                                                 self.rubric)):
            old = doc["turns"].get(str(t))
            if not _needs_judging(old) and old.get("key") == key:
                continue
            with self._bar_lock:
                self.bar.total += 1
                self.bar.refresh()
            self.futures.append(self.pool.submit(self._work, item, t, prompt, images, key))

    def _work(self, item, t, prompt, images, key) -> None:
        self.store.put(item, t, judge_turn(self.judge, prompt, images, key))
        with self._bar_lock:
            self.bar.update(1)

    def check(self) -> None:
        """Re-raise the first error of a finished task (a fatal judge error stops the run early)."""
        for f in self.futures:
            if f.done() and f.exception() is not None:
                self.close(cancel=True)
                raise f.exception()

    def close(self, cancel: bool = False) -> None:
        if not cancel:
            for f in self.futures:
                if f.exception() is not None:
                    self.pool.shutdown(wait=True, cancel_futures=True)
                    self.bar.close()
                    raise f.exception()
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        self.bar.close()


# ---------------------------------------------------------------------- aggregation
def collect_results(data: MmduData, output_dir, *, scorer: str = "judge", config: dict | None = None) -> dict:
    """``results.json``'s content, from the per-dialogue files of every item of ``data`` (id order)."""
    output_dir = Path(output_dir)
    skipped = [{"id": ident, "error": str(err)} for ident, err in data.invalid]
    missing: list[str] = []
    scored = []
    for item in sorted(data.items, key=lambda it: it.id):
        record = read_json(_prediction_path(output_dir, item))
        if is_complete(record, item):
            scored.append((item, _answers(record)))
        elif isinstance(record, dict) and record.get("error"):
            skipped.append({"id": item.id, "error": str(record["error"])})
        else:
            missing.append(item.id)
    skipped.sort(key=lambda s: s["id"])
    out: dict = {}
    if scorer == "exact":
        n = correct = 0
        kinds: dict[str, list[int]] = {}
        for item, answers in scored:
            for turn, answer in zip(item.turns, answers):
                ok = exact_match(answer, turn.answer)
                n += 1
                correct += ok
                if turn.kind is not None:
                    c = kinds.setdefault(turn.kind, [0, 0])
                    c[0] += ok
                    c[1] += 1
        out["scores"] = {"all": {"accuracy": round(correct / n, 4) if n else None},
                         "by_kind": {k: {"accuracy": round(c / m, 4), "n": m} for k, (c, m) in sorted(kinds.items())}}
        out.update(n_dialogues=len(scored), n_turns=n, n_correct=correct, n_valid=n, n_failed=0)
    else:
        judge_model = (config or {}).get("judge", {}).get("model")
        totals = {d: [] for d in DIMS}
        n = n_valid = n_unparsed = n_errors = n_pending = 0
        for item, answers in scored:
            doc = read_json(_judgement_path(output_dir, item)) or {}
            turns = doc.get("turns", {}) if isinstance(doc, dict) else {}
            keys = None
            if judge_model is not None:
                client = _KeyOnly(judge_model)
                keys = [k for _, _, k in _turn_requests(item, answers, client, bool(config["judge"].get("images")),
                                                        config["judge"].get("rubric_text") or MMDU_RUBRIC)]
            for t in range(len(item.turns)):
                rec = turns.get(str(t))
                if not isinstance(rec, dict) or rec.get("status") not in ("ok", "unparsed", "error") or \
                        (keys is not None and rec.get("key") != keys[t]):
                    n_pending += 1
                    continue
                n += 1
                if rec["status"] == "ok" and isinstance(rec.get("scores"), dict) and \
                        all(isinstance(rec["scores"].get(d), (int, float)) for d in DIMS):
                    n_valid += 1
                    for d in DIMS:
                        totals[d].append(float(rec["scores"][d]))
                elif rec["status"] == "error":
                    n_errors += 1
                else:
                    n_unparsed += 1
        out["scores"] = {
            "all": {d: round(math.fsum(totals[d]) / n * 10, 4) if n else None for d in DIMS},
            "valid": {d: round(math.fsum(totals[d]) / n_valid * 10, 4) if n_valid else None for d in DIMS},
        }
        out.update(n_dialogues=len(scored), n_turns=n, n_valid=n_valid, n_failed=n - n_valid,
                   n_unparsed=n_unparsed, n_judge_errors=n_errors, n_pending=n_pending)
    out["skipped"] = skipped
    out["missing"] = missing
    out["config"] = {k: v for k, v in (config or {}).items()}
    if "judge" in out["config"]:
        out["config"]["judge"] = {k: v for k, v in out["config"]["judge"].items() if k != "rubric_text"}
    return out


class _KeyOnly:
    """Stands in for a JudgeClient where only the model name matters (the judgement key)."""

    def __init__(self, model: str):
        self.model = model


# ---------------------------------------------------------------------- the run
def run_mmdu(model_loader, data, image_dir=None, output_dir=None, *, limit: int | None = None, mode: str = "all",
             scorer: str = "judge", judge: JudgeClient | None = None, judge_images: bool = False,
             judge_concurrency: int = 4, judge_prompt: str | None = None, max_reply_tokens: int | None = None,
             model_name: str | None = None, progress: bool = True, shard: tuple[int, int] | None = None,
             merge: bool = True, strict: bool = False, config: dict | None = None) -> dict:
    """Evaluate a model on an MMDU-format file; returns (and, on the main process, writes) the results.

    ``model_loader``: a model, or a callable returning one (called only if something is to be
    generated; None is fine for ``mode="eval"``). ``data``: the benchmark file (or a read
    :class:`MmduData`). ``judge``: a :class:`JudgeClient` (needed for ``scorer="judge"`` unless
    ``mode="infer"``). ``judge_prompt``: the rubric text to use instead of the built-in one.
    ``shard=(index, count)``: run that share only (default: accelerate's process, or all).
    ``merge=False``: do not aggregate (one share of a hand-split run; see :func:`collect_results`).
    With ``mode="infer"`` the return value summarises the predictions and no results.json is written.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is unknown: use one of {', '.join(MODES)}")
    if scorer not in SCORERS:
        raise ConfigError(f"scorer {scorer!r} is unknown: use judge (an LLM judge, MMDU's protocol) or exact "
                          "(normalised exact match, for ShapeWorld sets)")
    if isinstance(judge_concurrency, bool) or not isinstance(judge_concurrency, int) or judge_concurrency < 1:
        raise ConfigError(f"judge concurrency {judge_concurrency!r}: must be an integer >= 1")
    if max_reply_tokens is not None and (not isinstance(max_reply_tokens, int) or max_reply_tokens < 1):
        raise ConfigError(f"max reply tokens {max_reply_tokens!r}: must be an integer >= 1")
    use_judge = scorer == "judge" and mode != "infer"
    if use_judge and judge is None:
        raise ConfigError("scoring with the judge needs a judge: pass --judge-base-url and --judge-model (or "
                          "--scorer exact, or --mode infer to generate only)")
    if output_dir is None:
        raise ConfigError("no output folder: pass --output-dir DIR (a rerun with the same folder resumes)")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {str(output_dir)!r} exists and is not a folder")
    if not isinstance(data, MmduData):
        data = read_mmdu(data, image_dir, strict=strict, limit=limit)
    if shard is None:
        index, count, barrier, _ = distributed()
    else:
        index, count = shard
        barrier = lambda: None   # noqa: E731
    main = index == 0
    if main:
        for ident, err in data.invalid:
            warn(f"skipping item {ident!r}: {err}")
    if not data.items:
        first = "; ".join(str(e) for _, e in data.invalid[:3])
        raise DataError(f"{data.path}: no usable dialogue among its {data.n_total} items ({first})")
    for sub in (PREDICTIONS, JUDGEMENTS):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
    rubric = judge_prompt if judge_prompt is not None else MMDU_RUBRIC
    cfg = {"data": str(data.path), "image_dir": str(data.image_dir), "model": model_name, "limit": limit,
           "mode": mode, "scorer": scorer, "max_reply_tokens": max_reply_tokens, "num_processes": count,
           "n_items_read": data.n_total}
    if scorer == "judge":
        cfg["judge"] = {"base_url": getattr(judge, "base_url", None), "model": getattr(judge, "model", None),
                        "images": judge_images, "concurrency": judge_concurrency,
                        "retries": getattr(judge, "retries", None), "timeout": getattr(judge, "timeout", None),
                        "prompt": "mmdu-rubric" if judge_prompt is None else "custom",
                        "prompt_sha1": hashlib.sha1(rubric.encode("utf-8")).hexdigest()[:12], "rubric_text": rubric}
    cfg.update(config or {})
    from mmlc.models.loading import weights_id

    # answers are generated only on the same weights (a retrained model of the same name must not reuse
    # them); scoring saved predictions (mode eval) needs no model
    weights = weights_id(model_name, cfg.get("init", "pretrained")) if model_name and mode != "eval" else None

    mine = shard_items(data.items, index, count)
    pool = _JudgePool(judge, _JudgementStore(output_dir), judge_concurrency, judge_images, rubric,
                      progress and main) if use_judge else None
    n_generated = 0
    try:
        model = None
        from tqdm.auto import tqdm

        bar = tqdm(mine, desc="mmdu" if mode != "eval" else "mmdu predictions", unit="dialogue",
                   disable=not progress or not main, position=0)
        for item in bar:
            path = _prediction_path(output_dir, item)
            record = _usable_record(read_json(path), item, model_name, path, weights)
            if not is_complete(record, item) and mode != "eval":
                if model is None:
                    model = model_loader if hasattr(model_loader, "chat") else model_loader()
                if record is None:
                    record = {"id": item.id, "model": model_name, "weights": weights, "image": item.raw_images,
                              "conversations": [],
                              "n_turns": len(item.turns), "complete": False}
                generate_dialogue(model, item, record, lambda r, p=path: write_json(p, r), max_reply_tokens)
                n_generated += 1
                if record.get("error") and main:
                    warn(f"dialogue {item.id!r} failed: {record['error']}")
            if pool is not None and is_complete(record, item):
                pool.submit(item, _answers(record))
                pool.check()
        bar.close()
    except BaseException:
        if pool is not None:
            pool.close(cancel=True)
        raise
    if pool is not None:
        pool.close()
    barrier()
    if mode == "infer":
        records = [read_json(_prediction_path(output_dir, it)) for it in data.items]
        complete = sum(is_complete(r, it) for r, it in zip(records, data.items))
        return {"mode": "infer", "n_dialogues": len(data.items), "n_complete": complete,
                "n_generated_here": n_generated, "predictions": str(output_dir / PREDICTIONS),
                "skipped": [{"id": i, "error": str(e)} for i, e in data.invalid] +
                           [{"id": it.id, "error": r["error"]} for r, it in zip(records, data.items)
                            if isinstance(r, dict) and r.get("error")],
                "config": {k: v for k, v in cfg.items() if k != "judge"}}
    if not merge:
        return {}
    results = collect_results(data, output_dir, scorer=scorer, config=cfg)
    if mode == "eval" and results["n_dialogues"] == 0:
        raise DataError(f"{output_dir / PREDICTIONS}: no finished predictions for the dialogues of {data.path}: "
                        "generate them first with --mode infer (or --mode all)")
    if main:
        write_json(output_dir / RESULTS, results)
    barrier()
    return results


# ---------------------------------------------------------------------- command line
def add_mmdu_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``mmlc eval mmdu`` (VLMEvalKit / lmms-eval conventions)."""
    p = parser
    p.add_argument("--data", default=None, metavar="FILE",
                   help="MMDU benchmark.json (or a ShapeWorld set from `mmlc data shapeworld --format mmdu`)")
    p.add_argument("--image-dir", default=None, metavar="DIR", help="where the items' image paths start "
                   "(default: the data file's folder)")
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                   help="preset name or model folder (default: the embedded mmlc-tiny)")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="'random' builds the preset without weights (plumbing tests)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (under accelerate: each process's own)")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="predictions/, judgements/ and results.json go here; a rerun resumes")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N dialogues of the file")
    p.add_argument("--mode", choices=MODES, default="all",
                   help="infer: generate only; eval: score saved predictions; all: both (default)")
    p.add_argument("--scorer", choices=SCORERS, default="judge",
                   help="judge: an LLM judge with MMDU's protocol (default); exact: normalised exact match")
    p.add_argument("--judge-base-url", default=None, metavar="URL",
                   help="OpenAI-compatible API root (default: $OPENAI_BASE_URL or https://api.openai.com/v1)")
    p.add_argument("--judge-model", default="gpt-4o", metavar="NAME", help="judge model (default gpt-4o, as MMDU)")
    p.add_argument("--judge-api-key", default=None, metavar="KEY", help="judge API key (default: $OPENAI_API_KEY)")
    p.add_argument("--judge-images", action=argparse.BooleanOptionalAction, default=False,
                   help="send every image of the dialogue to the judge, as MMDU's script does "
                        "(default: text only, as VLMEvalKit)")
    p.add_argument("--judge-concurrency", type=int, default=4, metavar="N", help="judge requests in flight")
    p.add_argument("--judge-retries", type=int, default=5, metavar="N",
                   help="retries of a judge request after HTTP 429/5xx, timeouts or connection errors")
    p.add_argument("--judge-timeout", type=float, default=120.0, metavar="S", help="seconds per judge request")
    p.add_argument("--judge-prompt", default=None, metavar="FILE",
                   help="a text file with the judge's rubric (e.g. MMDU's exact wording); the question, reference "
                        "and answer sections follow it")
    p.add_argument("--max-reply-tokens", type=int, default=None, help="cap on tokens per reply (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def make_judge(args) -> JudgeClient:
    base = args.judge_base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    key = args.judge_api_key or os.environ.get("OPENAI_API_KEY") or None
    if key is None and "api.openai.com" in base:
        raise ConfigError(f"no judge API key for {base}: pass --judge-api-key KEY or set OPENAI_API_KEY "
                          "(or --judge-base-url for a local server, or --scorer exact)")
    if args.judge_retries < 0:
        raise ConfigError(f"--judge-retries {args.judge_retries}: must be >= 0")
    if not args.judge_timeout > 0:
        raise ConfigError(f"--judge-timeout {args.judge_timeout}: must be > 0 seconds")
    return JudgeClient(base_url=base, model=args.judge_model, api_key=key, timeout=args.judge_timeout,
                       retries=args.judge_retries)


def cmd_mmdu(args) -> int:
    """Run ``mmlc eval mmdu`` from parsed flags; prints the results JSON (main process) and returns 0."""
    if not args.data:
        raise ConfigError("no data file: pass --data FILE (MMDU's benchmark.json, or a ShapeWorld set written by "
                          "`mmlc data shapeworld --kind multi-image --format mmdu --out DIR`)")
    if not args.output_dir:
        raise ConfigError("no output folder: pass --output-dir DIR (a rerun with the same folder resumes)")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be >= 1 (the first N dialogues)")
    if args.judge_concurrency < 1:
        raise ConfigError(f"--judge-concurrency {args.judge_concurrency}: must be >= 1")
    if args.max_reply_tokens is not None and args.max_reply_tokens < 1:
        raise ConfigError(f"--max-reply-tokens {args.max_reply_tokens}: must be >= 1")
    rubric = None
    if args.judge_prompt:
        try:
            rubric = Path(args.judge_prompt).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--judge-prompt {args.judge_prompt!r}: cannot be read ({err})") from None
        if rubric and not rubric.endswith("\n"):
            rubric += "\n"
    judge = make_judge(args) if args.scorer == "judge" and args.mode != "infer" else None
    data = read_mmdu(args.data, args.image_dir, limit=args.limit)   # bad files fail before the model loads
    index, count, _, device = distributed()
    dev = args.device
    if dev is None and count > 1 and device is not None:   # each process on its own device
        dev = "cpu" if device.type == "cpu" else str(device)
    name = (args.model or "mmlc-tiny") + (" (random init)" if args.init == "random" else "")

    def loader():
        import mmlc

        return mmlc.load(args.model, device=dev, dtype=args.dtype, init=args.init)

    results = run_mmdu(loader, data, output_dir=args.output_dir, limit=args.limit, mode=args.mode,
                       scorer=args.scorer, judge=judge, judge_images=args.judge_images,
                       judge_concurrency=args.judge_concurrency, judge_prompt=rubric,
                       max_reply_tokens=args.max_reply_tokens, model_name=name, progress=not args.no_progress,
                       config={"init": args.init, "device": dev, "dtype": args.dtype})
    if index == 0:
        print(json.dumps(results, indent=2, ensure_ascii=False), flush=True)
    return 0


def main(argv=None) -> int:
    """``python -m mmlc.evals.mmdu`` (or ``accelerate launch -m mmlc.evals.mmdu``) with the same flags."""
    return run_cli(add_mmdu_args, cmd_mmdu, "mmlc eval mmdu", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
