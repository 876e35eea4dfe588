"""Lazy frames: decode bytes or paths on demand; failures name the record and the frame."""

import pytest
from PIL import Image

from spacevista.records.frames import FrameError, decode_frame, encode_frame, load_images, load_video
from spacevista.records.schema import Answer, Frame, Record


def make_record(videos=(), images=()) -> Record:
    return Record(id="clip-7", scale="tabletop", task="count", answer=Answer("count", "1"),
                  prompt=[{"role": "user", "content": "<video>" * len(videos) + "<image>" * len(images)}],
                  videos=[list(v) for v in videos], images=list(images))


def test_inline_png_bytes_decode_to_the_same_rgb_pixels():
    image = Image.new("RGB", (6, 4), (10, 200, 30))
    decoded = decode_frame(encode_frame(image))
    assert decoded.mode == "RGB" and decoded.size == (6, 4) and decoded.getpixel((5, 3)) == (10, 200, 30)


def test_relative_paths_resolve_against_the_dataset_root(tmp_path):
    Image.new("L", (3, 3), 128).save(tmp_path / "f.png")
    video = load_video(make_record(videos=[[Frame(path="f.png"), Frame(path=str(tmp_path / "f.png"))]]), root=tmp_path)
    assert [frame.getpixel((0, 0)) for frame in video] == [(128, 128, 128)] * 2


def test_missing_file_names_the_record_video_and_frame(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "ok.png")
    record = make_record(videos=[[Frame(path="ok.png"), Frame(path="gone.png")]])
    with pytest.raises(FrameError, match=r"record 'clip-7', video 0, frame 1: file not found: .*gone.png"):
        load_video(record, root=tmp_path)


def test_undecodable_bytes_name_the_record_and_image():
    record = make_record(images=[encode_frame(Image.new("RGB", (2, 2))), Frame(bytes=b"garbage")])
    with pytest.raises(FrameError, match=r"record 'clip-7', image 1: cannot decode 7 inline bytes"):
        load_images(record)


def test_frames_are_not_decoded_until_asked(tmp_path):
    record = make_record(videos=[[Frame(path=str(tmp_path / "later.png"))]])
    Image.new("RGB", (2, 2), (1, 2, 3)).save(tmp_path / "later.png")
    assert load_video(record)[0].getpixel((0, 0)) == (1, 2, 3)
