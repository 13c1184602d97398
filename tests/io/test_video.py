"""Video through PyAV: MP4 and AVI written from real cine frames read back with their times."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from medlens.errors import ImageReadError, MedlensError

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def cine_frames(data_root):
    """20 phases of one Sunnybrook slice as uint8 (the real beating heart)."""
    from medlens.io import load_image

    path = data_root / "sunnybrook" / "dicoms" / "SCD0000101"
    if not path.is_dir():
        pytest.skip(f"{path} is missing")
    frames = load_image(path).array[:, 6]
    return np.clip(frames / np.percentile(frames, 99.5) * 255, 0, 255).astype(np.uint8)


def write_avi(frames: np.ndarray, path, fps: int = 30) -> None:
    """An AVI (MJPEG) written by PyAV directly, as other software writes them."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.repeat(image[..., None], 3, -1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_mp4_round_trip_keeps_frames_rate_and_times(tmp_path, cine_frames):
    from medlens.io import load_image
    from medlens.io.video import read_video, write_video

    path = write_video(cine_frames, tmp_path / "cine.mp4", fps=25)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
    image = load_image(path)  # sniffed as video
    assert image.leading == ("time",) and image.array.shape == (20, 256, 256)
    assert image.meta["fps"] == pytest.approx(25.0)
    np.testing.assert_allclose(image.meta["time_points"], np.arange(20) * 0.04, atol=1e-6)
    assert image.array.dtype == np.uint8  # as decoded
    rgb_path = read_video(path, grey=False).array  # the luma plane equals the RGB decoding
    assert rgb_path.shape == (20, 3, 256, 256)
    assert np.abs(rgb_path[:, 1].astype(int) - image.array).max() <= 1
    error = np.abs(image.array.astype(np.float32) - cine_frames)
    assert error.mean() < 2.0 and np.percentile(error, 99) < 12  # H.264 at CRF 18
    # a grey video comes back grey; colour stays colour
    rgb = np.stack([cine_frames, cine_frames // 2, 255 - cine_frames], axis=-1)
    colour = load_image(write_video(rgb, tmp_path / "rgb.mp4", fps=25))
    assert colour.leading == ("time", "channel") and colour.array.shape == (20, 3, 256, 256)
    grey = read_video(tmp_path / "rgb.mp4", grey=True).array.astype(np.float32)
    luminance = rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    assert grey.shape == (20, 256, 256) and np.abs(grey - luminance).mean() < 3


def test_avi_reads_lazily_in_ranges_and_normalises_size(tmp_path, cine_frames):
    from medlens.io import load_image
    from medlens.io.video import VideoReader, read_video

    path = tmp_path / "cine.avi"
    write_avi(cine_frames, path, fps=30)
    assert load_image(path).array.shape == (20, 256, 256)
    with VideoReader(path) as reader:
        assert (len(reader), reader.width, reader.height) == (20, 256, 256)
        assert reader.fps == pytest.approx(30.0)
        first = next(reader.frames())  # one frame decoded, not the video
        assert first[0] == 0.0 and first[1].shape == (256, 256, 3)
    part = read_video(path, start=4, stop=12, step=2, size=(128, 96))
    assert part.array.shape == (4, 128, 96)
    np.testing.assert_allclose(part.meta["time_points"], [4 / 30, 6 / 30, 8 / 30, 10 / 30],
                               atol=1e-6)  # fmt: skip
    assert part.meta["scale"] == [0.5, 0.375] and part.meta["original_size"] == [256, 256]
    np.testing.assert_allclose(part.spacing, (256 / 96, 2.0))  # (x, y): original pixels
    full = read_video(path, start=4, stop=5).array[0].astype(np.float32)
    half = read_video(path, start=4, stop=5, size=(128, 128)).array[0].astype(np.float32)
    small = full.reshape(128, 2, 128, 2).mean(axis=(1, 3))  # area averages of 2x2 pixels
    assert np.abs(half - small).mean() < 2.0


def test_odd_sizes_are_padded_for_h264(tmp_path):
    from medlens.io.video import read_video, write_video

    frames = np.random.default_rng(0).integers(0, 255, (3, 31, 45), dtype=np.uint8)
    image = read_video(write_video(frames, tmp_path / "odd.mp4", fps=10))
    assert image.array.shape == (3, 32, 46)


def test_bad_videos_are_one_line_errors(tmp_path, cine_frames):
    from medlens.io import load_image
    from medlens.io.video import read_video, write_video

    good = write_video(cine_frames[:6], tmp_path / "ok.mp4", fps=25)
    broken = tmp_path / "broken.mp4"
    data = good.read_bytes()
    broken.write_bytes(data[:40] + bytes(len(data) - 40))  # a header, then nothing decodable
    for path in (broken,):
        with pytest.raises(ImageReadError) as caught:
            load_image(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    audio = tmp_path / "tone.mp4"
    with av.open(str(audio), mode="w") as container:  # a file with sound and no picture
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")  # fmt: skip
        frame.sample_rate, frame.time_base = 8000, Fraction(1, 8000)
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(ImageReadError, match="no video stream"):
        load_image(audio)
    with pytest.raises(ImageReadError, match="no frames in 50:60"):
        read_video(good, start=50, stop=60)
    with pytest.raises(MedlensError, match="need 0 <= start < stop"):
        read_video(good, start=5, stop=2)
    with pytest.raises(MedlensError, match="uint8"):
        write_video(np.zeros((2, 8, 8), np.float32), tmp_path / "f.mp4")
