"""Frame sources: video files, image folders, webcams, network streams and Python iterables.

Every source is an iterable of ``(t_seconds, frame)`` where ``frame`` is an (H, W, 3) uint8 RGB
C-contiguous array; :func:`open_source` picks the source for what the user passed. Frames are
decoded lazily, one at a time (a two-hour video is never held in memory); each yielded sample is
its own array (a repeated frame is yielded as a copy of the earlier sample).

Resampling to the requested ``fps``
-----------------------------------
*Files* (video files, :class:`VideoFileSource` and :class:`FFmpegSource` on a file) use a fixed
grid. Native frame timestamps are shifted so that the first frame is at 0. Output sample ``k`` has
time ``t_k = k / fps`` (k = 0, 1, ...) and shows the latest native frame whose timestamp is
``<= t_k + EPS``, with ``EPS = 1 µs`` (absorbs float rounding; decord's float32 timestamps are
first snapped to the 1 / avg_fps grid when they are within float32 rounding of it). Samples
are emitted while ``t_k < end - EPS``, where ``end`` is the last frame's timestamp plus its
duration (``1 / native_fps``), i.e. the video's duration. So a 10 fps file of 30 frames
(end = 3.0 s) gives, at fps=2, native frames 0, 5, ..., 25 at t = 0, 0.5, ..., 2.5; at fps=20
every frame twice; at fps=10 every frame once. The ffmpeg backend gets the same
grid from ffmpeg's own filter (``setpts=PTS-STARTPTS,fps=fps=F:round=up``: slot k takes the last
frame with ``ceil(ts * F) <= k``, i.e. ``ts <= t_k``).

*Image folders / lists* give image ``i`` at ``t = i / fps`` (no resampling).

*Live sources* (webcam, network streams, ``FFmpegSource(live=True)``, Python iterables) emit
frames as they arrive and drop a frame unless its time is at least ``1 / fps - EPS`` after the
previously emitted one. Times are measured from the first frame: wall clock for webcams, stream
timestamps for ffmpeg streams, the given ``t`` (unchanged) for iterables.

``fps=None`` keeps every native frame (at its own timestamp, from 0) for video files, streams,
webcams and iterables; image folders / lists need a number.

Errors
------
Inputs that cannot work (missing / empty / undecodable file, no frames, bad fps, unknown camera)
raise :class:`~mmlc.errors.SourceError` from :func:`open_source`, before any frame is decoded.
Failures that only show while decoding (a truncated file, an unreadable image in a folder, a
stream that drops) raise ``SourceError`` from the iterator at that point; samples already yielded
stay yielded. A video is "truncated" when decoding stops more than ``max(1 s, 10 %)`` short of the
duration its container declares (opencv: frame count / fps, also used to check decord; ffmpeg:
``Duration:``), or, with ffmpeg, when it logs damaged input ("partial file", "corrupt input
packet", ...). decord and opencv log decoder warnings straight to the process's stderr (C
level); ffmpeg's log is captured and quoted in messages. A file whose index sits at its end
(e.g. an opencv-written mp4) and is cut short cannot be opened at all: that is an open-time
SourceError.

Backend notes: decord 0.6 mis-reports (H, W, 4+) for some widths (rows padded to an alignment;
undone here), reports no timestamps (AV_NOPTS) for some small mkv / avi files (then frame i is
at i / avg_fps), hangs forever in skip_frames() / seeking on MPEG-TS and FLV (so it is only
driven with next() here), and starts MPEG-TS files at a wrong frame (so "auto" skips decord for
.ts / .m2ts / .mts, and decord is refused whenever its first frame differs from opencv's).
"auto" tries decord, then opencv, then ffmpeg.
"""

from __future__ import annotations

import math
import numbers
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mmlc.errors import SourceError
from mmlc.streaming.images import load_image, to_rgb_uint8

__all__ = [
    "FFmpegSource",
    "FrameSource",
    "ImageFolderSource",
    "ImageListSource",
    "IterableSource",
    "VideoFileSource",
    "VideoInfo",
    "WebcamSource",
    "open_source",
]

EPS = 1e-6
"""Timestamp tolerance in seconds used by the resampling rules (see module docstring)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
FILE_BACKENDS = ("auto", "decord", "opencv", "ffmpeg")

_DECORD_UNSAFE_SUFFIXES = (".ts", ".m2ts", ".mts", ".m2t")
_WEBCAM_RE = re.compile(r"^webcam(?::(.*))?$", re.IGNORECASE)
_TRUNCATION_SLACK_S = 1.0
_TRUNCATION_SLACK_FRACTION = 0.1
_REENCODE_HINT = "re-encode it, e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4"

Sample = tuple[float, np.ndarray]


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder found when it opened a video.

    ``declared_duration`` is what the container claims (used to detect truncated files);
    ``duration`` is the best known length of the decodable video in seconds.
    """

    backend: str
    width: int
    height: int
    native_fps: Optional[float]
    duration: Optional[float]
    n_native: Optional[int]
    declared_duration: Optional[float]


# =============================================================================================
# Base class
# =============================================================================================


class FrameSource:
    """Iterable of ``(t_seconds, frame)``; frame is (H, W, 3) uint8 RGB. Also a context manager.

    Subclasses implement :meth:`_samples` (a generator) and may override :meth:`_release`.
    """

    def __init__(
        self,
        name: str,
        fps: Optional[float],
        *,
        native_fps: Optional[float] = None,
        duration: Optional[float] = None,
    ) -> None:
        self.name: str = name
        self.fps: Optional[float] = fps
        self.native_fps: Optional[float] = native_fps
        self.duration: Optional[float] = duration
        self._closed = False

    @property
    def n_frames(self) -> Optional[int]:
        """Expected number of output samples, or None when unknown (live sources)."""
        return None

    def __iter__(self) -> Iterator[Sample]:
        if self._closed:
            raise SourceError(
                f"source '{self.name}' is closed: open it again with open_source({self.name!r})"
            )
        return self._until_closed(self._samples())

    def _until_closed(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        """Pass samples through; stop (without decoding more) once close() was called."""
        try:
            for sample in samples:
                yield sample
                if self._closed:
                    return
        finally:
            close = getattr(samples, "close", None)
            if close is not None:
                close()  # runs the subclass generator's cleanup now, not at garbage collection

    def _samples(self) -> Iterator[Sample]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop decoding and release files, processes and cameras. Safe to call twice."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Release resources held by the source (subclass hook)."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fps={self.fps})"


