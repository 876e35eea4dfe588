"""Visual prompts: every annotation shape parses to the same prompts, remaps onto sampled frames and
draws as the official SpaceVista loaders draw it (pixel-exact against a committed fixture)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spacevista.records.frames import FrameError, encode_frame, load_images, load_video
from spacevista.records.schema import Answer, Record
from spacevista.records.visual_prompts import (
    VisualPrompt,
    VisualPromptError,
    draw_visual_prompts,
    load_mask,
    remap_to_sampled,
    select_mask,
)
from spacevista.datasets.official.annotations import parse_visual_prompts

FIXTURE = Path(__file__).parent / "fixtures" / "visual_prompts" / "point_box_mask_64x48.png"
FRAMES = [f"/data/scene/images_8/frame_{i:03d}.jpg" for i in range(10)]
GREY, RED, BLUE, GREEN = (128, 128, 128), (255, 0, 0), (0, 128, 255), (0, 255, 0)


def point(frame, color, x, y):
    return VisualPrompt("point", frame, color, (float(x), float(y)))


def box(frame, color, x1, y1, x2, y2):
    return VisualPrompt("box", frame, color, tuple(float(v) for v in (x1, y1, x2, y2)))


def grey(width=64, height=48):
    return Image.new("RGB", (width, height), GREY)


def fixture_scene(tmp_path):
    """A red dot at (20, 14), a blue box (34, 6)-(58, 30) and label 3 of a half-resolution label map in green."""
    labels = np.zeros((24, 32), np.uint8)
    labels[16:22, 4:20] = 3
    labels[17:22, 22:30] = 5
    np.save(tmp_path / "labels.npy", labels)
    prompts = [point(0, "red", 20, 14), box(0, "blue", 34, 6, 58, 30),
               VisualPrompt("mask", 0, "green", mask_path="labels.npy", object_ids=(3,))]
    return draw_visual_prompts([grey()], prompts, mask_root=tmp_path)[0]


# ---- parsing: SpaceVista-Bench ----------------------------------------------------------------------

def test_bench_points_are_y_x_and_take_colours_in_order_unless_named():
    item = {"input_type": "image_point_text", "annotations": {"points": [
        {"coords": [14, 20], "image_index": 3}, {"coords": [[5, 6]], "image_index": 4},
        {"coords": [1, 2], "color": "yellow"}]}}
    assert parse_visual_prompts(item, FRAMES) == [point(3, "red", 20, 14), point(4, "blue", 6, 5),
                                                  point(0, "yellow", 2, 1)]


def test_bench_boxes_accept_lists_and_dicts_and_sort_corners():
    item = {"input_type": "image_bbox_text", "annotations": {"bboxes": [
        {"coords": [40, 30, 10, 5], "image_index": 2}, {"coords": {"x": 1, "y": 2, "w": 10, "h": 20}}]}}
    assert parse_visual_prompts(item, FRAMES) == [box(2, "red", 10, 5, 40, 30), box(0, "blue", 1, 2, 11, 22)]


def test_bench_draws_only_the_kinds_its_input_type_names():
    annotations = {"points": [{"coords": [1, 1]}], "bboxes": [{"coords": [0, 0, 5, 5]}]}
    assert parse_visual_prompts({"input_type": "image_text", "annotations": annotations}, FRAMES) == []
    assert [p.kind for p in parse_visual_prompts({"input_type": "image_bbox_text", "annotations": annotations},
                                                 FRAMES)] == ["box"]


def test_bench_masks_find_their_frame_by_path_with_the_images_8_swap():
    item = {"input_type": "image_mask_text", "annotations": {"masks": [
        {"mask_path": "m/a.npy", "object_ids": [3, 4], "image_path": "/data/scene/images/frame_007.jpg"},
        {"mask_path": "m/b.png", "object_ids": None, "image_path": FRAMES[2]}]}}
    assert parse_visual_prompts(item, FRAMES) == [
        VisualPrompt("mask", 7, "red", mask_path="m/a.npy", object_ids=(3, 4)),
        VisualPrompt("mask", 2, "blue", mask_path="m/b.png")]


def test_bench_dual_bbox_source_is_red_and_targets_go_blue_green_yellow_red():
    item = {"input_type": "image_bbox_text", "annotations": {"dual_bbox": {
        "source_image": FRAMES[1], "source_bbox": [0, 0, 5, 5], "target_image": FRAMES[8],
        "target_bboxes": [[1, 1, 2, 2], [3, 3, 4, 4], [5, 5, 6, 6], [7, 7, 8, 8]]}}}
    assert parse_visual_prompts(item, FRAMES) == [
        box(1, "red", 0, 0, 5, 5), box(8, "blue", 1, 1, 2, 2), box(8, "green", 3, 3, 4, 4),
        box(8, "yellow", 5, 5, 6, 6), box(8, "red", 7, 7, 8, 8)]


# ---- parsing: SpaceVista-1M preview, nested and flattened --------------------------------------------

NESTED = {
    "input_type": "Image+point+bbox+mask+text",
    "input_point": {"image_path": FRAMES[4], "points": [[14, 20], [30, 40]]},
    "input_bbox": {"image_path": FRAMES[5],
                   "bboxes": [{"x1": 1, "y1": 2, "x2": 3, "y2": 4}, {"x": 0, "y": 0, "w": 8, "h": 9}]},
    "input_mask": {"image_path": FRAMES[6], "mask_path": "masks/m.npy", "object_ids": [7, 2, 9, 4, 5]},
}
NESTED_PROMPTS = [
    point(4, "red", 20, 14), point(4, "blue", 40, 30), box(5, "red", 1, 2, 3, 4), box(5, "blue", 0, 0, 8, 9),
    *(VisualPrompt("mask", 6, color, mask_path="masks/m.npy", object_ids=(oid,))
      for color, oid in zip(("red", "blue", "green", "yellow", "yellow"), (7, 2, 9, 4, 5)))]


def flatten(extra):
    """What dataset/flatten.py makes of nested extra_info: prefixed keys, lists and dicts as JSON text."""
    out = {k: v for k, v in extra.items() if not k.startswith("input_") or k == "input_type"}
    for key, prefix in (("input_bbox", "bbox_"), ("input_point", "point_"), ("input_mask", "mask_")):
        for name, value in extra.get(key, {}).items():
            out[prefix + name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


def test_preview_nested_points_boxes_and_masks():
    assert parse_visual_prompts({"extra_info": NESTED}, FRAMES) == NESTED_PROMPTS


def test_preview_flattened_json_fields_parse_like_the_nested_form():
    assert parse_visual_prompts({"extra_info": flatten(NESTED)}, FRAMES) == NESTED_PROMPTS


def test_preview_box_pair_reference_is_red_and_candidates_go_red_blue_green_on_their_frame():
    pair = {"input_bbox": {"image_path_1": FRAMES[1], "bbox_1": {"x1": 0, "y1": 0, "x2": 5, "y2": 5},
                           "image_path_2": FRAMES[9], "bboxes_2": [{"x1": 1, "y1": 1, "x2": 2, "y2": 2},
                                                                   {"x1": 3, "y1": 3, "x2": 4, "y2": 4},
                                                                   {"x1": 5, "y1": 5, "x2": 6, "y2": 6}]}}
    expected = [box(1, "red", 0, 0, 5, 5), box(9, "red", 1, 1, 2, 2), box(9, "blue", 3, 3, 4, 4),
                box(9, "green", 5, 5, 6, 6)]
    assert parse_visual_prompts({"extra_info": pair}, FRAMES) == expected
    assert parse_visual_prompts({"extra_info": flatten(pair)}, FRAMES) == expected


def test_preview_mask_files_pair_with_object_ids_by_position():
    extra = {"mask_image_path": FRAMES[0], "mask_mask_path": json.dumps(["a.npy", "b.npy"]),
             "mask_object_ids": json.dumps([1])}
    assert parse_visual_prompts({"extra_info": extra}, FRAMES) == [
        VisualPrompt("mask", 0, "red", mask_path="a.npy", object_ids=(1,)),
        VisualPrompt("mask", 0, "blue", mask_path="b.npy")]


def test_frames_are_found_by_relative_path_and_by_unique_basename(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frames = [str(tmp_path / "v" / f"{i}.jpg") for i in range(3)]
    assert parse_visual_prompts({"extra_info": {"point_image_path": "v/2.jpg", "point_points": "[1, 1]"}},
                                frames)[0].frame == 2
    assert parse_visual_prompts({"extra_info": {"point_image_path": "/elsewhere/1.jpg", "point_points": "[1, 1]"}},
                                frames)[0].frame == 1


def test_an_image_path_that_is_no_frame_or_matches_several_is_an_error():
    with pytest.raises(VisualPromptError, match=r"extra_info\.input_point\.image_path: .*not one of the item's"):
        parse_visual_prompts({"extra_info": {"input_point": {"image_path": "x.jpg", "points": [1, 1]}}}, FRAMES)
    with pytest.raises(VisualPromptError, match="matches several frames"):
        parse_visual_prompts({"extra_info": {"point_image_path": "/z/a.jpg", "point_points": "[1, 1]"}},
                             ["/p/a.jpg", "/q/a.jpg"])


@pytest.mark.parametrize(("extra", "message"), [
    ({"input_bbox": {"image_path_1": FRAMES[0], "bbox_1": {"x1": 1}, "image_path_2": FRAMES[1], "bboxes_2": []}},
     r"extra_info\.input_bbox\.bboxes_2: missing or empty"),
    ({"input_bbox": {"image_path_1": FRAMES[0], "bbox_1": {"x1": 1}, "image_path_2": FRAMES[1],
                     "bboxes_2": [[1, 2, 3, 4]]}}, r"extra_info\.input_bbox\.bbox_1: needs x1,y1,x2,y2"),
    ({"bbox_image_path": FRAMES[0], "bbox_bboxes": "[{'x1': 1}]"}, r"extra_info\.bbox_bboxes: not valid JSON"),
    ({"point_points": "[[1, 2]]"}, r"extra_info\.point_image_path: missing or empty, but extra_info\.point_points"),
    ({"input_point": {"image_path": FRAMES[0], "points": [[1, 2, 3]]}}, r"extra_info\.input_point\.points\[0\]"),
    ({"input_mask": {"image_path": FRAMES[0], "mask_path": "m.pkl"}}, "pickled masks are refused.*np.save"),
])
def test_bad_annotations_raise_naming_the_field(extra, message):
    with pytest.raises(VisualPromptError, match=message):
        parse_visual_prompts({"extra_info": extra}, FRAMES)


def test_prompts_round_trip_through_plain_json():
    stored = json.loads(json.dumps([p.to_dict() for p in NESTED_PROMPTS]))
    assert [VisualPrompt.from_dict(p) for p in stored] == NESTED_PROMPTS


# ---- remapping -------------------------------------------------------------------------------------

def test_prompts_move_to_the_nearest_uniformly_sampled_frame():
    sampled = np.linspace(0, 9, 4, dtype=int).tolist()  # [0, 3, 6, 9]
    prompts = [point(f, "red", 1, 1) for f in (0, 4, 5, 8)]
    assert [p.frame for p in remap_to_sampled(prompts, sampled)] == [0, 1, 2, 3]
    assert remap_to_sampled([point(2, "red", 1, 1)], [0, 4])[0].frame == 0  # a tie goes to the earlier frame


# ---- drawing ---------------------------------------------------------------------------------------

def test_rendered_point_box_and_mask_match_the_committed_fixture(tmp_path):
    expected = np.asarray(Image.open(FIXTURE).convert("RGB"))
    assert np.array_equal(np.asarray(fixture_scene(tmp_path)), expected)


def test_a_point_is_a_filled_disc_of_radius_8_centred_on_x_y(tmp_path):
    image = fixture_scene(tmp_path)
    assert image.getpixel((20, 14)) == RED and image.getpixel((12, 14)) == RED and image.getpixel((20, 22)) == RED
    assert image.getpixel((20, 23)) == GREY and image.getpixel((29, 14)) == GREY and image.getpixel((14, 8)) == GREY


def test_a_box_is_a_2_pixel_outline_inside_its_corners(tmp_path):
    image = fixture_scene(tmp_path)
    assert image.getpixel((34, 18)) == BLUE and image.getpixel((35, 18)) == BLUE and image.getpixel((58, 18)) == BLUE
    assert image.getpixel((36, 18)) == GREY and image.getpixel((33, 18)) == GREY and image.getpixel((59, 18)) == GREY
    assert image.getpixel((46, 6)) == BLUE and image.getpixel((46, 5)) == GREY


def test_masks_are_resized_nearest_and_come_out_solid_like_the_official_overlay(tmp_path):
    """The official overlay composites at alpha 0.35 and then drops alpha: masked pixels are the colour."""
    image = fixture_scene(tmp_path)
    assert image.getpixel((8, 32)) == GREEN and image.getpixel((39, 43)) == GREEN
    assert image.getpixel((7, 32)) == GREY and image.getpixel((40, 32)) == GREY and image.getpixel((50, 40)) == GREY


def test_boxes_are_clipped_and_points_outside_the_frame_are_skipped_unless_swapped_inside():
    image = draw_visual_prompts([grey()], [box(0, "red", -10, -10, 100, 100), point(0, "blue", 200, 20),
                                           point(0, "green", 30, 50)])[0]
    assert image.getpixel((0, 0)) == RED and image.getpixel((63, 47)) == RED and image.getpixel((2, 2)) == GREY
    assert image.getpixel((50, 30)) == GREEN  # (30, 50) lies outside 64x48, (50, 30) inside
    assert BLUE not in {image.getpixel((x, y)) for x in range(64) for y in range(48)}


def test_drawing_returns_copies_and_leaves_the_originals_untouched():
    original = grey()
    drawn = draw_visual_prompts([original], [point(0, "red", 20, 14)])
    assert drawn[0] is not original and original.getpixel((20, 14)) == GREY


def test_a_prompt_past_the_last_frame_is_an_error():
    with pytest.raises(VisualPromptError, match="frame 2; there are 2 frames"):
        draw_visual_prompts([grey(), grey()], [point(2, "red", 1, 1)])


# ---- masks -----------------------------------------------------------------------------------------

def test_pickled_masks_are_refused(tmp_path):
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(np.ones((4, 4), bool)))
    np.save(tmp_path / "objects.npy", np.array([np.ones((4, 4), bool)], dtype=object), allow_pickle=True)
    for name in ("m.pkl", "objects.npy"):
        with pytest.raises(VisualPromptError, match=r"pickled masks are refused.*np\.save"):
            load_mask(tmp_path / name)


def test_npz_and_png_masks_load(tmp_path):
    np.savez(tmp_path / "m.npz", first=np.eye(3, dtype=bool), second=np.zeros((3, 3)))
    Image.fromarray(np.array([[0, 255], [9, 0]], np.uint8)).convert("RGB").save(tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.npz"), np.eye(3, dtype=bool))
    assert np.array_equal(select_mask(load_mask(tmp_path / "m.png"), None), [[False, True], [True, False]])


def test_object_ids_select_labels_channels_or_boolean_channel_lists():
    labels = np.array([[0, 1], [2, 3]])
    assert np.array_equal(select_mask(labels, (1, "3")), [[False, True], [False, True]])
    assert np.array_equal(select_mask(labels, None), labels != 0)
    stack = np.zeros((3, 2, 4), bool)  # K x H x W
    stack[0, 0, 0] = stack[2, 1, 3] = True
    assert np.argwhere(select_mask(stack, (2,))).tolist() == [[1, 3]]
    assert np.argwhere(select_mask(stack, (True, False, False))).tolist() == [[0, 0]]
    assert not select_mask(np.ones((2, 2), bool), (0, False)).any()


# ---- wired into frame loading ----------------------------------------------------------------------

def make_record(meta, videos=(), images=()):
    return Record(id="clip-9", scale="tabletop", task="count", answer=Answer("count", "1"),
                  prompt=[{"role": "user", "content": "<video>" * len(videos) + "<image>" * len(images)}],
                  videos=[list(v) for v in videos], images=list(images), meta=meta)


def test_load_video_draws_the_records_visual_prompts():
    prompts = [point(1, "red", 20, 14).to_dict()]
    video = load_video(make_record({"visual_prompts": prompts}, videos=[[encode_frame(grey())] * 2]))
    assert video[0].getpixel((20, 14)) == GREY and video[1].getpixel((20, 14)) == RED


def test_load_images_draws_them_on_an_image_only_record():
    images = load_images(make_record({"visual_prompts": [box(0, "blue", 2, 2, 9, 9).to_dict()]},
                                     images=[encode_frame(grey())]))
    assert images[0].getpixel((2, 5)) == BLUE


def test_bad_visual_prompts_fail_naming_the_record():
    record = make_record({"visual_prompts": [point(3, "red", 1, 1).to_dict()]}, videos=[[encode_frame(grey())]])
    with pytest.raises(FrameError, match=r"record 'clip-9', video 0: visual prompts: .*frame 3"):
        load_video(record)
