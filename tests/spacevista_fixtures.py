"""Fixtures in the shapes the official SpaceVista repository documents, written by us: frames and
masks on disk, a preview `meta.json` (no scale key: its group comes from `--group`), the same after a
`flatten.py`-style pass (nested annotation dicts lifted into prefixed keys, lists and dicts stored as
JSON text), full-set items (`metadata` with the data group) and SpaceVista-Bench entries (all 19 task
types, every visual-prompt kind, each bench category and scale symbol), plus a few invalid items
each shape must name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spacevista.scales import OFFICIAL_TASK_SPECS, TASK_BY_OFFICIAL

N_FRAMES = 8
SIZE = (64, 48)  # width, height
SCENES = ("kitchen", "desk", "street", "bench")
OFFICIAL_NAMES = sorted(TASK_BY_OFFICIAL)  # the 19 task types as the data spells them

# One answer per task type: (question, think, answer) in the training shapes.
_MC = "\nA. the cup\nB. the plate\nC. the bowl\nD. the jar"
ANSWERS: dict[str, tuple[str, str]] = {
    "EXISTENCE": ("Is there a red chair in the video?", "Yes"),
    "COMPARISON_HEIGHT": ("Which object is taller?" + _MC, "B"),
    "COMPARISON_WIDTH": ("Which object is wider?" + _MC, "A"),
    "POSITION_ACROSS_FRAME": ("Where is the object in the red box in the last frame?" + _MC, "C"),
    "APPEAR_ORDER": ("Which object appears first?" + _MC, "D"),
    "CAMERA_MOVING": ("Which way does the camera move?" + _MC, "A"),
    "SPATIAL_RELATION": ("Is the red dot left or right of the blue dot?" + _MC, "B"),
    "OBJECT_MATCHING": ("Which box in the second frame marks the object in the red box?" + _MC, "C"),
    "COUNTING": ("How many chairs are there?", "4"),
    "OBJECT_COUNTING": ("How many objects like the one in the red box are there?", "3"),
    "DEPTH": ("How far is the red dot from the camera, in meters?", "2.5"),
    "DEPTH_all": ("How far is the masked object from the camera across the frames, in meters?", "3.1"),
    "HEIGHT": ("How tall is the object in the red box, in centimeters?", "35"),
    "WIDTH": ("How wide is the object in the red box?", "0.8"),
    "OBJECT_DISTANCE": ("How far apart are the cup and the plate?", "1.2 m"),
    "OBJECT_ROTATION": ("By how many degrees does the object turn?", "45"),
    "ROOM_SIZE": ("What is the floor area of the room, in square meters?", "18.5"),
    "OBJECT_RELATIVE_DISTANCE": ("How far is the red dot from the blue dot, in meters?", "0.9"),
    "CAMERA_ROTATION": ("How many degrees does the camera rotate?", "30 degrees"),
}
BENCH_CATEGORIES = (("TinyTabletop", "mm"), ("Tabletop", "cm"), ("Indoor", "m"), ("Outdoor", "<km"))
GROUPS = ("Tiny Tabletop", "Tabletop", "Indoor", "Wild Indoor", "Outdoor", "Drone")


def write_frames(root: Path) -> dict[str, list[str]]:
    """Eight small frames per scene under scenes/<scene>/images/, and a label-map mask per scene."""
    paths: dict[str, list[str]] = {}
    for s, scene in enumerate(SCENES):
        folder = root / "scenes" / scene / "images"
        folder.mkdir(parents=True, exist_ok=True)
        paths[scene] = []
        for i in range(N_FRAMES):
            shade = 40 + 20 * s + 10 * i
            Image.new("RGB", SIZE, (shade, shade, shade)).save(folder / f"frame_{i:03d}.png")
            paths[scene].append(f"scenes/{scene}/images/frame_{i:03d}.png")
        labels = np.zeros(SIZE[::-1], dtype=np.int64)
        labels[10:30, 20:40] = 3
        np.save(root / "scenes" / scene / "mask.npy", labels)
    return paths


def _visual_prompt_extra(kind: str, frames: list[str]) -> dict[str, Any]:
    """Preview-shape (nested) annotations of one kind on the frames of a scene."""
    if kind == "point":
        return {"input_type": "Image+point+text",
                "input_point": {"image_path": frames[2], "points": [[20, 30], [10, 12]]}}
    if kind == "box":
        return {"input_type": "Image+bbox+text",
                "input_bbox": {"image_path": frames[1], "bboxes": [{"x1": 5, "y1": 6, "x2": 30, "y2": 40}]}}
    if kind == "pair":
        return {"input_type": "Image+bbox+text",
                "input_bbox": {"image_path_1": frames[0], "bbox_1": {"x1": 5, "y1": 6, "x2": 30, "y2": 40},
                               "image_path_2": frames[7],
                               "bboxes_2": [{"x1": 1, "y1": 1, "x2": 20, "y2": 20},
                                            {"x1": 30, "y1": 10, "x2": 60, "y2": 40}]}}
    if kind == "mask":
        scene_dir = frames[0].rsplit("/images/", 1)[0]
        return {"input_type": "Image+mask+text",
                "input_mask": {"image_path": frames[4], "mask_path": f"{scene_dir}/mask.npy", "object_ids": [3]}}
    return {"input_type": "Image+text"}


PROMPT_KINDS = ("point", "box", "pair", "mask", "none")


def preview_items(frames: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One preview item per task type (no scale key), visual prompts of every kind in turn."""
    items = []
    for i, name in enumerate(OFFICIAL_NAMES):
        question, answer = ANSWERS[name]
        scene = SCENES[i % len(SCENES)]
        extra = {"task_type": name, **_visual_prompt_extra(PROMPT_KINDS[i % len(PROMPT_KINDS)], frames[scene])}
        items.append({"problem_id": f"pv-{i:02d}",
                      "messages": [{"role": "user", "content": f"<video>\n{question}"},
                                   {"role": "assistant", "content": f"<think>look at {scene}</think>"
                                                                    f"<answer>{answer}</answer>"}],
                      "videos": [frames[scene]], "extra_info": extra})
    return items