# =============================================================================================
# open_source
# =============================================================================================


def open_source(source: Any, fps: Optional[float] = 2.0, *, backend: str = "auto") -> FrameSource:
    """Open ``source`` as a :class:`FrameSource` resampled to ``fps`` (see module docstring).

    ``source``: a FrameSource (returned as is), ``"webcam"`` / ``"webcam:N"``, a stream URL
    (rtsp/rtmp/http(s)/udp/tcp/srt), an image folder, a video file path, a list/tuple of image
    paths, or an iterable of ``(t, frame)`` pairs. ``backend`` ("auto", "decord", "opencv",
    "ffmpeg") applies to video files; "ffmpeg" also forces :class:`FFmpegSource`.
    """
    if isinstance(source, FrameSource):
        return source
    fps = _check_fps(fps)
    if backend not in FILE_BACKENDS:
        raise SourceError(f"backend {backend!r} is unknown: use one of {', '.join(FILE_BACKENDS)}")
    if isinstance(source, (str, os.PathLike)):
        return _open_text_source(os.fspath(source), fps, backend)
    if isinstance(source, (list, tuple)):
        return _open_sequence(source, fps)
    if isinstance(source, (bytes, bytearray, dict, np.ndarray)) or not isinstance(source, Iterable):
        raise SourceError(
            f"cannot open a {_type_name(source)} as a frame source: pass a video path, an image "
            "folder, a list of image paths, 'webcam[:N]', a stream URL, or an iterable of "
            "(t, frame) pairs (a single frame: [(0.0, frame)])"
        )
    return IterableSource(source, fps)


def _open_text_source(text: Any, fps: Optional[float], backend: str) -> FrameSource:
    """Dispatch a str / PathLike: webcam spec, URL, folder or video file."""
    if not isinstance(text, str):
        raise SourceError(f"path {text!r} is bytes: pass it as str (e.g. path.decode())")
    match = _WEBCAM_RE.match(text.strip())
    if match:
        return WebcamSource(_parse_webcam_index(text.strip(), match.group(1)), fps)
    if _is_url(text):
        return FFmpegSource(text, fps)
    path = Path(text).expanduser()
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isalpha() and not path.exists():
        raise SourceError(
            f"stream URL '{text}' has an unsupported scheme '{scheme}': use one of "
            f"{', '.join(URL_SCHEMES)}, or pass a local file path"
        )
    if path.is_dir():
        return ImageFolderSource(path, fps)
    if backend == "ffmpeg":
        return FFmpegSource(text, fps, live=False)
    return _open_video_file(text, fps, backend)


def _open_video_file(path: str, fps: Optional[float], backend: str) -> FrameSource:
    """VideoFileSource, falling back to FFmpegSource when backend is auto and both fail."""
    try:
        return VideoFileSource(path, fps, backend=backend)
    except _Undecodable as first:
        if backend != "auto":
            raise
        try:
            return FFmpegSource(path, fps, live=False)
        except _Undecodable as second:
            raise _Undecodable.merge(path, first.failures + second.failures) from None


def _open_sequence(items: Sequence[Any], fps: Optional[float]) -> FrameSource:
    """A list/tuple: image paths -> ImageListSource; anything else -> IterableSource."""
    if len(items) == 0:
        raise SourceError(
            "the list of frames is empty: pass image paths or (t, frame) pairs (at least one)"
        )
    if all(isinstance(item, (str, os.PathLike)) for item in items):
        return ImageListSource(items, fps)
    return IterableSource(items, fps)


def _check_fps(fps: Any) -> Optional[float]:
    """Validate a requested fps: a finite number > 0, or None (keep every frame)."""
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise SourceError(
            f"fps must be a number > 0, got {fps!r} ({type(fps).__name__}): pass e.g. --fps 2"
        )
    value = float(fps)
    if not math.isfinite(value) or value <= 0:
        shown = int(value) if math.isfinite(value) and value.is_integer() else value
        raise SourceError(f"fps must be > 0, got {shown}: pass e.g. --fps 2")
    return value


def _is_url(text: str) -> bool:
    """True for ``scheme://...`` with a stream scheme ffmpeg can read."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def _type_name(value: object) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


# =============================================================================================
# Resampling rules (pure functions)
# =============================================================================================


def _count_samples(
    duration: Optional[float], fps: Optional[float], n_native: Optional[int]
) -> Optional[int]:
    """Samples on the file grid: #k with k / fps < duration - EPS (native count when fps None)."""
    if fps is None:
        return n_native
    if duration is None:
        return None
    return max(0, math.ceil((duration - EPS) * fps))


def _grid_plan(starts: Sequence[float], end: float, fps: float) -> Iterator[tuple[float, int]]:
    """File rule on known timestamps: yield (t_k, index of the native frame shown at t_k).

    ``starts``: native frame timestamps, non-decreasing, starts[0] == 0; ``end``: video end.
    """
    n, j, k = len(starts), 0, 0
    while n:
        t = k / fps
        if t >= end - EPS:
            return
        while j + 1 < n and starts[j + 1] <= t + EPS:
            j += 1
        yield t, j
        k += 1


def _grid_stream(
    native: Iterable[tuple[float, np.ndarray]], fps: float, period: float
) -> Iterator[Sample]:
    """File rule on a stream of (timestamp, frame) decoded in order (timestamps made from 0).

    ``period`` is the duration of the last frame (1 / native fps).
    """
    k, held, held_ts, shown = 0, None, 0.0, False
    for ts, frame in _from_zero(native, period):
        while held is not None and k / fps < ts - EPS:
            yield k / fps, (held.copy() if shown else held)
            shown, k = True, k + 1
        held, held_ts, shown = frame, ts, False
    while held is not None and k / fps < held_ts + period - EPS:
        yield k / fps, (held.copy() if shown else held)
        shown, k = True, k + 1


