"""The OpenModelDB validator: an entry shaped like the database's own passes; each kind of schema break is named."""

import copy
import hashlib

from awm.release import openmodeldb

ENTRY = {  # the shape of data/models/2x-*-Compact.json in open-model-database
    "name": "Example Compact", "author": "someone", "license": "CC-BY-NC-4.0", "tags": ["anime", "jpeg"],
    "description": "## Example\n\nMarkdown.", "date": "2024-03-23", "architecture": "compact",
    "size": ["num_feat: 64", "num_conv: 16"], "scale": 2, "inputChannels": 3, "outputChannels": 3,
    "resources": [{"platform": "pytorch", "type": "pth", "size": 2419540, "sha256": "f" * 64,
                   "urls": ["https://example.org/2x_Example.pth"]},
                  {"platform": "onnx", "type": "onnx", "size": 2413474, "sha256": "7" * 64,
                   "urls": ["https://example.org/2x_Example.onnx"]}],
    "trainingIterations": 107500, "trainingEpochs": 141, "trainingBatchSize": 16, "trainingHRSize": 256,
    "trainingOTF": False, "dataset": "Anime frames.", "datasetSize": 10922,
    "images": [{"type": "standalone", "caption": "Banner", "url": "https://example.org/b.png"},
               {"type": "paired", "caption": "A", "LR": "https://example.org/lr.png", "SR": "https://example.org/sr.png"}],
}


def _broken(**changes):
    e = copy.deepcopy(ENTRY)
    for k, v in changes.items():
        if v is None and k != "license":
            e.pop(k)
        else:
            e[k] = v
    return openmodeldb.validate(e, "2x-Example-Compact")


def test_an_entry_shaped_like_the_databases_validates():
    assert openmodeldb.validate(ENTRY, "2x-Example-Compact") == []
    assert openmodeldb.validate({**ENTRY, "license": None, "size": None, "author": ["a", "b-c"]}, "4x-X") == []


def test_each_schema_break_is_named():
    assert _broken(name=None) == ["name: missing (required)"]
    assert _broken(scale="2") == ["scale: str '2', expected number"]
    assert _broken(tags="anime") == ["tags: str 'anime', expected string[]"]
    assert _broken(trainingOTF="no") == ["trainingOTF: str 'no', expected boolean"]
    assert _broken(architecture="Compact")[0].startswith("architecture: 'Compact', expected an OpenModelDB id")
    assert _broken(date="23.03.2024") == ["date: '23.03.2024', expected yyyy-mm-dd"]
    assert _broken(extra=1) == ["extra: not a field of the schema"]
    assert _broken(author="Some One") == ["author: 'Some One' does not match " + openmodeldb.USER_ID.pattern]
    assert openmodeldb.validate(ENTRY, "Example") == [f"id 'Example': does not match {openmodeldb.MODEL_ID.pattern}"]
    bad = copy.deepcopy(ENTRY)
    bad["resources"][0].update(platform="onnx", sha256="XYZ")
    bad["resources"][1]["type"] = "bin"
    bad["images"][0]["type"] = "video"
    assert openmodeldb.validate(bad, "2x-Example-Compact") == [
        "resources[0].platform: 'onnx', a pth file is 'pytorch'", "resources[0].sha256: not 64 lowercase hex digits",
        "resources[1].type: 'bin', expected one of pth, safetensors, onnx",
        "images[0].type: 'video', expected 'paired' or 'standalone'"]


def test_resources_carry_the_files_size_and_sha256(tmp_path):
    f = tmp_path / "2x-A-Compact.safetensors"
    f.write_bytes(b"weights")
    r = openmodeldb.resource(f, "https://h/x/")
    assert r == {"platform": "pytorch", "type": "safetensors", "size": 7, "urls": ["https://h/x/2x-A-Compact.safetensors"],
                 "sha256": hashlib.sha256(b"weights").hexdigest()}
    entry = {"resources": [r]}
    assert openmodeldb.check_files(entry, tmp_path) == []
    f.write_bytes(b"weightz")
    assert openmodeldb.check_files(entry, tmp_path) == ["resources[0]: 2x-A-Compact.safetensors differs from its size/sha256"]
