"""The ``mmlc`` command line: each subcommand parses its flags and calls one library function.

User errors (an :class:`~mmlc.errors.MmlcError`) print one line ``mmlc: error: ...`` and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from mmlc.errors import MmlcError


# ---------------------------------------------------------------------- shared flags
def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="preset name or model folder (default: the embedded mmlc-tiny)")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="'random' builds the preset without weights (speed tests)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")


def _load_model(args):
    import mmlc

    return mmlc.load(args.model, device=args.device, dtype=args.dtype, init=args.init)


def parse_time(text: str) -> float:
    """Seconds from ``SS``, ``SS.s``, ``MM:SS`` or ``HH:MM:SS``."""
    parts = text.strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise MmlcError(f"time {text!r} is not a time: write seconds (12.5), MM:SS (01:30) or HH:MM:SS") from None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    if seconds < 0:
        raise MmlcError(f"time {text!r} is negative: times are seconds from the stream's start")
    return seconds


def parse_ask(text: str) -> tuple[float, str]:
    """``"T:question"`` -> (seconds, question); T is seconds, MM:SS or HH:MM:SS."""
    parts = text.split(":")
    for n_time in (3, 2, 1):
        if len(parts) > n_time:
            head, question = ":".join(parts[:n_time]), ":".join(parts[n_time:]).strip()
            try:
                [float(p) for p in head.split(":")]
            except ValueError:
                continue
            if question:
                return parse_time(head), question
    raise MmlcError(f"--ask {text!r} is not 'T:question': write e.g. --ask \"12:what colour is the circle?\" "
                    "or --ask \"01:30:what is moving?\"")


def _clock(t: float) -> str:
    t = max(t, 0.0)
    m, s = divmod(int(t), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


# ---------------------------------------------------------------------- commands
def cmd_stream(args) -> int:
    from tqdm.auto import tqdm

    from mmlc.streaming.sources import open_source

    asks = [parse_ask(a) for a in args.ask or []]
    model = _load_model(args)
    options = {"fps": args.fps, "threshold": args.threshold, "trigger": args.trigger,
               "max_reply_tokens": args.max_reply_tokens}
    if args.interval is not None:
        options["interval_seconds"] = args.interval
    if args.scenes:
        options["scenes"] = True
    if args.no_memory:
        options["memory"] = False
    if args.max_memories is not None:
        options["max_memories"] = args.max_memories
    if args.max_scene_seconds is not None:
        options["max_scene_seconds"] = args.max_scene_seconds
    session = model.stream(**{k: v for k, v in options.items() if v is not None})
    source = open_source(args.source, fps=session.fps)
    for t, q in asks:
        session.ask(q, t=t)
    total = source.n_frames if getattr(source, "n_frames", None) else None
    bar = tqdm(total=total, unit="frame", desc="stream", file=sys.stderr, disable=args.no_progress or
               getattr(source, "live", False), dynamic_ncols=True, leave=False)
    failed = False

    def show(ev) -> None:
        nonlocal failed
        failed |= ev.kind == "error"
        if args.json:
            line = ev.to_json()
        elif ev.kind == "answer":
            line = f"[{_clock(ev.t)}] Q: {ev.question}  A: {ev.text}"
        elif ev.kind == "error":
            line = f"[{_clock(ev.t)}] error: {ev.text}"
        elif ev.kind == "scene":
            line = f"[{_clock(ev.t)}] -- {ev.text} --"
        else:
            line = f"[{_clock(ev.t)}] {ev.text}"
        bar.clear()
        print(line, flush=True)

    seen = 0
    for ev in session.feed(source):
        show(ev)
        bar.update(session.frames_seen - seen)
        seen = session.frames_seen
    bar.update(session.frames_seen - seen)
    for ev in session.finish():
        show(ev)
    bar.close()
    if not args.json:
        stats = session.stats()
        extra = f", {stats['scenes_closed']} scenes folded into memory, KV {stats['kv_length']} tokens" \
            if session.memory else ""
        print(f"# {session.frames_seen} frames, {sum(e.kind == 'reply' for e in session.dialogue)} replies{extra}",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_chat(args) -> int:
    """One-shot (a question on the command line) or interactive (turns from stdin)."""
    model = _load_model(args)
    chat = model.chat(system=args.system, max_reply_tokens=args.max_reply_tokens)
    images = list(args.image or [])
    if args.question is not None:
        print(chat.send(args.question, images=images), flush=True)
        if not args.interactive:
            return 0
        images = []
    tty = sys.stdin.isatty()
    if tty:
        print("mmlc chat: type a message; '/image PATH' attaches an image to the next message, '/reset' starts "
              "over, '/quit' (or Ctrl-D) ends.", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            chat.reset()
            images = []
            continue
        if line.startswith("/image "):
            images.append(line[len("/image "):].strip())
            continue
        try:
            print(chat.send(line, images=images), flush=True)
        except MmlcError as err:  # a bad image or marker count: report it, keep the conversation
            print(f"mmlc: error: {err}", file=sys.stderr)
        images = []


def cmd_data(args) -> int:
    from mmlc.data.writer import write_shapeworld

    if args.format == "mmdu":
        if args.kind != "multi-image":
            raise MmlcError("--format mmdu writes multi-image dialogues: add --kind multi-image")
        from mmlc.data.mmdu import write_shapeworld_mmdu

        write_shapeworld_mmdu(args.out, args.n, args.seed, size=args.size, progress=not args.no_progress)
        print(f"{args.n} multi-image dialogues in {args.out}/benchmark.json (MMDU format)")
        return 0
    paths = write_shapeworld(args.out, args.n, args.seed, kind=args.kind, duration=args.duration, fps=args.fps,
                             size=args.size, needle=args.needle, progress=not args.no_progress)
    print(f"{len(paths)} {args.kind} episodes in {args.out}")
    return 0


def export_model(src, dest, dtype: str = "float16"):
    """Copy a saved model folder (weights, config, tokenizer) to ``dest``; with ``float16`` the weights
    file is stored at half the bytes (loading casts back to the model's dtype, so shipped mmlc-tiny is
    exported this way). Returns ``dest`` as a Path."""
    import shutil
    from pathlib import Path

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    if dtype == "float16":
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        weights = dest / "model.safetensors"
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata()
        state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
        save_file(state, str(weights), metadata=meta)
    return dest


def cmd_train(args) -> int:
    from mmlc.train.trainer import estimate, train

    if args.estimate:
        report = estimate(args.recipe, steps=args.estimate_steps, device=args.device, compile=not args.no_compile)
        print(f"recipe {report['recipe']}: about {report['minutes']:.0f} minutes on this machine "
              f"({len(report['stages'])} stages; {report['steps_timed']} steps timed in each)")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if args.out is None:
        raise MmlcError("mmlc train: --out DIR is required (the run folder), except with --estimate")
    out = train(args.recipe, args.out, device=args.device, resume=not args.no_resume, progress=not args.no_progress,
                start_from=args.start_from, start_stage=args.from_stage, keep_stages=args.keep_stages,
                compile=not args.no_compile)
    if args.export:
        dest = export_model(out, args.export, args.export_dtype)
        print(f"exported the model to {dest} ({args.export_dtype})")
    return 0


def cmd_eval(args) -> int:
    if args.task == "narration":
        from mmlc.evals.narration import resolve_data, run_narration_eval

        resolve_data(args.data, args.seed)  # bad data fails before the model loads
        model = _load_model(args)
        report = run_narration_eval(model, args.data, seed=args.seed, threshold=args.threshold, json_out=args.json,
                                    progress=not args.no_progress, model_name=args.model or "mmlc-tiny",
                                    memory=False if args.no_memory else None)
        print(json.dumps(report["summary"], indent=2))
        return 0
    raise MmlcError(f"unknown eval task {args.task!r}")


def cmd_bench(args) -> int:
    import torch

    from mmlc.bench import plot_report, run_bench, write_json

    if args.threads is not None:
        if args.threads < 1:
            raise MmlcError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    baselines = tuple(b for b in args.baselines.split(",") if b) if args.baselines != "none" else ()
    args.model = args.model or args.preset
    model = _load_model(args)
    name = args.model or "mmlc-tiny"
    if args.init == "random":
        name += " (random weights)"
    log = (lambda msg: print(msg, file=sys.stderr)) if not args.no_progress else (lambda msg: None)
    report = run_bench(model, minutes=args.minutes, fps=args.fps, reply_every=args.reply_every,
                       reply_tokens=args.reply_tokens, batch_frames=args.batch_frames, baselines=baselines,
                       samples=args.samples, baseline_minutes=args.baseline_minutes, size=args.size,
                       progress=not args.no_progress, log=log, name=name)
    if args.json:
        write_json(report, args.json)
    if args.plot:
        plot_report(report, args.plot)
    summary = {"model": name, "device": report["config"]["device"], "frames": report["stream"]["frames"],
               "fps": report["stream"]["fps"], "frame_latency_ms": report["stream"]["frame_latency_ms"],
               "speedup": {k: v.get("speedup") for k, v in report["baselines"].items()}}
    if report["bound"]:
        summary["weight_read_bound_fps"] = report["bound"]["weight_read_bound_fps"]
    print(json.dumps(summary, indent=2))
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmlc", description="Streaming video and multi-image dialogue.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stream", help="narrate a video file, folder of images, stream URL or webcam",
                       description="Stream SOURCE through the model, printing '[mm:ss] text' per event.")
    p.add_argument("source", help="video file, image folder, URL (rtsp://, http://...), webcam or webcam:N")
    p.add_argument("--fps", type=float, default=None, help="frames per second to sample (default: the model's, 2)")
    p.add_argument("--threshold", type=float, default=None,
                   help="speak when P(stay silent) < threshold (default: the model's, 0.725)")
    p.add_argument("--trigger", choices=["live", "interval"], default=None,
                   help="live: the model decides (default); interval: speak every --interval seconds")
    p.add_argument("--interval", type=float, default=None, help="seconds between replies for --trigger interval")
    p.add_argument("--max-reply-tokens", type=int, default=None, help="cap on tokens per reply")
    p.add_argument("--ask", action="append", metavar="T:QUESTION",
                   help="ask QUESTION at time T (seconds or MM:SS); repeatable")
    p.add_argument("--scenes", action="store_true", help="print scene boundaries (online SceneTiling)")
    p.add_argument("--no-memory", action="store_true",
                   help="keep every frame in the context instead of folding closed scenes into memory tokens "
                        "(memory is on by default for a model with a memory bridge)")
    p.add_argument("--max-memories", type=int, default=None, metavar="N",
                   help="scene memories kept in the context (default: the model's, 32 for mmlc-tiny)")
    p.add_argument("--max-scene-seconds", type=float, default=None, metavar="S",
                   help="cut a scene longer than S seconds (default: the model's memory setting, 32 for mmlc-tiny)")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    _model_flags(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("chat", help="multi-image, multi-turn chat (one-shot or interactive)",
                       description="Ask about images. With QUESTION: answer it and exit (or continue with "
                                   "--interactive). Without: read turns from stdin ('/image PATH' attaches an image "
                                   "to the next turn, '/reset', '/quit'). Place images in the text with <image> or "
                                   "<ImageHere>; without markers they are listed first as Image1:, Image2:, ...")
    p.add_argument("question", nargs="?", default=None, help="the first message (omit for interactive mode)")
    p.add_argument("--image", action="append", metavar="PATH", help="an image for the first message; repeatable")
    p.add_argument("--system", default=None, help="system prompt (default: the model's)")
    p.add_argument("--max-reply-tokens", type=int, default=None, help="cap on tokens per reply")
    p.add_argument("--interactive", "-i", action="store_true", help="keep reading turns from stdin after QUESTION")
    _model_flags(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("data", help="write synthetic data sets", description="Write ShapeWorld episodes.")
    p.add_argument("world", choices=["shapeworld"], help="the data generator")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes it)")
    p.add_argument("--n", type=int, default=10, help="number of episodes")
    p.add_argument("--seed", type=int, default=1_000_000_000, help="seed of the first episode (then +1 each)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds per video episode")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels (square)")
    p.add_argument("--kind", choices=["video", "multi-image"], default="video")
    p.add_argument("--format", choices=["mmlc", "mmdu"], default="mmlc",
                   help="multi-image only: mmdu writes DIR/benchmark.json + DIR/images/ (MMDU's format)")
    p.add_argument("--needle", action="store_true", help="show a needle (rare object) in each video episode")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model by recipe (resumable)",
                       description="Train by recipe. 'tiny' regenerates the embedded mmlc-tiny from scratch.")
    p.add_argument("--recipe", default="tiny", help="recipe name: tiny (the shipped weights), tiny-2h (tiny's stages at 65%% of their steps: 160 "
                        "min, weaker), tiny-short (21 of tiny's stages, cut harder), tiny-v2, tiny-smoke")
    p.add_argument("--out", default=None, help="run folder: created, or resumed if it holds this recipe's run")
    p.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an unfinished run in --out")
    p.add_argument("--from", dest="start_from", default=None, metavar="DIR",
                   help="start from this model folder as made by the recipe's earlier stages, instead of "
                        "training them again ('mmlc-tiny': the embedded model); with --from-stage")
    p.add_argument("--from-stage", type=int, default=None, metavar="N",
                   help="with --from: the first stage (1-based) to train on that model")
    p.add_argument("--keep-stages", action="store_true",
                   help="also save the model after each stage to OUT/stages/NN-name (to evaluate each stage)")
    p.add_argument("--export", default=None, help="copy the final model to this folder (e.g. mmlc/assets/mmlc-tiny)")
    p.add_argument("--export-dtype", choices=["float16", "float32"], default="float16",
                   help="dtype of the exported weights file (default float16: half the size, loaded as float32)")
    p.add_argument("--no-compile", action="store_true",
                   help="run the frozen vision tower uncompiled (torch.compile needs a C++ compiler; it falls back "
                        "by itself where compiling fails)")
    p.add_argument("--estimate", action="store_true",
                   help="write nothing: time a few steps of each stage here and print the recipe's wall time")
    p.add_argument("--estimate-steps", type=int, default=4, metavar="K", help="with --estimate: steps timed a stage")
    p.add_argument("--json", default=None, help="with --estimate: write the per-stage times to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="measure streaming speed and memory against baselines (JSON)",
                       description="Stream a synthetic video through the whole path and report frames/s, latency "
                                   "percentiles, reply latency, KV length and memory over time, and the same "
                                   "measures for the baselines (interleaved re-run, per-frame vision).")
    p.add_argument("--preset", default=None, help="preset to build (with --init random), e.g. tiny, videollm-online-8b")
    p.add_argument("--minutes", type=float, default=10.0, help="stream length in minutes (default 10)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second of the stream (default 2)")
    p.add_argument("--reply-every", type=float, default=30.0, help="ask a question every N seconds (0: never)")
    p.add_argument("--reply-tokens", type=int, default=16, help="tokens per answer (fixed, for a fixed load)")
    p.add_argument("--baselines", default="interleaved,per_frame,dynamic_cache,no_memory",
                   help="comma list of interleaved, per_frame, dynamic_cache, no_memory, no_copy (a model "
                        "with a copy head, without it); or none")
    p.add_argument("--baseline-minutes", type=float, default=None,
                   help="measure baselines over the first N minutes only (default: the whole stream)")
    p.add_argument("--samples", type=int, default=8, help="stream positions sampled for the interleaved baseline")
    p.add_argument("--batch-frames", type=int, default=16, help="frames per vision batch ahead of the LM")
    p.add_argument("--size", type=int, default=128, help="side of the synthetic video's frames in pixels")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report here")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="plot latency and memory over stream time")
    p.add_argument("--no-progress", action="store_true")
    _model_flags(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="evaluate a model (narration, mmdu)", description="Evaluate a model.")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    q = tasks.add_parser("narration", help="LIVE metrics + narration F1 + QA accuracy on ShapeWorld or a folder",
                         description="Stream episodes and score narration (LM-PPL, TimeDiff, Fluency, "
                                     "LM-Correctness, F1 within 1 s) and question answering.")
    q.add_argument("--data", default="shapeworld:20", help="episode folder, or shapeworld:N (generated, held out)")
    q.add_argument("--seed", type=int, default=1_000_000_000, help="first seed for shapeworld:N")
    q.add_argument("--threshold", type=float, default=None, help="speak threshold (default: the model's)")
    q.add_argument("--json", default=None, metavar="OUT", help="write the full report here (and resume from OUT.episodes.jsonl)")
    q.add_argument("--no-memory", action="store_true",
                   help="stream without the memory bridge (every frame stays in the context)")
    q.add_argument("--no-progress", action="store_true")
    _model_flags(q)
    q.set_defaults(func=cmd_eval)
    from mmlc.evals.mmdu import add_mmdu_args, cmd_mmdu

    q = tasks.add_parser("mmdu", help="multi-image multi-turn dialogues, MMDU protocol (judge or exact match)",
                         description="Answer every turn of MMDU-format dialogues with the model's own history, "
                                     "then score with an OpenAI-compatible judge (MMDU's six dimensions + overall) "
                                     "or by exact match. Resumable; shards under accelerate launch / torchrun.")
    add_mmdu_args(q)
    q.set_defaults(func=cmd_mmdu)
    from mmlc.evals.niavh import add_niavh_args, cmd_niavh

    q = tasks.add_parser("niavh", help="needle in a video haystack: a grid of lengths x depths",
                         description="Place a needle (ShapeWorld's rare object, an image, a clip or a text "
                                     "overlay) at depth d%% of haystacks of length L, ask one question after the "
                                     "last frame, score by exact match (and optionally a judge, 1-10); per-cell "
                                     "JSON, a heatmap, resumable, sharded under accelerate launch / torchrun.")
    add_niavh_args(q)
    q.set_defaults(func=cmd_niavh)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MmlcError as err:
        print(f"mmlc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmlc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