def _from_zero(native: Iterable[tuple[float, Any]], period: float) -> Iterator[tuple[float, Any]]:
    """Shift timestamps so the first is 0; a timestamp that does not increase gets prev + period."""
    origin: Optional[float] = None
    previous = -math.inf
    for ts, item in native:
        if origin is None:
            origin = ts
        t = ts - origin
        if t <= previous:
            t = previous + period
        previous = t
        yield t, item


def _live_rate(
    items: Iterable[tuple[float, Any]], fps: Optional[float]
) -> Iterator[tuple[float, Any]]:
    """Live rule: keep an item only if its time is >= 1/fps - EPS after the last kept one."""
    last: Optional[float] = None
    for t, item in items:
        if fps is None or last is None or t - last >= 1.0 / fps - EPS:
            last = t
            yield t, item


def _check_complete(name: str, backend: str, decoded_end: float, declared: Optional[float]) -> None:
    """Raise SourceError when decoding stopped clearly before the declared duration."""
    if declared is None or not math.isfinite(declared) or declared <= 0:
        return
    slack = max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRACTION * declared)
    if declared - decoded_end > slack:
        raise SourceError(
            f"video file '{name}' is truncated or corrupt: decoding ({backend}) stopped at "
            f"{decoded_end:.2f} s of the {declared:.2f} s its container declares: re-download "
            f"the file or {_REENCODE_HINT}"
        )


# =============================================================================================
# Video files: path checks and decoder failures
# =============================================================================================


class _Undecodable(SourceError):
    """No backend could open a video file; ``failures`` is [(backend, reason, no_frames)]."""

    def __init__(self, message: str, failures: list[tuple[str, str, bool]]) -> None:
        super().__init__(message)
        self.failures = failures

    @classmethod
    def merge(cls, name: str, failures: list[tuple[str, str, bool]]) -> "_Undecodable":
        """One error for all failed backends, phrased as "no frames" when any backend says so."""
        details = "; ".join(f"{backend}: {reason}" for backend, reason, _ in failures)
        if any(no_frames for _, _, no_frames in failures):
            message = (
                f"video file '{name}' has no decodable video frames ({details}): pass a video "
                "that has frames (re-download it if it was cut short)"
            )
        else:
            message = (
                f"video file '{name}' could not be opened as a video ({details}): check that it "
                f"is a video (ffmpeg -i '{name}') or {_REENCODE_HINT}"
            )
        if len(failures) == 1:
            message += f" (only {failures[0][0]} was tried: backend='auto' tries all backends)"
        return cls(message, failures)


