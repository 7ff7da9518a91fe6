"""per_image.csv names a sample by its picture (the file it came from), not by a 64-bit id."""

import json

from awm.eval.evaluate import image_name


def test_image_name_is_the_source_files_name_with_the_tile():
    key = "1152921504606846975"
    assert image_name({"__key__": key, "json": json.dumps({"name": "wallpapers/sky.png"}).encode()}) == \
        "wallpapers/sky.png"
    assert image_name({"__key__": f"{key}_t3", "json": json.dumps(
        {"name": "sky.png", "tile": [256, 0, 256, 256]}).encode()}) == "sky.png @256,0"
    assert image_name({"__key__": key, "json": json.dumps({"source": "synth"}).encode()}) == key  # before names
    assert image_name({"__key__": key}) == key
