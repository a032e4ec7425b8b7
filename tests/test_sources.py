"""Frame sources on real files written here (opencv / ffmpeg encoders), no mocks.

Frame i of a test video shows the bits of i as black/white vertical stripes in its top half, so it
can be identified after lossy compression (see ``_frame`` / ``_index_of``).

Truncated files, as observed with decord 0.6.0 / opencv 5.0 / ffmpeg 9.0 (imageio-ffmpeg):
* an opencv ``mp4v`` .mp4 keeps its index (moov atom) at the END: cut to 40 % it has no index, so
  every backend refuses it and ``open_source`` raises a clean SourceError before iteration;
* an ffmpeg ``+faststart`` .mp4 or a .mkv keeps its index at the start: cut to 40 % it opens, the
  first ~1 s decodes, then the iterator raises SourceError ("truncated or corrupt") after the
  samples it could decode. decord refuses the cut faststart .mp4 at open (auto falls back to
  opencv); on the cut .mkv decord indexes only the frames present, and the source compares that
  with the duration the container declares.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from mmlc.errors import MmlcError, SourceError
from mmlc.streaming.sources import (
    FFmpegSource,
    FrameSource,
    ImageFolderSource,
    ImageListSource,
    IterableSource,
    VideoFileSource,
    WebcamSource,
    open_source,
)

N_FRAMES, NATIVE_FPS, HEIGHT, WIDTH = 30, 10, 32, 48
ROOT = Path(__file__).resolve().parents[1]

try:
    import decord  # noqa: F401  (optional on non-x86 machines)

    HAS_DECORD = True
except ImportError:
    HAS_DECORD = False

DECORD = pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="no decord"))


# --- test videos -------------------------------------------------------------------------------


def _bits(n_frames: int) -> int:
    return max(1, (n_frames - 1).bit_length())


def _frame(i: int, n_frames: int, height: int, width: int, noise: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB: top half = stripes encoding i; bottom half noise (bigger files)."""
    frame = np.zeros((height, width, 3), np.uint8)
    bits, stripe = _bits(n_frames), width // _bits(n_frames)
    for b in range(bits):
        if (i >> b) & 1:
            frame[: height // 2, b * stripe : (b + 1) * stripe] = 255
    if noise:
        rng = np.random.default_rng(i)
        frame[height // 2 :] = rng.integers(
            0, 256, (height - height // 2, width, 3), dtype=np.uint8
        )
    return frame


def _index_of(frame: np.ndarray, n_frames: int = N_FRAMES) -> int:
    """Inverse of _frame: read the stripes at their centre columns."""
    bits, stripe = _bits(n_frames), frame.shape[1] // _bits(n_frames)
    top = frame[: frame.shape[0] // 2]
    return sum(1 << b for b in range(bits) if top[:, b * stripe + stripe // 2].mean() > 128)


def _write_cv2(
    path: Path, n: int = N_FRAMES, fps: float = NATIVE_FPS, h: int = HEIGHT, w: int = WIDTH
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for i in range(n):
        writer.write(cv2.cvtColor(_frame(i, n, h, w), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _write_ffmpeg(
    path: Path,
    n: int = N_FRAMES,
    fps: float = NATIVE_FPS,
    h: int = HEIGHT,
    w: int = WIDTH,
    noise: bool = False,
    faststart: bool = False,
) -> Path:
    params = ["-movflags", "+faststart"] if faststart else None
    gen = imageio_ffmpeg.write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=params,
    )
    gen.send(None)
    for i in range(n):
        gen.send(_frame(i, n, h, w, noise).tobytes())
    gen.close()
    return path


def _truncate(src: Path, dst: Path, fraction: float = 0.4) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    out = {
        "cv2_mp4": _write_cv2(d / "cv2.mp4"),
        "ff_mkv": _write_ffmpeg(d / "ff.mkv"),
        "ff_mp4": _write_ffmpeg(d / "ff.mp4", faststart=True),
        "ff_1fps": _write_ffmpeg(d / "one_fps.mkv", n=3, fps=1),
        "noisy_mp4": _write_ffmpeg(d / "noisy.mp4", noise=True, faststart=True),
        "noisy_mkv": _write_ffmpeg(d / "noisy.mkv", noise=True),
        "long": _write_ffmpeg(d / "long.mp4", n=600, fps=30, h=64, w=64),
    }
    return out


def _expected(
    fps: float, n: int = N_FRAMES, native: float = NATIVE_FPS
) -> tuple[list[float], list[int]]:
    """The file rule: t_k = k / fps while t_k < n / native; native index floor(t_k * native)."""
    times, indices, k = [], [], 0
    while k / fps < n / native - 1e-6:
        times.append(k / fps)
        indices.append(min(n - 1, int(np.floor(k / fps * native + 1e-6))))
        k += 1
    return times, indices


def _check_samples(
    source: FrameSource,
    fps: float,
    n: int = N_FRAMES,
    native: float = NATIVE_FPS,
    shape: tuple[int, int] = (HEIGHT, WIDTH),
) -> None:
    samples = list(source)
    times, indices = _expected(fps, n, native)
    assert [round(t, 6) for t, _ in samples] == pytest.approx(times, abs=1e-6)
    assert [_index_of(f, n) for _, f in samples] == indices
    assert source.n_frames == len(samples)
    for _, frame in samples:
        assert frame.shape == (*shape, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous


# --- video files: resampling by timestamp ------------------------------------------------------


@pytest.mark.parametrize("backend", [DECORD, "opencv"])
@pytest.mark.parametrize("fps", [2, 20, 10, 3])
def test_cv2_mp4_resampled_by_timestamp(videos: dict[str, Path], backend: str, fps: float) -> None:
    with open_source(videos["cv2_mp4"], fps, backend=backend) as source:
        # width 48 hits decord 0.6's padded-row bug ((32, 48, 4) arrays), undone by the reader
        assert isinstance(source, VideoFileSource) and source.backend == backend
        assert source.native_fps == pytest.approx(10)
        assert source.duration == pytest.approx(3.0, abs=0.01)
        _check_samples(source, fps)


def test_fps_2_gives_every_fifth_frame(videos: dict[str, Path]) -> None:
    samples = list(open_source(videos["cv2_mp4"], 2))
    assert [t for t, _ in samples] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [_index_of(f) for _, f in samples] == [0, 5, 10, 15, 20, 25]


@pytest.mark.parametrize("name", ["ff_mkv", "ff_mp4"])
@pytest.mark.parametrize("fps", [2, 20, 10])
def test_ffmpeg_backend(videos: dict[str, Path], name: str, fps: float) -> None:
    with open_source(videos[name], fps, backend="ffmpeg") as source:
        assert isinstance(source, FFmpegSource) and not source.live
        assert source.native_fps == pytest.approx(10) and source.duration == pytest.approx(3.0)
        _check_samples(source, fps)


@pytest.mark.parametrize("backend", ["auto", DECORD, "opencv", "ffmpeg"])
def test_backends_agree_on_ffmpeg_file(videos: dict[str, Path], backend: str) -> None:
    _check_samples(open_source(videos["ff_mkv"], 3, backend=backend), 3)


@pytest.mark.parametrize("backend", [DECORD, "opencv", "ffmpeg"])
def test_low_fps_file_repeats_frames(videos: dict[str, Path], backend: str) -> None:
    samples = list(open_source(videos["ff_1fps"], 2, backend=backend))
    assert [t for t, _ in samples] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [_index_of(f, 3) for _, f in samples] == [0, 0, 1, 1, 2, 2]
    assert samples[0][1] is not samples[1][1]  # a repeat is its own array


@pytest.mark.parametrize("backend", [DECORD, "opencv", "ffmpeg"])
def test_fps_none_keeps_native_frames(videos: dict[str, Path], backend: str) -> None:
    samples = list(open_source(videos["ff_mkv"], None, backend=backend))
    assert [_index_of(f) for _, f in samples] == list(range(N_FRAMES))
    assert [t for t, _ in samples] == pytest.approx([i / 10 for i in range(N_FRAMES)], abs=1e-3)


def test_ffmpeg_live_mode_drops_by_stream_time(videos: dict[str, Path]) -> None:
    with FFmpegSource(videos["ff_mkv"], 3, live=True) as source:
        samples = list(source)
    # live rule: keep a frame when >= 1/3 s after the last kept one: native 0, 4, 8, ...
    assert [_index_of(f) for _, f in samples] == list(range(0, N_FRAMES, 4))
    assert [t for t, _ in samples] == pytest.approx(
        [i / 10 for i in range(0, N_FRAMES, 4)], abs=1e-3
    )
    assert source.n_frames is None


def test_file_source_iterates_again_from_start(videos: dict[str, Path]) -> None:
    for backend in ("auto", "ffmpeg"):
        source = open_source(videos["ff_mp4"], 2, backend=backend)
        first, second = list(source), list(source)
        assert (
            [_index_of(f) for _, f in first]
            == [_index_of(f) for _, f in second]
            == [0, 5, 10, 15, 20, 25]
        )
        source.close()
        with pytest.raises(SourceError, match="closed"):
            iter(source)


def test_early_exit_stops_ffmpeg(videos: dict[str, Path]) -> None:
    source = FFmpegSource(videos["long"], 30)
    iterator = iter(source)
    next(iterator)
    process = source._counter._proc  # white box: the ffmpeg subprocess of this pass
    assert process.poll() is None
    iterator.close()  # what a `break` out of a for loop does
    assert process.poll() is not None
    source.close()


def test_close_stops_running_iteration(videos: dict[str, Path]) -> None:
    source = open_source(videos["long"], 30, backend="ffmpeg")
    iterator = iter(source)
    next(iterator)
    source.close()
    assert list(iterator) == []


def test_mpegts_auto_avoids_decord(tmp_path: Path) -> None:
    path = _write_ffmpeg(tmp_path / "clip.ts")  # MPEG-TS: decord starts at a wrong frame
    source = open_source(path, 2)
    assert source.backend == "opencv"
    assert [_index_of(f) for _, f in source] == [0, 5, 10, 15, 20, 25]
    if HAS_DECORD:
        try:
            forced = [_index_of(f) for _, f in open_source(path, 2, backend="decord")]
        except SourceError as err:
            assert "backend='auto'" in str(err) or "backend='opencv'" in str(err)
        else:
            assert forced == [0, 5, 10, 15, 20, 25]


@pytest.mark.skipif(not HAS_DECORD, reason="no decord")
def test_decord_on_flv_does_not_hang(tmp_path: Path) -> None:
    # decord's skip_frames() spins forever on FLV / MPEG-TS; the reader only uses next().
    path = _write_ffmpeg(tmp_path / "clip.flv")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_sources as T; "
        "from mmlc.streaming.sources import open_source; "
        "print([T._index_of(f) for _, f in open_source(sys.argv[2], 2, backend='decord')])"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[0, 5, 10, 15, 20, 25]"


# --- laziness -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [DECORD, "opencv"])
def test_decoding_is_lazy(videos: dict[str, Path], backend: str) -> None:
    source = open_source(videos["long"], 2, backend=backend)
    iterator = iter(source)
    t, frame = next(iterator)
    assert (t, _index_of(frame, 600)) == (0.0, 0)
    assert source.frames_decoded <= 2  # nothing decoded ahead of the first sample
    next(iterator)  # t = 0.5 s = native frame 15
    assert source.frames_decoded <= 20
    iterator.close()


@pytest.mark.parametrize("backend", [DECORD, "opencv", "ffmpeg"])
def test_memory_stays_small_over_a_long_file(videos: dict[str, Path], backend: str) -> None:
    source = open_source(videos["long"], None, backend=backend)  # all 600 frames (7.4 MB total)
    tracemalloc.start()
    try:
        count = sum(1 for _ in source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 600
    assert peak < 2_000_000, f"peak {peak} bytes: frames are being accumulated"


# --- bad video inputs ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"'.*nope\.mp4' does not exist: check the path"):
        open_source(tmp_path / "nope.mp4")


@pytest.mark.parametrize("backend", ["auto", DECORD, "opencv", "ffmpeg"])
def test_empty_file(tmp_path: Path, backend: str) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(SourceError, match=r"is empty \(0 bytes\): pass a video that has frames"):
        open_source(tmp_path / "clip.mp4", backend=backend)


@pytest.mark.parametrize("backend", ["auto", DECORD, "opencv", "ffmpeg"])
def test_text_file_named_mp4(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(
        SourceError, match=r"'.*notes\.mp4' could not be opened as a video .*ffmpeg -i"
    ):
        open_source(path, backend=backend)


def test_zero_frame_video(tmp_path: Path) -> None:
    path = tmp_path / "zero.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (WIDTH, HEIGHT))
    writer.release()  # a container without frames
    assert path.stat().st_size > 0
    with pytest.raises(
        SourceError, match="has no decodable video frames.*pass a video that has frames"
    ):
        open_source(path)


def _run_until_error(path: Path, backend: str) -> tuple[str, list[int], SourceError]:
    """('open' | 'iteration', native indices yielded before the error, the error)."""
    try:
        source = open_source(path, 2, backend=backend)
    except SourceError as err:
        return "open", [], err
    seen: list[int] = []
    with pytest.raises(SourceError) as info:
        for _, frame in source:
            seen.append(_index_of(frame))
    return "iteration", seen, info.value


@pytest.mark.parametrize("backend", ["auto", DECORD, "opencv", "ffmpeg"])
def test_truncated_cv2_mp4_fails_before_iteration(
    videos: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    cut = _truncate(videos["cv2_mp4"], tmp_path / "cut.mp4")
    phase, seen, err = _run_until_error(cut, backend)
    assert phase == "open" and "cut.mp4" in str(err)


@pytest.mark.parametrize("name", ["noisy_mp4", "noisy_mkv"])
@pytest.mark.parametrize("backend", ["auto", DECORD, "opencv", "ffmpeg"])
def test_truncated_indexed_file_fails_mid_iteration(
    videos: dict[str, Path], tmp_path: Path, name: str, backend: str
) -> None:
    cut = _truncate(videos[name], tmp_path / f"cut{videos[name].suffix}")
    phase, seen, err = _run_until_error(cut, backend)
    if phase == "open":  # only decord refuses the cut faststart mp4 (auto falls back to opencv)
        assert (name, backend) == ("noisy_mp4", "decord")
        assert "could not be opened" in str(err)
        return
    assert seen and seen == [0, 5, 10, 15, 20, 25][: len(seen)] and len(seen) < 6
    assert "truncated or corrupt" in str(err) and "re-download" in str(err)


def test_webcam_that_does_not_exist() -> None:
    with pytest.raises(
        SourceError, match=r"webcam:7 could not be opened: no camera at index 7.*webcam:0"
    ):
        open_source("webcam:7")
    with pytest.raises(SourceError, match="webcam spec 'webcam:x' is invalid"):
        open_source("webcam:x")
    with pytest.raises(SourceError, match="no camera at index 9"):
        WebcamSource(9)


@pytest.mark.parametrize("fps, shown", [(0, "0"), (-1, "-1"), (float("nan"), "nan")])
def test_bad_fps(videos: dict[str, Path], fps: float, shown: str) -> None:
    with pytest.raises(SourceError, match=rf"fps must be > 0, got {shown}: pass e.g. --fps 2"):
        open_source(videos["cv2_mp4"], fps)


def test_fps_not_a_number(videos: dict[str, Path]) -> None:
    with pytest.raises(SourceError, match=r"fps must be a number > 0, got '2' \(str\)"):
        open_source(videos["cv2_mp4"], "2")  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="got True"):
        open_source(videos["cv2_mp4"], True)


def test_unknown_backend_and_types(videos: dict[str, Path]) -> None:
    with pytest.raises(SourceError, match="backend 'pyav' is unknown: use one of auto"):
        open_source(videos["cv2_mp4"], backend="pyav")
    with pytest.raises(SourceError, match="cannot open a int as a frame source"):
        open_source(42)
    with pytest.raises(SourceError, match=r"numpy.ndarray as a frame source.*\[\(0.0, frame\)\]"):
        open_source(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(SourceError, match="is a folder"):
        VideoFileSource(videos["cv2_mp4"].parent)


def test_unreachable_stream_url() -> None:
    with pytest.raises(
        SourceError, match=r"stream 'tcp://127.0.0.1:1' could not be opened .*check the URL"
    ):
        open_source("tcp://127.0.0.1:1", 2)


def test_errors_are_mmlc_errors(tmp_path: Path) -> None:
    with pytest.raises(MmlcError):
        open_source(tmp_path / "missing.mkv")


# --- image folders and lists ------------------------------------------------------------------


def _image_folder(folder: Path) -> list[np.ndarray]:
    """img1 (gray), img2 (RGBA), img10 (16-bit gray), img11 (odd size RGB); expected RGB frames."""
    folder.mkdir(exist_ok=True)
    gray = np.full((20, 30), 100, np.uint8)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # red at half alpha -> 100 on black
    deep = np.full((20, 30), 40000, np.uint16)
    odd = np.zeros((17, 33, 3), np.uint8)
    odd[..., 2] = 250
    Image.fromarray(gray).save(folder / "img1.png")
    Image.fromarray(rgba, mode="RGBA").save(folder / "img2.png")
    Image.fromarray(deep).save(folder / "img10.png")
    Image.fromarray(odd).save(folder / "img11.bmp")
    (folder / "notes.txt").write_text("not an image")
    expected_rgba = np.zeros((20, 30, 3), np.uint8)
    expected_rgba[..., 0] = 100
    return [
        np.repeat(gray[..., None], 3, 2),
        expected_rgba,
        np.full((20, 30, 3), 40000 >> 8, np.uint8),
        odd,
    ]


def test_image_folder(tmp_path: Path) -> None:
    expected = _image_folder(tmp_path / "frames")
    source = open_source(tmp_path / "frames", 4)
    assert isinstance(source, ImageFolderSource) and source.n_frames == 4
    samples = list(source)
    assert [t for t, _ in samples] == [0.0, 0.25, 0.5, 0.75]
    for (_, frame), want in zip(samples, expected):
        assert frame.dtype == np.uint8 and frame.flags.c_contiguous
        np.testing.assert_allclose(frame.astype(int), want.astype(int), atol=1)


def test_image_list(tmp_path: Path) -> None:
    expected = _image_folder(tmp_path / "frames")
    paths = [tmp_path / "frames" / "img11.bmp", str(tmp_path / "frames" / "img1.png")]
    source = open_source(paths, 1)
    assert isinstance(source, ImageListSource)
    samples = list(source)
    assert [t for t, _ in samples] == [0.0, 1.0]
    assert np.array_equal(samples[0][1], expected[3]) and np.array_equal(samples[1][1], expected[0])


def test_image_list_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"image 1 of the list, '.*gone\.png', does not exist"):
        _image_folder(tmp_path / "f")
        open_source([tmp_path / "f" / "img1.png", tmp_path / "gone.png"])
    with pytest.raises(SourceError, match="empty"):
        open_source([])


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"image folder '.*empty' has no images .*add frames"):
        open_source(tmp_path / "empty")


def test_folder_with_unreadable_image(tmp_path: Path) -> None:
    _image_folder(tmp_path / "frames")
    (tmp_path / "frames" / "img3.png").write_bytes(b"\x89PNG broken")
    seen = []
    with pytest.raises(SourceError, match=r"image file '.*img3\.png' is not an image PIL can read"):
        for t, _ in open_source(tmp_path / "frames", 2):
            seen.append(t)
    assert seen == [0.0, 0.5]  # img1, img2 came before img3


def test_image_folder_needs_fps(tmp_path: Path) -> None:
    _image_folder(tmp_path / "frames")
    with pytest.raises(SourceError, match="need an fps"):
        open_source(tmp_path / "frames", None)


def test_natural_sort(tmp_path: Path) -> None:
    folder = tmp_path / "nat"
    folder.mkdir()
    for i in (10, 2, 1, 33, 3):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(folder / f"frame{i}.png")
    values = [int(frame[0, 0, 0]) for _, frame in open_source(folder, 1)]
    assert values == [1, 2, 3, 10, 33]


# --- iterables of (t, frame) ------------------------------------------------------------------


def _pairs(n: int, step: float = 0.1) -> list[tuple[float, np.ndarray]]:
    return [(round(i * step, 6), np.full((8, 6), i, np.uint8)) for i in range(n)]


def test_iterable_resampled_by_live_rule() -> None:
    samples = list(open_source(_pairs(25), 2))
    assert isinstance(open_source(_pairs(2), 2), IterableSource)
    assert [t for t, _ in samples] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [int(f[0, 0, 0]) for _, f in samples] == [0, 5, 10, 15, 20]
    assert all(f.shape == (8, 6, 3) for _, f in samples)


def test_iterable_generator_and_fps_none() -> None:
    generator = ((t, frame) for t, frame in _pairs(7))
    samples = list(IterableSource(generator, fps=None))
    assert [int(f[0, 0, 0]) for _, f in samples] == list(range(7))
    assert IterableSource(_pairs(7)).n_frames == 7


def test_iterable_jittered_times_keep_min_gap() -> None:
    times = [0.0, 0.3, 0.49, 0.52, 0.9, 1.0, 1.05, 1.6]
    samples = list(open_source([(t, np.zeros((2, 2, 3), np.uint8)) for t in times], 2))
    assert [t for t, _ in samples] == [0.0, 0.52, 1.05, 1.6]


def test_iterable_decreasing_time() -> None:
    items = [
        (0.0, np.zeros((4, 4), np.uint8)),
        (1.0, np.zeros((4, 4), np.uint8)),
        (0.5, np.zeros((4, 4), np.uint8)),
    ]
    seen = []
    with pytest.raises(
        SourceError, match=r"sample 2 of 'frames' goes back in time \(0.5 s after 1.0 s\)"
    ):
        for t, _ in open_source(items, None):
            seen.append(t)
    assert seen == [0.0, 1.0]


def test_iterable_bad_items() -> None:
    with pytest.raises(SourceError, match="sample 0 of 'frames' is a float, not a"):
        list(open_source((0.0, np.zeros((2, 2), np.uint8)), 2))
    with pytest.raises(SourceError, match="sample 1 of 'frames' has time 'x'"):
        list(IterableSource([(0, np.zeros((2, 2), np.uint8)), ("x", np.zeros((2, 2), np.uint8))]))
    with pytest.raises(SourceError, match=r"frame at t=0.0 s of 'frames': .*shape \(2, 2, 7\)"):
        list(IterableSource([(0.0, np.zeros((2, 2, 7), np.uint8))]))


def test_frame_source_passes_through(videos: dict[str, Path]) -> None:
    source = open_source(videos["cv2_mp4"], 2)
    assert open_source(source, 5) is source and source.fps == 2
    source.close()


def test_http_stream_from_a_local_server(videos: dict[str, Path]) -> None:
    """A network source: an mp4 served over HTTP on 127.0.0.1 (a real server) streams through ffmpeg
    and gives the same frames, resampled by timestamp, as the file."""
    import functools
    import http.server
    import threading

    folder = videos["ff_mp4"].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{videos['ff_mp4'].name}"
        with open_source(url, 2) as source:
            assert isinstance(source, FFmpegSource)
            got = list(source)
        with open_source(videos["ff_mp4"], 2, backend="ffmpeg") as source:
            want = list(source)
    finally:
        server.shutdown()
    assert len(got) == len(want) >= 5
    assert [_index_of(f) for _, f in got] == [_index_of(f) for _, f in want]