class _OpenFailed(Exception):
    """A single backend could not open a file (internal; becomes part of an _Undecodable)."""

    def __init__(self, reason: str, no_frames: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.no_frames = no_frames


def _check_video_path(path: str) -> Path:
    """Fail early for a missing, folder, unreadable or empty video path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(
            f"video file '{path}' does not exist: check the path (relative to {os.getcwd()})"
        )
    if p.is_dir():
        raise SourceError(
            f"video file '{path}' is a folder: pass a video file, or open_source('{path}') to "
            "read the folder's images"
        )
    if not os.access(p, os.R_OK):
        raise SourceError(
            f"video file '{path}' cannot be read (permission denied): fix its permissions"
        )
    if p.stat().st_size == 0:
        raise SourceError(f"video file '{path}' is empty (0 bytes): pass a video that has frames")
    return p


def _short(err: BaseException) -> str:
    """Last line of an exception message without decord's "[time] file.cc:N: Check failed" noise."""
    lines = str(err).strip().splitlines()
    line = lines[-1] if lines else type(err).__name__
    line = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", line)
    line = re.sub(r"^Check failed: .*\(\S+ vs\. \S+\)\s*", "", line)
    return line[:200]


# =============================================================================================
# Decoders: one pass over a file each
# =============================================================================================


class _DecordReader:
    """decord decoder: knows every frame timestamp up front (so the sample plan is exact),
    decodes sequentially with next() and copies out only the frames the plan needs."""

    backend = "decord"

    def __init__(self, path: Path) -> None:
        self._vr: Any = None
        self._path = path
        try:
            import decord
        except ImportError:
            raise _OpenFailed("decord is not installed") from None
        try:
            self._vr = decord.VideoReader(str(path))
            n = len(self._vr)
        except Exception as err:  # decord raises RuntimeError / DECORDError / AssertionError
            raise _OpenFailed(_short(err), no_frames=_means_no_frames(str(err))) from None
        if n <= 0:
            raise _OpenFailed("decord found 0 frames", no_frames=True)
        try:
            stamps = np.asarray(self._vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)
            fps = float(self._vr.get_avg_fps())
            self._first = self._decode_next()
        except Exception as err:
            raise _OpenFailed(f"decord could not read the first frame ({_short(err)})") from None
        self.native_fps = fps if math.isfinite(fps) and fps > 0 else None
        self.starts, self.end = self._timeline(stamps, self.native_fps)
        self.frames_decoded = 1
        self._pos = 1  # index vr.next() returns next
        h, w = self._first.shape[:2]
        declared, reference = _opencv_probe(path)
        if reference is not None and not _same_picture(self._first, reference):
            raise _OpenFailed(
                "decord's first frame differs from opencv's (decord mis-seeks in some containers, "
                "e.g. MPEG-TS): use backend='opencv'"
            )
        self.info = VideoInfo("decord", w, h, self.native_fps, self.end, n, declared)

    @staticmethod
    def _timeline(stamps: np.ndarray, fps: Optional[float]) -> tuple[list[float], float]:
        """Frame start times from 0 and the video end, from decord's (n, 2) [start, end] seconds.

        decord reports AV_NOPTS_VALUE (~9.2e15, or -3e17 on B-frame avi) for frames without
        timestamps (seen on small mkv and avi files): then, or if the times do not increase,
        frame i is at i / fps. Otherwise the float32 times are snapped to multiples of 1 / fps
        when within float32 rounding of one.
        """
        n = len(stamps)
        valid = bool(np.all(np.isfinite(stamps)) and np.all(np.abs(stamps) < 1e9))
        if valid and n > 1:
            valid = stamps[-1, 0] > stamps[0, 0]
        if not valid:
            if fps is None:
                raise _OpenFailed("decord found no frame timestamps and no frame rate")
            return [i / fps for i in range(n)], n / fps
        if fps:
            stamps = _snap_to_grid(stamps, fps)
        starts = np.maximum.accumulate(stamps[:, 0] - stamps[0, 0]).tolist()
        last_end = float(stamps[-1, 1] - stamps[0, 0])
        return starts, (
            last_end if last_end > starts[-1] else starts[-1] + (1.0 / fps if fps else 0.0)
        )

    def samples(self, fps: Optional[float]) -> Iterator[Sample]:
        """Yield (t, frame) by the file rule (or every native frame when fps is None)."""
        plan = (
            _grid_plan(self.starts, self.end, fps)
            if fps
            else ((s, j) for j, s in enumerate(self.starts))
        )
        held_index, held, shown = 0, self._first, False
        for t, index in plan:
            if index != held_index:
                held, held_index, shown = self._frame_at(index), index, False
            yield t, (held.copy() if shown else held)
            shown = True

    def decoded_end(self) -> float:
        """End of the decodable video (decord indexes every packet when it opens the file)."""
        return self.end

    def _frame_at(self, index: int) -> np.ndarray:
        """Decode forward to frame ``index`` (>= current position) with next() only.

        decord's skip_frames() and seeking hang (100 % CPU, forever) or fail on MPEG-TS / FLV
        files, so frames in between are decoded and dropped without copying them out.
        """
        try:
            while self._pos < index:
                self._vr.next()
                self._pos += 1
                self.frames_decoded += 1
            frame = self._decode_next()
        except Exception as err:
            raise SourceError(
                f"video file '{self._path}' failed to decode at frame {index} (decord: "
                f"{_short(err)}): it is corrupt or truncated; try backend='opencv' or "
                f"{_REENCODE_HINT}"
            ) from None
        self.frames_decoded += 1
        self._pos = index + 1
        return frame

    def _decode_next(self) -> np.ndarray:
        """vr.next() as (H, W, 3) uint8, undoing decord's row-padding bug for some widths."""
        arr = self._vr.next().asnumpy()
        if arr.ndim == 3 and arr.shape[2] != 3:
            # decord 0.6 reports (H, W, linesize // W) when rows are padded: rows hold W*3 pixels.
            h, w = arr.shape[:2]
            arr = np.ascontiguousarray(arr).reshape(h, -1)[:, : w * 3].reshape(h, w, 3)
        return np.ascontiguousarray(arr)

    def close(self) -> None:
        self._vr = None  # decord frees the decoder when the reader is garbage collected


class _OpenCVReader:
    """opencv (FFmpeg backend) decoder; reads frames in order with their timestamps."""

    backend = "opencv"

    def __init__(self, path: Path) -> None:
        try:
            import cv2
        except ImportError:
            raise _OpenFailed("opencv is not installed") from None
        self._cv2 = cv2
        self._cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap.release()
            raise _OpenFailed("opencv could not open it")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.native_fps = float(fps) if math.isfinite(fps) and fps > 0 else None
        self.n_native = int(count) if math.isfinite(count) and count > 0 else None
        declared = self.n_native / self.native_fps if self.n_native and self.native_fps else None
        self._period = 1.0 / self.native_fps if self.native_fps else 0.0
        first = self._read()
        if first is None:
            self._cap.release()
            raise _OpenFailed("opencv opened it but decoded no frame", no_frames=True)
        self._first = first
        self.frames_decoded = 1
        self._last_ts = 0.0
        h, w = first[1].shape[:2]
        self.info = VideoInfo("opencv", w, h, self.native_fps, declared, self.n_native, declared)

    def samples(self, fps: Optional[float]) -> Iterator[Sample]:
        """Yield (t, RGB frame) by the file rule (or every native frame when fps is None)."""
        native = self._native()
        chosen = (
            _from_zero(native, self._period)
            if fps is None
            else _grid_stream(native, fps, self._period)
        )
        for t, bgr in chosen:  # colour-convert only the frames that are used (a new array each)
            yield t, self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)

    def decoded_end(self) -> float:
        return self._last_ts + self._period

    def _native(self) -> Iterator[tuple[float, np.ndarray]]:
        """Native frames in decode order as (timestamp from the first frame, BGR frame)."""
        item: Optional[tuple[float, np.ndarray]] = self._first
        origin = self._first[0]
        while item is not None:
            self._last_ts = max(self._last_ts, item[0] - origin)
            yield item
            item = self._read()
            if item is not None:
                self.frames_decoded += 1

    def _read(self) -> Optional[tuple[float, np.ndarray]]:
        """Next (timestamp s, BGR frame) or None at the end / on a decoding failure."""
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        return self._cap.get(self._cv2.CAP_PROP_POS_MSEC) / 1000.0, bgr

    def close(self) -> None:
        self._cap.release()


def _snap_to_grid(stamps: np.ndarray, fps: float) -> np.ndarray:
    """Replace float32-rounded seconds by the nearest multiple of 1 / fps when within rounding.

    ``stamps``: float64 array of seconds (any shape) that went through float32 (relative error
    <= 6e-8); a value is snapped when it is within 1e-3 frame + float32 error of the grid.
    """
    frames = stamps * fps
    nearest = np.round(frames)
    close = np.abs(frames - nearest) <= 1e-3 + 1.2e-7 * np.abs(frames)
    return np.where(close, nearest / fps, stamps)


