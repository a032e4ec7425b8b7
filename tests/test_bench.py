"""``mmlc bench`` end to end on a tiny random model (structure only; timings are never asserted),
and the speed paths (batched vision ahead of the LM, the interleaved re-run) against the plain path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmlc.bench import interleaved_cost, run_bench, synthetic_frames, write_synthetic_video
from mmlc.cli import main
from mmlc.errors import ConfigError
from mmlc.streaming.sources import open_source


def test_bench_cli_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--preset", "tiny-test", "--init", "random", "--minutes", "0.25", "--reply-every", "5",
                 "--reply-tokens", "3", "--samples", "3", "--size", "32", "--json", str(out), "--plot", str(png),
                 "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads(out.read_text())
    assert summary["frames"] == report["stream"]["frames"] == 30          # 15 s at 2 fps
    s = report["stream"]
    assert s["fps"] > 0 and set(s["frame_latency_ms"]) == {"p50", "p95", "p99", "mean"}
    assert s["frame_latency_ms"]["p50"] <= s["frame_latency_ms"]["p99"]
    assert s["replies"] == 2                                               # questions at 5 s and 10 s (15 s: end)
    assert s["reply_first_token_ms"]["p50"] > 0 and s["reply_per_token_ms"]["p50"] > 0
    # 30 frames x (1 interval + tokens per frame) + 2 answers of exactly 3 tokens + {end}, and prompts
    tpf = report["config"]["tokens_per_frame"]
    # tiny-test has a memory bridge: the stream folds scenes (a cut at least every 4 s) and its KV stays
    # small; the no-memory baseline keeps every frame
    nm = report["baselines"]["no_memory"]
    assert nm["fps"] > 0 and nm["kv_length_final"] > 30 * (tpf + 1) + 2 * 4
    assert s["kv_length_final"] < nm["kv_length_final"] / 2
    rows = report["timeline"]
    assert len(rows) >= 2 and all(r["rss_mb"] > 0 for r in rows)
    assert all(b["kv_length"] > a["kv_length"] for a, b in zip(nm["timeline"], nm["timeline"][1:]))
    inter = report["baselines"]["interleaved"]
    assert len(inter["samples"]) == 3 and inter["samples"][0]["frame"] == 0 and inter["samples"][-1]["frame"] == 29
    assert [r["context_tokens"] for r in inter["samples"]] == sorted(r["context_tokens"] for r in inter["samples"])
    assert inter["fps"] > 0 and inter["speedup"] > 0
    assert report["baselines"]["per_frame"]["fps"] > 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_bench_bad_input(capsys):
    assert main(["bench", "--preset", "tiny-test", "--init", "random", "--minutes", "0", "--no-progress"]) == 2
    assert "--minutes" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny-test", "--init", "random", "--minutes", "0.1", "--baselines", "fast",
                 "--no-progress"]) == 2
    assert "unknown baselines" in capsys.readouterr().err


def test_run_bench_rejects_bad_reply_tokens(tiny_model):
    with pytest.raises(ConfigError, match="reply-tokens"):
        run_bench(tiny_model, minutes=0.1, reply_tokens=0, progress=False)


def test_synthetic_video_round_trip(tmp_path):
    path = write_synthetic_video(tmp_path / "v.mp4", seconds=5, fps=2, size=32)
    got = list(open_source(str(path), fps=2))
    assert len(got) == 10
    assert got[0][1].shape == (32, 32, 3)
    first = next(synthetic_frames(1, 32))
    assert np.abs(got[0][1].astype(int) - first.astype(int)).mean() < 12   # lossy codec, same picture


def test_batched_vision_equals_per_frame(tiny_model, frames):
    """Encoding frames in batches ahead of the LM gives the same decisions as one at a time."""
    a = tiny_model.stream(fps=2, threshold=0.5, batch_frames=8, keep_history=True)
    b = tiny_model.stream(fps=2, threshold=0.5, batch_frames=1, keep_history=True)
    ev_a = list(a.feed([(i / 2, f) for i, f in enumerate(frames)]))
    ev_b = list(b.feed([(i / 2, f) for i, f in enumerate(frames)]))
    strip = lambda evs: [{k: v for k, v in e.to_dict().items() if k != "p_silent"} for e in evs]  # noqa: E731
    assert strip(ev_a) == strip(ev_b) and len(ev_a) > 0
    assert [e.p_silent for e in ev_a] == pytest.approx([e.p_silent for e in ev_b], rel=1e-4, abs=1e-6)
    torch.testing.assert_close(torch.cat(a.history_frames), torch.cat(b.history_frames), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.last_logits, b.last_logits, atol=1e-4, rtol=1e-4)


def test_interleaved_rerun_matches_cached_decision(tiny_model, frames):
    """The baseline computes the same thing as the stream, only without a cache."""
    s = tiny_model.stream(fps=2, threshold=0.0, keep_history=True)   # never speaks: context is frames only
    list(s.feed([(i / 2, f) for i, f in enumerate(frames)]))
    _, length = interleaved_cost(tiny_model, s, len(frames) - 1, repeats=1)
    assert length == len(s.history_ids)
    ids = torch.tensor([s.history_ids])
    with torch.inference_mode():
        full = tiny_model(ids, frame_tokens=torch.cat(s.history_frames), logits_to_keep=1).logits[0, -1]
    torch.testing.assert_close(full, s.last_logits, atol=1e-4, rtol=1e-4)
