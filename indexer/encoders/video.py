"""Video: sample a few frames evenly over the clip (PyAV) and embed the clip as the normalised
mean of its frame vectors, so a product video lands in the same space as product photos."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.encoders.base import ImageEncoder
from shopsearch.errors import MediaError

MAX_FRAME_SIDE = 1024  # encoders downscale to ~224 px anyway; keeps 4K frames cheap
SEEK_ABOVE_S = 30.0  # longer clips seek to each target instead of decoding every frame


# Counter-clockwise quarter turns -> the transpose that shows the frame upright.
_UPRIGHT = {
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}


def _frame_image(frame: Any) -> Image.Image:
    w, h = frame.width, frame.height
    scale = MAX_FRAME_SIDE / max(w, h, 1)
    if scale < 1.0:
        image = frame.to_image(width=max(1, round(w * scale)), height=max(1, round(h * scale)))
    else:
        image = frame.to_image()
    return _upright(image, frame)


def _upright(image: Image.Image, frame: Any) -> Image.Image:
    """Apply the display rotation (phones store portrait clips as landscape frames plus a display
    matrix, as they do EXIF orientation for photos): the encoder must see what a viewer sees."""
    try:
        degrees = float(frame.rotation or 0)  # PyAV: counter-clockwise, -180..180
    except Exception:  # noqa: BLE001 - no or malformed display matrix: keep the frame as stored
        return image
    turn = _UPRIGHT.get(round(degrees / 90) % 4)
    return image.transpose(turn) if turn is not None else image


def _seconds(value: Any, time_base: Any) -> float | None:
    return float(value * time_base) if value is not None and time_base else None


def _duration(container: Any, stream: Any) -> float | None:
    """Seconds, from the stream, the container header or frame count / rate; None if unknown."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    if stream.frames and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    return None


def _declared_duration(container: Any, stream: Any) -> float | None:
    """Length the file claims for its video: the stream's own, or the container's when the video
    is its only stream (with audio, the container may be longer than the picture)."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if len(container.streams) == 1 and container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None


def _targets(n: int, duration: float) -> list[float]:
    """Centres of n equal slices: skips the black first frame many clips start with."""
    return [(i + 0.5) * duration / n for i in range(n)]


def _frames(container: Any, stream: Any, path: Path) -> Iterator[Any]:
    """Decoded frames; decoder errors (truncated or damaged data) become MediaError."""
    import av

    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise MediaError(f"video {path} is corrupt or truncated: {exc}") from None


def _pick_by_time(
    frames: Iterator[Any], targets: list[float], start: float
) -> tuple[list[Any], float | None] | None:
    """For each target time the nearest decoded frame (frames stay undecoded to RGB until
    chosen). Returns (chosen frames, time of the last frame seen), or None when the frames
    carry no timestamps."""
    chosen: list[Any] = []
    prev: tuple[float, Any] | None = None
    last: float | None = None
    for frame in frames:
        if frame.time is None:
            return None
        t = float(frame.time) - start
        last = t
        while len(chosen) < len(targets) and t >= targets[len(chosen)]:
            target = targets[len(chosen)]
            nearer_prev = prev is not None and target - prev[0] < t - target
            chosen.append(prev[1] if nearer_prev and prev is not None else frame)
        if len(chosen) == len(targets):
            break
        prev = (t, frame)
    if len(chosen) < len(targets) and prev is not None:
        chosen.append(prev[1])  # targets past the last frame (header a bit long): use the last
    return chosen, last


def _pick_by_count(path: Path, n: int) -> list[Image.Image]:
    """No usable timing: count packets (cheap, no decoding), then take evenly spaced frames.
    Reopens the file rather than seeking, as raw streams cannot seek."""
    with _opened(path) as (container, stream):
        count = sum(1 for p in container.demux(stream) if p.size)
    if count == 0:
        return []
    wanted = sorted({min(count - 1, int((i + 0.5) * count / n)) for i in range(n)})
    chosen: list[Any] = []
    with _opened(path) as (container, stream):
        for index, frame in enumerate(_frames(container, stream, path)):
            if index == wanted[len(chosen)]:
                chosen.append(frame)
                if len(chosen) == len(wanted):
                    break
        return _images(chosen)


def _pick_by_seeking(
    container: Any, stream: Any, path: Path, targets: list[float], start: float
) -> list[Any]:
    """Long clips: seek to the keyframe before each target and decode forward to it."""
    chosen: list[Any] = []
    for target in targets:
        container.seek(int((start + target) / stream.time_base), stream=stream, backward=True)
        for frame in _frames(container, stream, path):
            if frame.time is None:
                raise ValueError("no timestamps")
            if float(frame.time) - start >= target:
                chosen.append(frame)
                break
    return chosen


def _images(frames: list[Any]) -> list[Image.Image]:
    unique = {id(f): f for f in frames}  # one frame may be nearest to several targets
    return [_frame_image(f) for f in unique.values()]


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[tuple[Any, Any]]:
    """The container and its first video stream; any FFmpeg error inside becomes MediaError."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise MediaError(f"cannot open video {path}: {exc}") from None
    try:
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
    except av.error.FFmpegError as exc:
        raise MediaError(f"video {path} is corrupt or truncated: {exc}") from None
    finally:
        container.close()


def sample_video_frames(path: str | Path, n: int) -> list[Image.Image]:
    """Up to ``n`` RGB frames spread evenly over the video (fewer only when it has fewer).

    Short clips are decoded straight through; long ones seek to each target time; clips without
    duration metadata or timestamps are sampled by frame count. Missing, empty, non-video,
    corrupt or truncated files, and videos without a decodable frame, raise MediaError."""
    path = Path(path)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not path.is_file():
        raise MediaError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"video {path} is empty")
    images: list[Image.Image] = []
    with _opened(path) as (container, stream):
        duration = _duration(container, stream)
        if duration and duration > SEEK_ABOVE_S:
            start = _seconds(stream.start_time, stream.time_base) or 0.0
            try:
                chosen = _pick_by_seeking(container, stream, path, _targets(n, duration), start)
            except MediaError:
                raise
            except Exception:  # noqa: BLE001 - seeking fails on some files: decode through instead
                chosen = []
            if len(chosen) == n:
                images = _images(chosen)
    if not images and duration:
        with _opened(path) as (container, stream):
            start = _seconds(stream.start_time, stream.time_base) or 0.0
            result = _pick_by_time(_frames(container, stream, path), _targets(n, duration), start)
            if result is not None:
                chosen, last = result
                declared = _declared_duration(container, stream)
                if len(chosen) < n and chosen and declared and last is not None:
                    step = 2.0 / float(stream.average_rate) if stream.average_rate else 0.0
                    if last + step < 0.8 * declared:
                        raise MediaError(
                            f"video {path} is truncated: frames stop at {last:.1f}s of {declared:.1f}s"
                        )
                images = _images(chosen)
    if not images:
        images = _pick_by_count(path, n)
    if not images:
        raise MediaError(f"video {path} has no decodable frames")
    return images


def encode_video(path: str | Path, encoder: ImageEncoder, n_frames: int = 8) -> np.ndarray:
    """(dim,) float32: the L2-normalised mean of ``n_frames`` sampled frame vectors."""
    frames = sample_video_frames(path, n_frames)
    vecs = encoder.encode(frames, batch_size=len(frames))
    mean = vecs.mean(axis=0, dtype=np.float32)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-12:  # opposite frames cancel out: fall back to the middle frame
        return np.ascontiguousarray(vecs[len(vecs) // 2], dtype=np.float32)
    return (mean / norm).astype(np.float32)