def _opencv_probe(path: Path) -> tuple[Optional[float], Optional[np.ndarray]]:
    """(duration the container declares = frame count / fps, first frame RGB) via opencv.

    Either is None when opencv is missing, cannot open the file, or reports no count / fps.
    """
    try:
        import cv2
    except ImportError:
        return None, None
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            return None, None
        count, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
        declared = count / fps if count > 0 and fps > 0 else None
        ok, bgr = cap.read()
        first = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok and bgr is not None else None
        return declared, first
    finally:
        cap.release()


def _same_picture(a: np.ndarray, b: np.ndarray) -> bool:
    """Do two decodes of the same frame agree (same shape, mean abs difference <= 8 / 255)?"""
    if a.shape != b.shape:
        return False
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) <= 8.0


def _means_no_frames(message: str) -> bool:
    """Does a decoder message say the file has no video stream / no frames?"""
    text = message.lower()
    return any(
        key in text
        for key in (
            "cannot find video stream",
            "invalid frame count",
            "matches no streams",
            "does not contain any stream",
            "no frames",
        )
    )


# =============================================================================================
# VideoFileSource
# =============================================================================================


class VideoFileSource(FrameSource):
    """A video file decoded by decord or opencv (``backend`` "auto" tries decord, then opencv).

    Opening validates the file (exists, not empty, decodes a first frame); the iterator then
    decodes sequentially, only as far as the samples requested so far. Each ``iter()`` is a new
    pass from the start. ``frames_decoded`` counts native frames decoded in the current pass.
    """

    def __init__(
        self, path: str | os.PathLike, fps: Optional[float] = 2.0, *, backend: str = "auto"
    ) -> None:
        name = os.fspath(path)
        fps = _check_fps(fps)
        if backend not in ("auto", "decord", "opencv"):
            raise SourceError(
                f"backend {backend!r} is not a VideoFileSource backend: use 'auto', 'decord' or "
                "'opencv' (or FFmpegSource / open_source(..., backend='ffmpeg'))"
            )
        self.path = _check_video_path(name)
        reader = self._open_reader(name, backend)
        self.backend: str = reader.backend
        self.info: VideoInfo = reader.info
        super().__init__(name, fps, native_fps=self.info.native_fps, duration=self.info.duration)
        self._pending: Optional[_DecordReader | _OpenCVReader] = reader
        self._active: set[Any] = set()
        self._counter: Optional[_DecordReader | _OpenCVReader] = reader

    @property
    def n_frames(self) -> Optional[int]:
        return _count_samples(self.duration, self.fps, self.info.n_native)

    @property
    def frames_decoded(self) -> int:
        """Native frames decoded so far in the current (or last) pass."""
        return self._counter.frames_decoded if self._counter is not None else 0

    def _open_reader(self, name: str, backend: str) -> "_DecordReader | _OpenCVReader":
        """Open with the requested backend, or decord then opencv for "auto"."""
        order = {
            "auto": (_DecordReader, _OpenCVReader),
            "decord": (_DecordReader,),
            "opencv": (_OpenCVReader,),
        }
        failures: list[tuple[str, str, bool]] = []
        for reader_cls in order[backend]:
            if backend == "auto" and reader_cls is _DecordReader and self._decord_unsafe():
                continue
            try:
                return reader_cls(self.path)
            except _OpenFailed as err:
                failures.append((reader_cls.backend, err.reason, err.no_frames))
        raise _Undecodable.merge(name, failures)

    def _decord_unsafe(self) -> bool:
        """MPEG-TS files: decord starts decoding at a wrong position, so "auto" skips it."""
        return self.path.suffix.lower() in _DECORD_UNSAFE_SUFFIXES

    def _samples(self) -> Iterator[Sample]:
        reader, self._pending = self._pending, None
        if reader is None:
            reader = self._open_reader(self.name, self.backend)
        self._counter = reader
        self._active.add(reader)
        try:
            yield from reader.samples(self.fps)
            _check_complete(
                self.name, self.backend, reader.decoded_end(), self.info.declared_duration
            )
        finally:
            self._active.discard(reader)
            reader.close()

    def _release(self) -> None:
        for reader in list(self._active) + ([self._pending] if self._pending else []):
            reader.close()
        self._active.clear()
        self._pending = None


# =============================================================================================
# ffmpeg subprocess
# =============================================================================================


_STREAM_SIZE_RE = re.compile(r", (\d+)x(\d+)")
_STREAM_FPS_RE = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_SHOWINFO_RE = re.compile(r"\bn:\s*\d+\s+pts:\s*\S+\s+pts_time:(\S+)")
_ERROR_WORDS = (
    "error",
    "invalid",
    "corrupt",
    "partial file",
    "prematurely",
    "failed",
    "not found",
    "no such",
    "refused",
    "timed out",
    "matches no streams",
    "unable",
    "could not",
)
_GENERIC_ERRORS = (
    "task finished",
    "terminating thread",
    "conversion failed",
    "error opening input file",
    "error opening output file",
    "consider increasing",
    "nothing was written",
)
_DAMAGE_WORDS = (
    "partial file",
    "ended prematurely",
    "corrupt input packet",
    "packet corrupt",
    "truncat",
)


