"""The mmlc command line: help, stream on a real video file, data, eval, and user errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mmlc.cli import main, parse_ask


def _video(path, n=12, fps=4.0, size=(32, 24)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        frame = np.full((size[1], size[0], 3), 20 * i % 255, np.uint8)
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.parametrize("command", [[], ["stream"], ["chat"], ["data"], ["train"], ["eval"], ["bench"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: mmlc" in capsys.readouterr().out


def test_parse_ask():
    assert parse_ask("12:what colour is the circle?") == (12.0, "what colour is the circle?")
    assert parse_ask("01:30:what is moving?") == (90.0, "what is moving?")
    assert parse_ask("1:00:00:how many: objects?") == (3600.0, "how many: objects?")


def test_stream_video_file(tmp_path, capsys):
    video = _video(tmp_path / "clip.mp4")
    code = main(["stream", str(video), "--model", "tiny-test", "--init", "random", "--trigger", "interval",
                 "--interval", "1", "--max-reply-tokens", "2", "--ask", "1.2:what colour is the room?",
                 "--json", "--no-progress"])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    replies = [e for e in events if e["kind"] == "reply"]
    assert [e["t"] for e in replies] == [0.0, 1.0, 2.0]  # 12 frames at 4 fps, sampled at 2 fps
    answers = [e for e in events if e["kind"] == "answer"]
    assert len(answers) == 1 and answers[0]["question"] == "what colour is the room?" and answers[0]["t"] == 1.2


def test_stream_text_output(tmp_path, capsys):
    video = _video(tmp_path / "clip.mp4")
    assert main(["stream", str(video), "--model", "tiny-test", "--init", "random", "--trigger", "interval",
                 "--interval", "2", "--max-reply-tokens", "1", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and lines[0].startswith("[00:00] ")


@pytest.mark.parametrize("args,message", [
    (["stream", "{tmp}/missing.mp4"], "missing.mp4"),
    (["stream", "{tmp}/clip.mp4", "--fps", "0"], "fps"),
    (["stream", "{tmp}/clip.mp4", "--ask", "what colour?"], "--ask"),
    (["stream", "{tmp}/clip.mp4", "--threshold", "3"], "threshold"),
    (["stream", "{tmp}/clip.mp4", "--model", "no-such-model"], "neither a preset"),
    (["stream", "{tmp}/clip.mp4", "--model", "tiny-test"], "init='random'"),
    (["eval", "narration", "--data", "{tmp}/nothing-here"], "does not exist"),
    (["eval", "narration", "--data", "shapeworld:zero"], "positive integer"),
    (["train", "--recipe", "huge", "--out", "{tmp}/run"], "unknown recipe"),
])
def test_user_errors_exit_2(tmp_path, capsys, args, message):
    _video(tmp_path / "clip.mp4")
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] == "stream" and "--model" not in args:
        args += ["--model", "tiny-test", "--init", "random"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmlc: error:") and message in err and "Traceback" not in err


def test_cli_process_exit_status_and_no_traceback(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "mmlc", "stream", str(tmp_path / "empty.mp4"), "--model", "tiny-test",
                           "--init", "random"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "empty" in proc.stderr and "Traceback" not in proc.stderr


def test_data_shapeworld(tmp_path, capsys):
    assert main(["data", "shapeworld", "--out", str(tmp_path / "d"), "--n", "2", "--duration", "12",
                 "--no-progress"]) == 0
    files = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert files == ["sw1000000000.json", "sw1000000000.mp4", "sw1000000001.json", "sw1000000001.mp4"]


def test_data_mmdu_and_eval_mmdu_exact(tmp_path, capsys):
    data = tmp_path / "sw"
    assert main(["data", "shapeworld", "--kind", "multi-image", "--format", "mmdu", "--out", str(data), "--n", "2",
                 "--no-progress"]) == 0
    bench = json.loads((data / "benchmark.json").read_text())
    assert len(bench) == 2 and all(item["image"] for item in bench)
    out = tmp_path / "out"
    assert main(["eval", "mmdu", "--data", str(data / "benchmark.json"), "--output-dir", str(out), "--scorer", "exact",
                 "--model", "tiny-test", "--init", "random", "--max-reply-tokens", "3", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    n_turns = sum(sum(t["from"] == "assistant" for t in item["conversations"]) for item in bench)
    assert results["n_turns"] == n_turns and 0.0 <= results["scores"]["all"]["accuracy"] <= 1.0
    capsys.readouterr()
    assert main(["data", "shapeworld", "--format", "mmdu", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "--kind multi-image" in capsys.readouterr().err


def test_train_export_float16(tmp_path):
    """mmlc train --export writes a loadable model whose weights file is float16 (half the bytes)."""
    import torch
    from safetensors.torch import load_file

    import mmlc

    run, dest = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "--recipe", "tiny-smoke", "--out", str(run), "--export", str(dest), "--no-progress"]) == 0
    tensors = load_file(str(dest / "model.safetensors"))
    assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.float16}
    full, half = mmlc.load(run / "model"), mmlc.load(dest)
    assert half.dtype == torch.float32
    for (name, a), (_, b) in zip(full.state_dict().items(), half.state_dict().items()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)
