"""Video files (MP4, MOV, AVI, MKV/WebM) through PyAV (FFmpeg): echo loops, cine exports.

:class:`VideoReader` opens a file lazily: its frame count, rate and size come from the container
and each frame is decoded only when asked for, so a long loop is never held whole in memory.
:func:`read_video` returns an :class:`~medlens.image.Image` of some or all frames: ``(t, y, x)``
grey (``leading=("time",)``) or ``(t, 3, y, x)`` RGB (``("time", "channel")``), uint8 as
decoded, with ``meta["fps"]`` and ``meta["time_points"]`` (seconds, from each frame's own
timestamp, so variable frame rates stay right). ``size=(h, w)`` normalises the frame size (area
averaging down, bilinear up) and records the scale: ``meta["scale"]`` is the original pixel's
size in new pixels per axis, and the spacing says how large a new pixel is in original pixels
(a video knows no millimetres). Colour is kept unless every decoded frame is grey (ultrasound
exported as RGB), or ``grey=True`` asks for luminance (``grey=False``: RGB always). A grey 4:2:0
stream (H.264 and most echo exports) is read from its luma plane directly, scaled to full range
as RGB decoding would scale it (within one grey level of the RGB path).

:func:`write_video` writes frames as H.264 MP4 (MPEG-4 part 2 where FFmpeg lacks libx264),
atomically. PyAV is the ``video`` extra.

Errors are one line naming the file: not a video, no video stream, a stream that cannot be
decoded, frames that change size mid-stream, a range with no frames in it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ImageReadError, MedlensError
from medlens.image import Image

__all__ = ["VIDEO_SUFFIXES", "VideoReader", "read_video", "write_video"]

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
_GREY_TOLERANCE = 2.0  # 0-255: channels this close everywhere are one grey channel (codec noise)
_PLANAR = ("yuv420p", "yuvj420p")
# limited ("TV") range luma 16-235 to full range 0-255, as FFmpeg's RGB conversion scales it
_TV_TO_FULL = np.clip(np.rint((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - the video extra
        raise MedlensError("reading video needs PyAV: pip install 'medlens[video]'") from None
    return av


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


class VideoReader:
    """A video opened for lazy, random-access reading (see the module's notes)."""

    def __init__(self, path: str | Path) -> None:
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise ImageReadError("no such file", self.path)
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise ImageReadError(f"not a readable video ({_short(error)})", self.path) from None
        streams = self._container.streams.video
        if not streams:
            self.close()
            raise ImageReadError("holds no video stream", self.path)
        self._stream = streams[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate or Fraction(0)
        self.fps = float(rate)
        self.width, self.height = int(self._stream.width), int(self._stream.height)
        self.codec = self._stream.codec_context.name
        self._count = int(self._stream.frames or 0) or None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __len__(self) -> int:
        """Frames in the stream (counted by decoding when the container does not say)."""
        if self._count is None:
            self._count = sum(1 for _ in self.frames())
        return self._count

    @property
    def planar(self) -> bool:
        """Whether the stream is 4:2:0 YUV, whose luma plane is a grey frame as decoded."""
        return self._stream.codec_context.pix_fmt in _PLANAR

    @property
    def full_range(self) -> bool:
        """Whether luma spans 0-255 (JPEG range) rather than 16-235."""
        return self._stream.codec_context.pix_fmt.startswith("yuvj")

    def frames(self, start: int = 0, stop: int | None = None, step: int = 1,
               size: tuple[int, int] | None = None, planar: bool = False,
               ) -> Iterator[tuple[float, np.ndarray]]:  # fmt: skip
        """``(time in seconds, RGB uint8 (h, w, 3))`` of frames ``start:stop:step``, decoded
        from the start of the stream (sequential reading is what codecs do well); with
        ``planar`` (and a :attr:`planar` stream) the decoded planes ``(3h/2, w)`` instead: luma
        rows, then the two chroma planes packed."""
        av = _av()
        self._container.seek(0)
        base = self._stream.time_base or Fraction(1, 1)
        first_pts = None
        try:
            for index, frame in enumerate(self._container.decode(self._stream)):
                if stop is not None and index >= stop:
                    break
                if frame.width != self.width or frame.height != self.height:
                    got, first = f"{frame.width}x{frame.height}", f"{self.width}x{self.height}"
                    raise ImageReadError(f"frame {index} is {got}, the first {first}", self.path)
                pts = frame.pts if frame.pts is not None else index
                first_pts = pts if first_pts is None else first_pts
                if index < start or (index - start) % step:
                    continue
                if size is not None:
                    h, w = size
                    how = "AREA" if h <= self.height and w <= self.width else "BILINEAR"
                    frame = frame.reformat(width=w, height=h, interpolation=how)
                seconds = (float((pts - first_pts) * base) if frame.pts is not None
                           else index / (self.fps or 1.0))  # fmt: skip
                native = planar and frame.format.name in _PLANAR
                yield seconds, frame.to_ndarray() if native else frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as error:
            raise ImageReadError(f"cannot decode the video ({_short(error)})", self.path) from None


def read_video(path: str | Path, *, start: int = 0, stop: int | None = None, step: int = 1,
               size: tuple[int, int] | None = None, grey: bool | None = None) -> Image:  # fmt: skip
    """Frames ``start:stop:step`` of a video as an :class:`Image` (see the module's notes)."""
    if start < 0 or step < 1 or (stop is not None and stop <= start):
        raise MedlensError(f"frames {start}:{stop}:{step}: need 0 <= start < stop and step >= 1")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise MedlensError(f"size {size}: give (height, width), both positive")
    with VideoReader(path) as reader:
        times, array, leading = _grey_planes(reader, start, stop, step, size, grey)
        if array is None:  # colour, or not 4:2:0 YUV: decode to RGB
            times, array, leading = _rgb(reader, start, stop, step, size, grey)
        meta: dict[str, Any] = {"path": str(reader.path), "format": "video",
                                "codec": reader.codec, "fps": reader.fps,
                                "time_points": [round(t, 6) for t in times],
                                "frame_range": [start, stop, step],
                                "original_size": [reader.height, reader.width]}  # fmt: skip
        spacing = (1.0, 1.0)
        if size is not None:
            scale = (size[0] / reader.height, size[1] / reader.width)
            meta["scale"] = [scale[0], scale[1]]
            spacing = (1.0 / scale[1], 1.0 / scale[0])  # index order (x, y)
        meta["spacing_known"] = False
        return Image(array, spacing=spacing, leading=leading, meta=meta)


def _grey_planes(reader: VideoReader, start, stop, step, size, grey):
    """The luma planes of a grey 4:2:0 stream, scaled to full range as RGB decoding would;
    ``(times, None, None)`` as soon as a frame has colour (or the stream is not 4:2:0)."""
    odd = size is not None and (size[0] % 2 or size[1] % 2)  # 4:2:0 planes need even sizes
    if grey is not None or not reader.planar or odd or reader.height % 2 or reader.width % 2:
        return [], None, None
    times, planes = [], []
    for seconds, frame in reader.frames(start, stop, step, size, planar=True):
        h = frame.shape[0] * 2 // 3
        if np.abs(frame[h::2, ::4].astype(np.int16) - 128).max() > _GREY_TOLERANCE:
            return [], None, None  # colour (Doppler, annotations): read as RGB
        times.append(seconds)
        planes.append(frame[:h])
    if not planes:
        raise ImageReadError(f"no frames in {start}:{stop}:{step}", reader.path)
    array = np.stack(planes)
    return times, (array if reader.full_range else _TV_TO_FULL[array]), ("time",)


def _rgb(reader: VideoReader, start, stop, step, size, grey):
    times, frames, colour = [], [], False
    for seconds, frame in reader.frames(start, stop, step, size):
        times.append(seconds)
        frames.append(frame)
        if not colour:  # a sparse look at each frame: colour can come late (Doppler)
            sub = frame[::4, ::4].astype(np.int16)
            colour = bool(np.abs(sub - sub[..., 1:2]).max() > _GREY_TOLERANCE)
    if not frames:
        raise ImageReadError(f"no frames in {start}:{stop}:{step}", reader.path)
    array = np.stack(frames)  # (t, h, w, 3) uint8
    if grey is None and not colour:
        return times, np.ascontiguousarray(array[..., 1]), ("time",)
    if grey:  # luminance (ITU-R BT.601), frame by frame to keep memory flat
        weights = np.float32([0.299, 0.587, 0.114])
        return times, np.stack([np.rint(f @ weights).astype(np.uint8) for f in array]), ("time",)
    return times, np.ascontiguousarray(array.transpose(0, 3, 1, 2)), ("time", "channel")


def write_video(frames: np.ndarray, path: str | Path, *, fps: float = 25.0,
                quality: int = 18) -> Path:  # fmt: skip
    """Write ``(t, h, w)`` grey or ``(t, h, w, 3)`` RGB uint8 frames as an MP4, atomically.

    Odd sizes are padded by one pixel (H.264's 4:2:0 needs even sizes). ``quality`` is x264's
    constant rate factor (lower is better; 18 looks lossless)."""
    av = _av()
    array = np.asarray(frames)
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 4 or array.shape[-1] != 3 or len(array) == 0:
        raise MedlensError(f"frames of shape {np.asarray(frames).shape}: need (t, h, w[, 3])")
    if array.dtype != np.uint8:
        raise MedlensError(f"frames of dtype {array.dtype}: need uint8")
    h, w = array.shape[1:3]
    array = np.pad(array, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(suffix=".mp4", dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    try:
        with av.open(temp, mode="w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = array.shape[2], array.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(quality), "preset": "veryfast"}
            for image in array:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path