class _FFmpegLog(threading.Thread):
    """Reads ffmpeg's stderr: the stream header, showinfo timestamps, and the last error lines."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True, name="mmlc-ffmpeg-stderr")
        self._stream = stream
        self.header_ready = threading.Event()
        self.pts: "queue.Queue[Optional[float]]" = queue.Queue()
        self.tail: deque[str] = deque(maxlen=30)
        self.first_errors: list[str] = []
        self.damage: list[str] = []
        self.size: Optional[tuple[int, int]] = None
        self.native_fps: Optional[float] = None
        self.duration: Optional[float] = None
        self._section = ""

    def run(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                self._parse(raw.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):
            pass  # the pipe was closed by close()
        finally:
            self.header_ready.set()

    def _parse(self, line: str) -> None:
        shown = _SHOWINFO_RE.search(line)
        if shown:
            self.pts.put(_float_or_none(shown.group(1)))
            return
        if "Parsed_showinfo" in line or line.startswith("      "):
            return
        self.tail.append(line)
        self._note_error(line)
        if line.startswith(("Input #", "Output #")):
            self._section = line.split()[0]
        elif self._section == "Input" and self.duration is None and "Duration:" in line:
            self.duration = _parse_duration(line)
        elif "Stream #" in line and " Video: " in line:
            self._parse_stream(line)

    def _parse_stream(self, line: str) -> None:
        if self._section == "Input" and self.native_fps is None:
            found = _STREAM_FPS_RE.search(line)
            if found:
                value = float(found.group(1)) * (1000.0 if found.group(2) else 1.0)
                self.native_fps = value if value > 0 else None
        elif self._section == "Output" and self.size is None:
            found = _STREAM_SIZE_RE.search(line)
            if found:
                self.size = (int(found.group(1)), int(found.group(2)))
                self.header_ready.set()

    def _note_error(self, line: str) -> None:
        """Keep the first informative error lines and the lines that say the input is damaged."""
        low = line.lower()
        if not any(w in low for w in _ERROR_WORDS) or any(g in low for g in _GENERIC_ERRORS):
            return
        text = _strip_log_prefix(line.strip())
        if len(self.first_errors) < 3 and text not in self.first_errors:
            self.first_errors.append(text)
        if any(w in low for w in _DAMAGE_WORDS) and len(self.damage) < 3:
            self.damage.append(text)

    def errors(self) -> str:
        """The first informative error lines (or the last lines), for messages."""
        lines = self.first_errors or [
            _strip_log_prefix(line.strip()) for line in list(self.tail)[-3:]
        ]
        return " | ".join(lines)[:400] or "no output"


def _float_or_none(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_duration(line: str) -> Optional[float]:
    found = _DURATION_RE.search(line)
    if not found:
        return None
    hours, minutes, seconds = found.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _strip_log_prefix(line: str) -> str:
    """'[in#0/mov @ 0x55] moov atom not found' -> 'moov atom not found'."""
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line)


class _FFmpegProcess:
    """One ffmpeg run writing rgb24 frames to stdout (file grid via ffmpeg's fps filter, or
    every frame with its showinfo timestamp)."""

    backend = "ffmpeg"

    def __init__(
        self,
        url: str,
        name: str,
        fps: Optional[float],
        *,
        live: bool,
        input_options: dict[str, Any],
        timeout: float,
    ) -> None:
        self.name, self.fps, self.live, self.timeout = name, fps, live, timeout
        self.grid = fps is not None and not live
        self._timed_out = False
        self._stopped = False  # set by close(): a killed ffmpeg is then not an error
        exe = _ffmpeg_exe()
        try:
            self._proc = self._build(url, input_options).run_async(
                cmd=exe, pipe_stdout=True, pipe_stderr=True
            )
        except OSError as err:
            raise _OpenFailed(f"could not start ffmpeg ({err})") from None
        self._log = _FFmpegLog(self._proc.stderr)
        self._log.start()
        self.frames_read = 0
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _build(self, url: str, input_options: dict[str, Any]) -> Any:
        import ffmpeg  # ffmpeg-python

        stream = ffmpeg.input(url, **input_options).video
        if self.grid:
            stream = stream.filter("setpts", "PTS-STARTPTS").filter(
                "fps", fps=repr(self.fps), round="up"
            )
        else:
            stream = stream.filter("showinfo")
        out = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        return out.global_args("-hide_banner", "-nostdin", "-nostats", "-loglevel", "info")

    def _start(self) -> None:
        """Wait for the stream header and the first frame (killing ffmpeg after ``timeout``)."""
        watchdog = threading.Timer(self.timeout, self._on_timeout)
        watchdog.start()
        try:
            self._log.header_ready.wait()
            if self._log.size is None:
                raise self._open_failure()
            self.width, self.height = self._log.size
            self._frame_bytes = self.width * self.height * 3
            self._first = self._read_frame()
        finally:
            watchdog.cancel()
        if self._first is None:
            raise self._open_failure()
        self._first_pts = self._next_pts()

    def _on_timeout(self) -> None:
        self._timed_out = True
        self._proc.kill()

    def _open_failure(self) -> _OpenFailed:
        if self._timed_out or self._proc.poll() is None:
            self._proc.kill()
            return _OpenFailed(f"ffmpeg got no frame within {self.timeout:g} s (timeout)")
        self._log.join(timeout=2)
        detail = self._log.errors()
        no_frames = self._log.size is not None or _means_no_frames(detail)
        return _OpenFailed(detail if not no_frames else f"decoded no frame ({detail})", no_frames)

    def _read_frame(self) -> Optional[np.ndarray]:
        """Next (H, W, 3) uint8 frame from stdout, or None at the end (a partial frame too)."""
        buf = bytearray(self._frame_bytes)
        view, got = memoryview(buf), 0
        while got < self._frame_bytes:
            n = self._proc.stdout.readinto(view[got:])
            if not n:
                return None
            got += n
        self.frames_read += 1
        return np.frombuffer(buf, dtype=np.uint8).reshape(self.height, self.width, 3)

    def _next_pts(self) -> Optional[float]:
        """showinfo timestamp of the frame just read (None in grid mode or when missing)."""
        if self.grid:
            return None
        try:
            return self._log.pts.get(timeout=2.0)
        except queue.Empty:
            return None

    def native(self) -> Iterator[Sample]:
        """Frames as they come: (t, frame); t = k / fps in grid mode, else stream time from 0."""
        frame: Optional[np.ndarray] = self._first
        pts: Optional[float] = self._first_pts
        wall0, t_last, k = time.monotonic(), 0.0, 0
        while frame is not None:
            if self.grid:
                t = k / self.fps
            elif pts is not None and self._first_pts is not None:
                t = max(pts - self._first_pts, t_last)
            else:
                t = max(time.monotonic() - wall0, t_last)
            t_last, k = t, k + 1
            yield t, frame
            frame = self._read_frame()
            pts = self._next_pts() if frame is not None else None

    def finish(self) -> None:
        """After the last frame: raise SourceError if ffmpeg failed or stopped early."""
        if self._stopped:
            return
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._log.join(timeout=2)
        if code != 0:
            raise SourceError(
                f"{self._what()} '{self.name}' failed after {self.frames_read} frames "
                f"(ffmpeg exit {code}: {self._log.errors()}): check the input, or {_REENCODE_HINT}"
            )
        if self.live:
            return
        if self.grid:
            _check_complete(self.name, "ffmpeg", self.frames_read / self.fps, self._log.duration)
        if self._log.damage:
            raise SourceError(
                f"video file '{self.name}' is truncated or corrupt: ffmpeg reported "
                f"'{self._log.damage[0]}' (after {self.frames_read} output frames): re-download "
                f"the file or {_REENCODE_HINT}"
            )

    def _what(self) -> str:
        return "stream" if self.live else "video file"

    @property
    def native_fps(self) -> Optional[float]:
        return self._log.native_fps

    @property
    def duration(self) -> Optional[float]:
        return self._log.duration

    def close(self) -> None:
        """Kill ffmpeg (if still running) and close its pipes."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        self._stopped = True
        if proc.poll() is None:
            proc.kill()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.join(timeout=2)