def flatten(item: dict[str, Any]) -> dict[str, Any]:
    """What the official `flatten.py` documents: each nested input_{bbox,point,mask} dict becomes
    {bbox_,point_,mask_}-prefixed keys (lists and dicts as JSON text); any other list or dict in
    extra_info becomes JSON text."""
    item = json.loads(json.dumps(item))
    extra = item["extra_info"]
    for key, prefix in (("input_bbox", "bbox_"), ("input_point", "point_"), ("input_mask", "mask_")):
        nested = extra.pop(key, None)
        if isinstance(nested, dict):
            for k, v in nested.items():
                extra[prefix + k] = v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)
    for k, v in list(extra.items()):
        if isinstance(v, (dict, list)):
            extra[k] = json.dumps(v)
    return item


def full_items(frames: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Full-set items: bench-style `annotations`, the data group in `metadata`; one per group and
    task type, cycling."""
    items = []
    for i, name in enumerate(OFFICIAL_NAMES):
        question, answer = ANSWERS[name]
        scene = SCENES[i % len(SCENES)]
        input_type, annotations = _bench_annotations(i, frames[scene])
        items.append({"id": f"full-{i:02d}", "input_type": input_type,
                      "messages": [{"role": "user", "content": f"<video>{question}"},
                                   {"role": "assistant",
                                    "content": f"<think>scene {scene}</think><answer>{answer}</answer>"}],
                      "videos": [frames[scene]], "annotations": annotations,
                      "metadata": {"group": GROUPS[i % len(GROUPS)], "original_type": name}})
    return items


def _bench_annotations(i: int, frames: list[str]) -> tuple[str, dict[str, Any]]:
    kind = PROMPT_KINDS[i % len(PROMPT_KINDS)]
    scene_dir = frames[0].rsplit("/images/", 1)[0]
    if kind == "point":
        return "image_point_text", {"points": [{"coords": [20, 30], "image_index": 2}]}
    if kind == "box":
        return "image_bbox_text", {"bboxes": [{"coords": [5, 6, 30, 40], "image_index": 1}]}
    if kind == "pair":
        return "image_bbox_text", {"dual_bbox": {"source_image": frames[0], "source_bbox": [5, 6, 30, 40],
                                                 "target_image": frames[7],
                                                 "target_bboxes": [[1, 1, 20, 20], [30, 10, 60, 40]]}}
    if kind == "mask":
        return "image_mask_text", {"masks": [{"mask_path": f"{scene_dir}/mask.npy", "object_ids": [3],
                                              "image_path": frames[4]}]}
    return "image_text", {}


def bench_entries(frames: dict[str, list[str]]) -> list[dict[str, Any]]:
    """SpaceVista-Bench entries: the question without messages, a string answer, metadata."""
    entries = []
    for i, name in enumerate(OFFICIAL_NAMES):
        question, answer = ANSWERS[name]
        category, symbol = BENCH_CATEGORIES[i % len(BENCH_CATEGORIES)]
        scene = SCENES[i % len(SCENES)]
        input_type, annotations = _bench_annotations(i, frames[scene])
        entries.append({"id": 100 + i, "input_type": input_type, "question": question,
                        "answer": answer.split()[0], "videos": [frames[scene]], "annotations": annotations,
                        "metadata": {"category": category, "scale": symbol, "original_type": name}})
    return entries


def invalid_items(frames: dict[str, list[str]]) -> list[tuple[dict[str, Any], str]]:
    """(item, the reason the converter must give) for the kinds of bad data a real file holds."""
    good = full_items(frames)[OFFICIAL_NAMES.index("COUNTING")]

    def variant(name: str, **changes: Any) -> dict[str, Any]:
        item = {**json.loads(json.dumps(good)), **changes}
        item["id"] = f"bad-{name}"
        return item
    return [
        (variant("group", metadata={"group": "Underwater", "original_type": "COUNTING"}), "unknown_scale"),
        (variant("task", metadata={"group": "Indoor", "original_type": "TRAJECTORY_SHAPE"}), "unknown_task"),
        (variant("frame", videos=[[frames["desk"][0], "scenes/desk/images/missing.png"]]), "missing_frame"),
        (variant("box", input_type="image_bbox_text",
                 annotations={"bboxes": [{"coords": [1, 2, 3], "image_index": 0}]}), "bad_visual_prompt"),
        (variant("pickle", input_type="image_mask_text",
                 annotations={"masks": [{"mask_path": "scenes/desk/mask.pkl", "object_ids": [3],
                                         "image_path": frames["desk"][0]}]}), "bad_visual_prompt"),
        (variant("count", messages=[{"role": "user", "content": "<video>How many cups?"},
                                    {"role": "assistant", "content": "<answer>several</answer>"}]),
         "non_numeric_answer"),
    ]


def write_all(root: Path) -> dict[str, Path]:
    """Every fixture file under ``root``; returns their paths by shape."""
    frames = write_frames(root)
    (root / "scenes" / "desk" / "mask.pkl").write_bytes(b"\x80\x04not a mask we will ever unpickle")
    preview = preview_items(frames)
    files = {"preview": root / "meta.json", "flattened": root / "meta_flatten.json",
             "full": root / "full.jsonl", "bench": root / "bench.json", "invalid": root / "invalid.jsonl"}
    files["preview"].write_text(json.dumps(preview, indent=1))
    files["flattened"].write_text(json.dumps([flatten(item) for item in preview], indent=1))
    files["full"].write_text("".join(json.dumps(item) + "\n" for item in full_items(frames)))
    files["bench"].write_text(json.dumps(bench_entries(frames), indent=1))
    files["invalid"].write_text("".join(json.dumps(item) + "\n" for item, _ in invalid_items(frames)))
    return files


assert len(OFFICIAL_NAMES) == 19 and set(ANSWERS) == set(OFFICIAL_NAMES), "one answer per official task type"
assert len(OFFICIAL_TASK_SPECS) == 18  # + OBJECT_DISTANCE, shared with a synthetic task
