"""``mmlc bench``: streaming speed and memory over a synthetic video, with the baselines in the same run.

What is measured (one process, one model, one synthetic video written to a temporary mp4):

- **stream**: the whole path a user runs: decode (the mp4 through the frame source) -> vision tower
  in batches ahead of the LM -> one cached LM forward per frame -> the speak decision -> replies. To
  make reply work a fixed, comparable load, the learned trigger is switched off (threshold 0) and a
  question is asked every ``reply_every`` seconds, answered with exactly ``reply_tokens`` tokens
  (greedy, ``{end}`` masked). Reported: frames/s over the stream, per-frame latency percentiles
  (LM step + the frame's share of its vision batch), time to first reply token and per token, KV
  length, resident memory (and CUDA memory) over stream time, peak memory.
- **baselines** a user would otherwise write, each on the same frames:
  - ``interleaved``: no KV cache; every frame re-runs the LM over the whole interleaved context so far
    (the "interleaved" way of the VideoLLM-online paper). Its cost grows with the stream, so it is
    sampled at ``samples`` evenly spaced stream positions and its mean per-frame time is the mean of
    the samples (the same estimate a full run would give, without the quadratic wall time).
  - ``per_frame``: the cached LM, but the vision tower called once per frame, no batching ahead.
  - ``dynamic_cache``: transformers' concatenating ``DynamicCache`` instead of mmlc's growing cache.
  - ``no_memory``: the stream without the memory bridge (``model.stream(memory=False)``: the KV cache
    keeps every frame and grows with the stream). For a model without a bridge the stream above *is*
    this baseline; the entry says so rather than invent a number.
  - ``no_copy``: for a model with a copy head (``frames.copy_head``, :mod:`mmlc.models.copy`), the same
    stream with the copy switched off (the head's attention over every cached token's tag words is
    what it adds per frame). Not a default baseline; a model without a copy head says so.
  Ratios (stream fps / baseline fps) are the headline.
- **bound** (GPU): reading every weight once per frame at the device's memory bandwidth sets a floor
  on per-frame time for a model too large for cache; ``weight_read_bound_fps`` reports that ceiling
  when the bandwidth is known (``--bandwidth-gbs``, or a table of common GPUs).

Timings are wall clock with ``perf_counter``; on CUDA the per-frame decision already synchronises
(its ``float()``), and the vision batch is synchronised before it is timed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmlc.errors import ConfigError

# HBM bandwidth in GB/s of common accelerators, for the weight-read bound (vendor datasheets).
BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L40S": 864.0, "A10": 600.0, "L4": 300.0,
                 "RTX 4090": 1008.0, "RTX 3090": 936.0, "V100": 900.0, "T4": 320.0}
BASELINES = ("interleaved", "per_frame", "dynamic_cache", "no_memory", "no_copy")
QUESTIONS = ("what is happening?", "what colour is the square?", "how many objects are there?")


# ---------------------------------------------------------------------- synthetic video
def synthetic_frames(n: int, size: int = 128, seed: int = 0):
    """``n`` frames (size x size x 3 uint8) of a few blocks drifting over a background that cuts
    every 30 frames: cheap to render, enough change to keep a decoder honest."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(8, 3), dtype=np.uint8)
    pos = rng.uniform(0, size, size=(3, 2))
    vel = rng.uniform(-3, 3, size=(3, 2))
    side = max(size // 8, 2)
    for i in range(n):
        frame = np.empty((size, size, 3), dtype=np.uint8)
        frame[:] = colours[(i // 30) % 8] // 2
        pos = (pos + vel) % (size - side)
        for k, (x, y) in enumerate(pos.astype(int)):
            frame[y:y + side, x:x + side] = colours[(k + 3) % 8]
        yield frame


def write_synthetic_video(path: Path, seconds: float, fps: float, size: int = 128, seed: int = 0) -> Path:
    """Write ``seconds`` of synthetic video at ``fps`` to ``path`` (mp4v through OpenCV)."""
    import cv2

    n = max(1, int(round(seconds * fps)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (size, size))
    if not writer.isOpened():
        raise ConfigError(f"OpenCV could not open a video writer for {path}: check the folder is writable")
    try:
        for frame in synthetic_frames(n, size, seed):
            writer.write(frame[:, :, ::-1])
    finally:
        writer.release()
    return path


# ---------------------------------------------------------------------- measurements
def rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def percentiles(values, qs=(50, 95, 99)) -> dict:
    if not len(values):
        return {f"p{q}": None for q in qs} | {"mean": None}
    arr = np.asarray(values, dtype=float) * 1000.0
    return {**{f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs}, "mean": round(float(arr.mean()), 3)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weight_bytes(model) -> int:
    seen = {}
    for p in model.parameters():
        seen[id(p)] = p.numel() * p.element_size()
    return sum(seen.values())


def device_bandwidth_gbs(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    for key, gbs in BANDWIDTH_GBS.items():
        if key.lower() in name.lower():
            return name, gbs
    return name, None


class _Timeline:
    """Samples KV length, latency and memory every ``every`` frames of the stream."""

    def __init__(self, device: torch.device, every: int):
        self.device, self.every, self.rows = device, max(1, every), []

    def maybe(self, session, force: bool = False) -> None:
        n = len(session.frame_times)
        if n == 0 or (self.rows and self.rows[-1]["frames"] == n) or (n < (len(self.rows) + 1) * self.every
                                                                         and not force):
            return
        window = session.frame_times[-self.every:]
        row = {"t": round(window[-1]["t"], 2), "frames": n, "kv_length": window[-1]["kv_length"],
               "latency_ms": round(1000 * float(np.mean([w["lm_s"] + w["vision_s"] for w in window])), 3),
               "rss_mb": round(rss_mb(), 1)}
        if self.device.type == "cuda":
            row["cuda_mb"] = round(torch.cuda.memory_allocated(self.device) / 2**20, 1)
        self.rows.append(row)


# ---------------------------------------------------------------------- runs
def run_stream(model, video: Path, fps: float, *, reply_every: float, reply_tokens: int, batch_frames: int,
               keep_history: bool, progress: bool, desc: str, max_frames: int | None = None,
               kv_cache: str = "growing", memory: bool | None = None):
    """Stream ``video`` with prompted replies; returns (session, wall seconds, timeline rows).
    ``memory``: None = the model's default (the bridge when it has one)."""
    from mmlc.streaming.sources import open_source

    session = model.stream(fps=fps, threshold=0.0, trigger="live", max_reply_tokens=reply_tokens,
                           batch_frames=batch_frames, keep_history=keep_history, profile=True, kv_cache=kv_cache,
                           memory=memory)
    session._reply_mask[model.layout.end_id] = True   # every answer is exactly reply_tokens long
    source = open_source(str(video), fps=fps)
    n_total = source.n_frames if max_frames is None else min(max_frames, source.n_frames or max_frames)
    if reply_every > 0:
        for k in range(1, int(n_total / fps / reply_every) + 1):
            session.ask(QUESTIONS[k % len(QUESTIONS)], t=k * reply_every)
    # a row every 10 s of stream (more often for short streams: at least ~10 rows)
    timeline = _Timeline(model.device, every=max(1, min(int(round(fps * 10)), (n_total or 0) // 10)))
    bar = tqdm(total=n_total, unit="frame", desc=desc, disable=not progress, dynamic_ncols=True, leave=False)

    def frames():
        """The source's frames, sampling the timeline as the session pulls them (a batch ahead)."""
        for k, item in enumerate(source):
            if max_frames is not None and k >= max_frames:
                return
            if k:
                timeline.maybe(session)
                bar.update(1)
            yield item

    _sync(model.device)
    start = time.perf_counter()
    try:
        for _ in session.feed(frames()):
            pass
    finally:
        source.close()
    _sync(model.device)
    wall = time.perf_counter() - start
    timeline.maybe(session, force=True)
    bar.close()
    return session, wall, timeline.rows


def _stream_summary(session, wall: float) -> dict:
    ft, rt = session.frame_times, session.reply_times
    n = len(ft)
    return {
        "frames": n, "wall_s": round(wall, 3), "fps": round(n / wall, 2) if wall > 0 else None,
        "frame_latency_ms": percentiles([f["lm_s"] + f["vision_s"] for f in ft]),
        "lm_ms_per_frame": round(1000 * float(np.mean([f["lm_s"] for f in ft])), 3) if n else None,
        "vision_ms_per_frame": round(1000 * float(np.mean([f["vision_s"] for f in ft])), 3) if n else None,
        "replies": len(rt),
        "reply_first_token_ms": percentiles([r["first_token_s"] for r in rt]),
        "reply_per_token_ms": percentiles([r["per_token_s"] for r in rt]),
        "kv_length_final": ft[-1]["kv_length"] if n else 0,
    }


@torch.inference_mode()
def interleaved_cost(model, session, frame_index: int, repeats: int = 2) -> tuple[float, int]:
    """Seconds to re-run the LM over the whole interleaved context up to frame ``frame_index``
    (no cache: what a model without streaming state pays for that frame's decision)."""
    ids = session.history_ids
    frame_id = model.layout.frame_id
    tpf = model.tokens_per_frame
    # the context ends at this frame's last placeholder
    count, end = 0, len(ids)
    for j, tok in enumerate(ids):
        if tok == frame_id:
            count += 1
            if count == (frame_index + 1) * tpf:
                end = j + 1
                break
    frames = torch.cat(session.history_frames, 0)[: (frame_index + 1) * tpf]
    input_ids = torch.tensor([ids[:end]], device=model.device)
    best = math.inf
    for _ in range(repeats):
        _sync(model.device)
        t0 = time.perf_counter()
        out = model(input_ids, frame_tokens=frames, logits_to_keep=1)
        float(out.logits[0, -1, model.layout.interval_id])
        best = min(best, time.perf_counter() - t0)
    return best, end


def run_bench(model, *, minutes: float = 10.0, fps: float = 2.0, reply_every: float = 30.0, reply_tokens: int = 16,
              batch_frames: int = 16, baselines: tuple[str, ...] = ("interleaved", "per_frame", "dynamic_cache", "no_memory"),
              samples: int = 8, baseline_minutes: float | None = None, size: int = 128, seed: int = 0,
              workdir: str | os.PathLike | None = None, progress: bool = True, log=print, name: str = "") -> dict:
    """Run the benchmark; returns the report dict (see the module docstring)."""
    if minutes <= 0 or fps <= 0:
        raise ConfigError(f"--minutes and --fps must be > 0, got minutes={minutes}, fps={fps}")
    if reply_tokens < 1:
        raise ConfigError(f"--reply-tokens must be >= 1, got {reply_tokens}")
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ConfigError(f"unknown baselines {sorted(unknown)}: choose from {', '.join(BASELINES)}")
    device = model.device
    base_minutes = minutes if baseline_minutes is None else min(baseline_minutes, minutes)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="mmlc-bench-") as tmp:
        video = write_synthetic_video(Path(tmp) / "synthetic.mp4", minutes * 60.0, fps, size=size, seed=seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # warm-up (allocators, kernels, lazy imports) on a few frames, not counted
        run_stream(model, video, fps, reply_every=0, reply_tokens=reply_tokens, batch_frames=batch_frames,
                   keep_history=False, progress=False, desc="warm-up", max_frames=min(32, int(minutes * 60 * fps)))
        rss_before = rss_mb()
        # the interleaved baseline re-runs the plain context (every frame, no memory blocks): recorded by the
        # main stream, or by the no-memory run when the main stream folds scenes into memory
        memory_on = model.bridge is not None
        keep = "interleaved" in baselines and not memory_on
        session, wall, timeline = run_stream(model, video, fps, reply_every=reply_every, reply_tokens=reply_tokens,
                                             batch_frames=batch_frames, keep_history=keep, progress=progress,
                                             desc="stream")
        main = _stream_summary(session, wall)
        main["rss_mb_start"] = round(rss_before, 1)
        main["peak_rss_mb"] = round(peak_rss_mb(), 1)
        if device.type == "cuda":
            main["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        log(f"stream: {main['frames']} frames at {main['fps']} frames/s "
            f"(p50 {main['frame_latency_ms']['p50']} ms, p99 {main['frame_latency_ms']['p99']} ms)")
        report_baselines: dict = {}
        n_base = max(1, min(main["frames"], int(round(base_minutes * 60 * fps))))
        plain = session
        if "no_memory" in baselines and model.bridge is None:
            report_baselines["no_memory"] = {
                "fps": None, "speedup": None,
                "note": "this model has no memory bridge: the stream above runs without memory, so it is "
                        "itself this baseline (its KV length grows with the stream)"}
        elif "no_memory" in baselines or "interleaved" in baselines:
            s4, wall4, rows4 = run_stream(model, video, fps, reply_every=reply_every, reply_tokens=reply_tokens,
                                          batch_frames=batch_frames, keep_history="interleaved" in baselines,
                                          progress=progress, desc="no memory", max_frames=n_base, memory=False)
            nm = _stream_summary(s4, wall4)
            plain = s4
        if "no_memory" in baselines and plain is not session:
            report_baselines["no_memory"] = {
                "minutes": round(n_base / fps / 60, 3), "fps": nm["fps"], "frame_latency_ms": nm["frame_latency_ms"],
                "kv_length_final": nm["kv_length_final"],
                "speedup": round(main["fps"] / nm["fps"], 2) if nm["fps"] else None,
                "timeline": [{k: r[k] for k in ("t", "kv_length", "latency_ms", "rss_mb") if k in r} for r in rows4],
                "note": "the same model streaming without its memory bridge (memory=False): every frame stays "
                        "in the KV cache"}
            log(f"no memory: {nm['fps']} frames/s, KV {nm['kv_length_final']} at the end -> stream is "
                f"{report_baselines['no_memory']['speedup']}x")
        if "interleaved" in baselines:
            points = sorted({int(round(x)) for x in np.linspace(0, n_base - 1, samples)})
            rows = []
            for i in tqdm(points, desc="interleaved", disable=not progress, leave=False):
                sec, length = interleaved_cost(model, plain, i)
                rows.append({"frame": i, "t": round(i / fps, 2), "context_tokens": length,
                             "ms_per_frame": round(1000 * sec, 3)})
            mean_s = float(np.mean([r["ms_per_frame"] for r in rows])) / 1000
            # the stream's own per-frame time over the same span, for a like-for-like ratio
            own = session.frame_times[:n_base]
            own_s = float(np.mean([f["lm_s"] + f["vision_s"] for f in own]))
            last_own = float(np.mean([f["lm_s"] + f["vision_s"] for f in own[-max(1, int(fps * 10)):]]))
            report_baselines["interleaved"] = {
                "minutes": round(n_base / fps / 60, 3), "samples": rows,
                "fps": round(1 / mean_s, 2), "stream_fps_same_span": round(1 / own_s, 2),
                "speedup": round(mean_s / own_s, 2),
                "speedup_at_end": round(rows[-1]["ms_per_frame"] / 1000 / last_own, 2),
                "note": "LM re-run over the whole context per frame, vision features reused (favours the "
                        "baseline); mean over evenly spaced stream positions"}
            log(f"interleaved: {report_baselines['interleaved']['fps']} frames/s over {base_minutes:g} min "
                f"-> stream is {report_baselines['interleaved']['speedup']}x faster "
                f"({report_baselines['interleaved']['speedup_at_end']}x at the end)")
            plain.history_ids, plain.history_frames, plain.history_tags = [], [], []
        del session, plain
        if "per_frame" in baselines:
            s2, wall2, _ = run_stream(model, video, fps, reply_every=reply_every, reply_tokens=reply_tokens,
                                      batch_frames=1, keep_history=False, progress=progress, desc="per-frame",
                                      max_frames=n_base)
            pf = _stream_summary(s2, wall2)
            report_baselines["per_frame"] = {
                "minutes": round(n_base / fps / 60, 3), "fps": pf["fps"], "frame_latency_ms": pf["frame_latency_ms"],
                "vision_ms_per_frame": pf["vision_ms_per_frame"],
                "speedup": round(main["fps"] / pf["fps"], 2) if pf["fps"] else None,
                "note": "vision tower called once per frame instead of in batches ahead of the LM"}
            log(f"per-frame vision: {pf['fps']} frames/s -> stream is {report_baselines['per_frame']['speedup']}x")
            del s2
        if "dynamic_cache" in baselines:
            s3, wall3, rows3 = run_stream(model, video, fps, reply_every=reply_every, reply_tokens=reply_tokens,
                                          batch_frames=batch_frames, keep_history=False, progress=progress,
                                          desc="dynamic cache", max_frames=n_base, kv_cache="dynamic")
            dc = _stream_summary(s3, wall3)
            report_baselines["dynamic_cache"] = {
                "minutes": round(n_base / fps / 60, 3), "fps": dc["fps"], "frame_latency_ms": dc["frame_latency_ms"],
                "speedup": round(main["fps"] / dc["fps"], 2) if dc["fps"] else None,
                "timeline": [{k: r[k] for k in ("t", "kv_length", "latency_ms")} for r in rows3],
                "note": "transformers' DynamicCache (torch.cat per forward) instead of the growing cache"}
            log(f"dynamic cache: {dc['fps']} frames/s -> stream is {report_baselines['dynamic_cache']['speedup']}x")
            del s3
        if "no_copy" in baselines and model.copy_head is None:
            report_baselines["no_copy"] = {"fps": None, "speedup": None,
                                           "note": "this model has no copy head: the stream above runs without one"}
        elif "no_copy" in baselines:
            head, model.config.frames.copy_head = model.config.frames.copy_head, None
            try:
                s5, wall5, _ = run_stream(model, video, fps, reply_every=reply_every, reply_tokens=reply_tokens,
                                          batch_frames=batch_frames, keep_history=False, progress=progress,
                                          desc="no copy", max_frames=n_base)
            finally:
                model.config.frames.copy_head = head
            nc = _stream_summary(s5, wall5)
            report_baselines["no_copy"] = {
                "minutes": round(n_base / fps / 60, 3), "fps": nc["fps"], "frame_latency_ms": nc["frame_latency_ms"],
                "speedup": round(main["fps"] / nc["fps"], 2) if nc["fps"] else None,
                "note": f"the copy head ({head}) switched off; speedup < 1 is what the copy costs"}
            log(f"no copy: {nc['fps']} frames/s -> stream is {report_baselines['no_copy']['speedup']}x")
            del s5
    dev_name, bandwidth = device_bandwidth_gbs(device)
    wbytes = weight_bytes(model)
    bound = None
    if bandwidth:
        bound = {"weight_bytes": wbytes, "bandwidth_gbs": bandwidth,
                 "weight_read_bound_fps": round(bandwidth * 1e9 / wbytes, 2),
                 "measured_fraction_of_bound": round(main["fps"] / (bandwidth * 1e9 / wbytes), 3)}
    return {
        "name": name, "config": {
            "model": name, "device": str(device), "device_name": dev_name, "dtype": str(model.dtype).replace("torch.", ""),
            "parameters": model.num_parameters(), "weight_bytes": wbytes, "minutes": minutes, "fps": fps,
            "frame_size": size, "tokens_per_frame": model.tokens_per_frame, "reply_every_s": reply_every,
            "reply_tokens": reply_tokens, "batch_frames": batch_frames, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()},
        "stream": main, "timeline": timeline, "baselines": report_baselines, "bound": bound,
    }


def plot_report(report: dict, path: str | os.PathLike) -> Path:
    """Latency and memory (KV length, RSS) over stream time, one PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mmlc[plot]' (or pip install matplotlib)") from None
    rows = report["timeline"]
    if not rows:
        raise ConfigError("the stream was too short for a timeline (one row per 10 s of stream): raise --minutes")
    t = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(t, [r["latency_ms"] for r in rows], label="mmlc stream (cached)")
    inter = report["baselines"].get("interleaved")
    if inter:
        axes[0].plot([s["t"] / 60 for s in inter["samples"]], [s["ms_per_frame"] for s in inter["samples"]], "o--",
                     label="interleaved (re-run context)")
    axes[0].set_xlabel("stream time (min)")
    axes[0].set_ylabel("ms per frame")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[1].plot(t, [r["kv_length"] for r in rows], color="C2", label="KV length (tokens)")
    axes[1].set_xlabel("stream time (min)")
    axes[1].set_ylabel("KV length (tokens)")
    if any("rss_mb" in r for r in rows) or any("cuda_mb" in r for r in rows):
        ax2 = axes[1].twinx()
        key = "cuda_mb" if "cuda_mb" in rows[0] else "rss_mb"
        ax2.plot(t, [r.get(key) for r in rows], color="C3", label=key)
        ax2.set_ylabel(key)
    axes[1].legend(loc="upper left")
    c = report["config"]
    fig.suptitle(f"{c['model']} on {c['device_name']} ({c['dtype']}): {report['stream']['fps']} frames/s")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(report: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return path