def _ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise _OpenFailed("imageio-ffmpeg is not installed (pip install imageio-ffmpeg)") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise _OpenFailed(f"no ffmpeg binary ({_short(err)})") from None


class FFmpegSource(FrameSource):
    """Any input the ffmpeg binary reads: stream URLs (live by default) and video files.

    Files (``live=False``): ffmpeg resamples to the file grid. Live: every frame is read with its
    stream timestamp (showinfo) and frames closer than 1/fps are dropped. ``input_options`` are
    ffmpeg input options, e.g. ``{"rtsp_transport": "tcp"}``; ``timeout`` bounds the wait for the
    first frame. The ffmpeg process is killed on close() and when iteration stops early.

    ffmpeg probes a live input for up to ~5 s before the first frame comes out (an mpegts stream
    over tcp on loopback: first sample after 5 s, then real time); for lower start-up latency pass
    e.g. ``input_options={"fflags": "nobuffer", "analyzeduration": "500000",
    "probesize": "500000"}``.
    Live mode pipes every native frame as rgb24 and drops in Python (1080p30 is ~190 MB/s).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        fps: Optional[float] = 2.0,
        *,
        live: Optional[bool] = None,
        input_options: Optional[dict[str, Any]] = None,
        timeout: float = 30.0,
    ) -> None:
        name = os.fspath(source)
        super().__init__(name, _check_fps(fps))
        is_url = _is_url(name)
        self.live: bool = is_url if live is None else live
        self.path: Optional[Path] = None if is_url else _check_video_path(name)
        self.backend = "ffmpeg"
        self._input = name if self.path is None else f"file:{self.path.resolve()}"
        self._options = dict(input_options or {})
        self._timeout = timeout
        self._active: set[_FFmpegProcess] = set()
        process = self._start_process()
        self._pending: Optional[_FFmpegProcess] = process
        self._counter: Optional[_FFmpegProcess] = process
        self.native_fps = process.native_fps
        self.duration = None if self.live else process.duration
        n_native = (
            round(self.duration * self.native_fps) if self.duration and self.native_fps else None
        )
        self.info = VideoInfo(
            "ffmpeg",
            process.width,
            process.height,
            self.native_fps,
            self.duration,
            n_native,
            self.duration,
        )

    @property
    def n_frames(self) -> Optional[int]:
        return None if self.live else _count_samples(self.duration, self.fps, self.info.n_native)

    @property
    def frames_decoded(self) -> int:
        """Frames read from ffmpeg so far in the current (or last) pass."""
        return self._counter.frames_read if self._counter is not None else 0

    def _start_process(self) -> _FFmpegProcess:
        try:
            return _FFmpegProcess(
                self._input,
                self.name,
                self.fps,
                live=self.live,
                input_options=self._options,
                timeout=self._timeout,
            )
        except _OpenFailed as err:
            if self.path is None:
                raise SourceError(
                    f"stream '{self.name}' could not be opened ({err.reason}): check the URL, that "
                    "the stream is running and reachable, and the ffmpeg input options"
                ) from None
            raise _Undecodable.merge(self.name, [("ffmpeg", err.reason, err.no_frames)]) from None

    def _samples(self) -> Iterator[Sample]:
        process, self._pending = self._pending, None
        if process is None:
            process = self._start_process()
        self._counter = process
        self._active.add(process)
        try:
            frames = process.native()
            if process.grid:
                yield from frames
            else:
                yield from _live_rate(frames, self.fps)
            process.finish()
        finally:
            self._active.discard(process)
            process.close()

    def _release(self) -> None:
        for process in list(self._active) + ([self._pending] if self._pending else []):
            process.close()
        self._active.clear()
        self._pending = None


# =============================================================================================
# Image folders and lists
# =============================================================================================


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort key putting img2 before img10: text parts compare as text, digit runs as numbers."""
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (name,)


class _ImageSequenceSource(FrameSource):
    """Images shown one after another: image i at t = i / fps."""

    def __init__(self, name: str, items: Sequence[Any], fps: Optional[float]) -> None:
        fps = _check_fps(fps)
        if fps is None:
            raise SourceError(
                f"images '{name}' need an fps (image i is shown at t = i / fps): pass e.g. fps=2"
            )
        super().__init__(name, fps, duration=len(items) / fps)
        self.items: list[Any] = list(items)

    @property
    def n_frames(self) -> Optional[int]:
        return len(self.items)

    def _samples(self) -> Iterator[Sample]:
        for i, item in enumerate(self.items):
            yield i / self.fps, load_image(item)


class ImageFolderSource(_ImageSequenceSource):
    """The images of a folder (png/jpg/jpeg/bmp/webp/tif/tiff, natural name order)."""

    def __init__(self, folder: str | os.PathLike, fps: Optional[float] = 2.0) -> None:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise SourceError(f"image folder '{os.fspath(folder)}' does not exist: check the path")
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()]
        if not files:
            raise SourceError(
                f"image folder '{os.fspath(folder)}' has no images ({', '.join(IMAGE_SUFFIXES)}): "
                "add frames to it or pass a video file"
            )
        files.sort(key=lambda p: _natural_key(p.name))
        super().__init__(os.fspath(folder), files, fps)


class ImageListSource(_ImageSequenceSource):
    """A list of image paths (or arrays / PIL images), in the given order."""

    def __init__(self, paths: Sequence[Any], fps: Optional[float] = 2.0) -> None:
        items = list(paths)
        if not items:
            raise SourceError("the list of images is empty: pass at least one image path")
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)) and not Path(item).expanduser().is_file():
                raise SourceError(
                    f"image {i} of the list, '{os.fspath(item)}', does not exist or is not a file: "
                    "check the path"
                )
        name = f"{len(items)} images" if len(items) != 1 else "1 image"
        super().__init__(name, items, fps)


# =============================================================================================
# Iterables of (t, frame)
# =============================================================================================


class IterableSource(FrameSource):
    """Frames from Python: an iterable (or generator) of ``(t_seconds, frame)`` pairs.

    ``t`` must be a finite number, non-decreasing; frames go through ``to_rgb_uint8``. The live
    rule drops samples closer than 1/fps to the previous kept one (``fps=None`` keeps all). Times
    are passed through unchanged. Frames of dropped samples are not converted.
    """

    def __init__(
        self, items: Iterable[Any], fps: Optional[float] = None, *, name: str = "frames"
    ) -> None:
        super().__init__(name, _check_fps(fps))
        self._items = items
        self._iterators: list[Any] = []

    @property
    def n_frames(self) -> Optional[int]:
        if self.fps is None and isinstance(self._items, Sequence):
            return len(self._items)
        return None

    def _samples(self) -> Iterator[Sample]:
        iterator = iter(self._items)
        self._iterators.append(iterator)
        try:
            for t, frame in _live_rate(self._checked(iterator), self.fps):
                yield t, self._convert(t, frame)
        finally:
            self._iterators.remove(iterator)

    def _checked(self, iterator: Iterator[Any]) -> Iterator[tuple[float, Any]]:
        """Validate each item's shape and time; yields (t, raw frame)."""
        previous = -math.inf
        for index, item in enumerate(iterator):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise SourceError(
                    f"sample {index} of '{self.name}' is a {_type_name(item)}, not a (t, frame) "
                    "pair: yield (t_seconds, frame) tuples"
                )
            t = item[0]
            if (
                isinstance(t, bool)
                or not isinstance(t, numbers.Real)
                or not math.isfinite(float(t))
            ):
                raise SourceError(
                    f"sample {index} of '{self.name}' has time {t!r}: t must be a finite number of "
                    "seconds"
                )
            if float(t) < previous:
                raise SourceError(
                    f"sample {index} of '{self.name}' goes back in time ({float(t)} s after "
                    f"{previous} s): times must be non-decreasing; sort the samples by time"
                )
            previous = float(t)
            yield previous, item[1]

    def _convert(self, t: float, frame: Any) -> np.ndarray:
        try:
            return to_rgb_uint8(frame)
        except SourceError as err:
            raise SourceError(f"frame at t={t} s of '{self.name}': {err}") from None

    def _release(self) -> None:
        for iterator in list(self._iterators):
            close = getattr(iterator, "close", None)
            if callable(close):
                close()


# =============================================================================================
# Webcam
# =============================================================================================


def _parse_webcam_index(text: str, index_text: Optional[str]) -> int:
    """'webcam' -> 0, 'webcam:3' -> 3; anything else is a SourceError."""
    if index_text is None:
        return 0
    if not index_text.isdigit():
        raise SourceError(
            f"webcam spec '{text}' is invalid: use 'webcam' or 'webcam:N' with N a camera "
            "index, e.g. webcam:0"
        )
    return int(index_text)


def _linux_cameras() -> list[int]:
    """Indices N of /dev/videoN on Linux."""
    found = []
    for entry in Path("/dev").glob("video*"):
        suffix = entry.name[len("video") :]
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


class WebcamSource(FrameSource):
    """A camera through opencv ``cv2.VideoCapture(index)``; live rule on wall-clock time."""

    def __init__(self, index: int = 0, fps: Optional[float] = 2.0) -> None:
        fps = _check_fps(fps)
        super().__init__(f"webcam:{index}", fps)
        self.index = index
        self._cap = self._open_camera(index)

    def _open_camera(self, index: int) -> Any:
        name = f"webcam:{index}"
        if sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
            cams = _linux_cameras()
            found = ", ".join(f"webcam:{i}" for i in cams) if cams else "none"
            raise SourceError(
                f"{name} could not be opened: no camera at index {index} (/dev/video{index} does "
                f"not exist; cameras found: {found}): connect a camera or pick another index; list "
                "cameras with `ls /dev/video*` (or `v4l2-ctl --list-devices`), e.g. webcam:0"
            )
        try:
            import cv2
        except ImportError:
            raise SourceError(f"{name} needs opencv: pip install opencv-python-headless") from None
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"{name} could not be opened: no camera at index {index} that opencv can use "
                "(missing, busy, or no permission): check the camera and its permissions, or "
                "try webcam:0"
            )
        return cap

    def _samples(self) -> Iterator[Sample]:
        yield from _live_rate(self._frames(), self.fps)

    def _frames(self) -> Iterator[Sample]:
        """Every camera frame as (wall-clock seconds since the first frame, RGB frame)."""
        import cv2

        origin: Optional[float] = None
        count = 0
        while self._cap is not None:
            ok, bgr = self._cap.read()
            now = time.monotonic()
            if not ok or bgr is None:
                state = "returned no frame" if count == 0 else f"stopped after {count} frames"
                raise SourceError(
                    f"{self.name} {state}: check that the camera is connected and not used by "
                    "another program"
                )
            origin = now if origin is None else origin
            count += 1
            yield now - origin, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
