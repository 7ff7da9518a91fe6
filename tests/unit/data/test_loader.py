"""awm.data.loader: aligned crops, per-batch determinism (the resume position), skips, rank splitting."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pairs import make_pair_shards  # noqa: E402

from awm.data.loader import (  # noqa: E402
    DataConfig,
    PairStream,
    SkipCounter,
    TarReader,
    augment,
    epoch_steps,
    eval_pairs,
    shard_list,
    train_loader,
)
from awm.errors import ConfigError  # noqa: E402
from awm.shardio.read import iter_tar  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    make_pair_shards(d, [3, 1, 5], scales=(2, 4), size=(96, 64), corrupt=("img00004",))
    make_pair_shards(d / "eval", [4], scales=(2, 4), size=(96, 64), split="eval", seed=1)
    return d


def cfg(shards: Path, **kw) -> DataConfig:
    base = dict(train=str(shards), scale=2, patch=32, batch_size=6, patches_per_image=2, streams=4, workers=0)
    base.update(kw)
    return DataConfig(**base)


def batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_crops_are_aligned_and_shaped(shards):
    c = cfg(shards, scale=4, patch=32)
    b = PairStream(c, shard_list(shards), seed=0, rank=0).make_batch(0, TarReader(), Counter())
    assert b["hr"].shape == (6, 32, 32, 3) and b["lr"].shape == (6, 8, 8, 3)
    assert b["hr"].dtype == torch.uint8 and b["aug"].shape == (6,)
    errors = []
    for hr, lr in zip(augment(b["hr"], b["aug"]).numpy(), augment(b["lr"], b["aug"]).numpy(), strict=True):
        down = cv2.resize(hr, (8, 8), interpolation=cv2.INTER_AREA).astype(float)
        errors.append((np.abs(down - lr).mean(), np.abs(np.roll(down, 1, axis=(0, 1)) - lr).mean()))
    aligned, shifted = np.mean(errors, axis=0)
    assert aligned < 0.6 * shifted, errors


def test_batch_depends_only_on_seed_rank_index(shards):
    c0, c2 = cfg(shards), cfg(shards, workers=2, prefetch=1)
    a = batches(train_loader(c0, seed=3, rank=0), 5)
    b = batches(train_loader(c2, seed=3, rank=0), 5)
    resumed = batches(train_loader(c0, seed=3, rank=0, start=3), 2)
    assert [x["index"] for x in b] == [0, 1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["hr"], y["hr"]) and torch.equal(x["lr"], y["lr"])
    assert torch.equal(resumed[0]["hr"], a[3]["hr"]) and torch.equal(resumed[1]["lr"], a[4]["lr"])
    other_rank = batches(train_loader(c0, seed=3, rank=1), 1)
    other_seed = batches(train_loader(c0, seed=4, rank=0), 1)
    assert not torch.equal(other_rank[0]["hr"], a[0]["hr"])
    assert not torch.equal(other_seed[0]["hr"], a[0]["hr"])


def test_undecodable_samples_are_skipped_and_counted(shards):
    counter = SkipCounter()
    for b in batches(train_loader(cfg(shards, batch_size=8, patches_per_image=1), seed=0, rank=0), 12):
        counter.update(b)
    total = counter.total()
    assert sum(total.values()) >= 1
    assert set(total) <= {"truncated", "undecodable"}, total


def test_uneven_shards_are_all_sampled(shards):
    assert [n for _, n in shard_list(shards)] == [3, 1, 5]
    stream = PairStream(cfg(shards, batch_size=4, patches_per_image=4), shard_list(shards), 0, 0)
    reader, seen = TarReader(), set()
    real = reader.read
    reader.read = lambda path, i: (seen.add((Path(path).name, i)), real(path, i))[1]
    for i in range(60):
        stream.make_batch(i, reader, Counter())
    assert seen == {(Path(p).name, i) for p, n in shard_list(shards) for i in range(n)}


def test_tar_reader_matches_streaming_reader(shards):
    reader = TarReader(max_open=1)
    for path, n in shard_list(shards):
        streamed = list(iter_tar(path))
        assert len(streamed) == n
        for i, s in enumerate(streamed):
            got = reader.read(path, i)
            assert got["__key__"] == s["__key__"] and got["hr.png"] == s["hr.png"]
    with pytest.raises(IndexError):
        reader.read(shard_list(shards)[0][0], 99)


def test_hr_only_shards_need_a_degradation_preset(tmp_path):
    d = make_pair_shards(tmp_path / "hr", [2], hr_only=True)
    stream = PairStream(cfg(d), shard_list(d), 0, 0)
    with pytest.raises(ValueError, match="data.degrade"):
        stream.make_batch(0, TarReader(), Counter())


def test_augment_is_the_dihedral_group_per_sample():
    img = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3)
    views = set()
    for code in range(8):
        out = augment(img, torch.tensor([code, 0]))
        ref = img[0].numpy()
        ref = np.rot90(ref[:, ::-1] if code & 4 else ref, code & 3)
        assert np.array_equal(out[0].numpy(), ref) and torch.equal(out[1], img[1])
        views.add(out[0].numpy().tobytes())
    assert len(views) == 8


def test_groups_are_decoded_once_and_batches_need_no_history(shards):
    c = cfg(shards, batch_size=4, patches_per_image=3, streams=2)
    stream, reader, cache = PairStream(c, shard_list(shards), 0, 0), TarReader(), {}
    reads = []
    real = reader.read
    reader.read = lambda path, i: (reads.append((Path(path).name, i)), real(path, i))[1]
    skipped = Counter()
    for i in range(12):  # 2 streams x 2 groups x 3 batches
        stream.make_batch(i, reader, skipped, cache)
    assert len(reads) == 2 * 2 * 4 + sum(skipped.values())  # one decode per image per group
    again = PairStream(c, shard_list(shards), 0, 0).make_batch(7, TarReader(), Counter())  # no cache
    assert torch.equal(again["hr"], stream.make_batch(7, reader, Counter(), cache)["hr"])


def test_eval_pairs_split_across_ranks(shards):
    keys = [[k for k, _, _ in eval_pairs(shards / "eval", 2, r, 3, crop=32)] for r in range(3)]
    assert sorted(sum(keys, [])) == [f"img{i:05d}" for i in range(4)]
    assert keys[0] == ["img00000", "img00003"]
    _, lr, hr = next(eval_pairs(shards / "eval", 2, 0, 1, crop=32))
    assert lr.shape == (16, 16, 3) and hr.shape == (32, 32, 3)
    assert len(list(eval_pairs(shards / "eval", 2, 0, 1, limit=2))) == 2


def test_epoch_steps_from_index(shards):
    assert epoch_steps(cfg(shards, batch_size=2, patches_per_image=1), world_size=1, accum=1) == 4
    assert epoch_steps(cfg(shards, epoch_steps=7), world_size=2, accum=2) == 7


def test_hr_only_shards_degrade_patches_on_the_fly(tmp_path):
    d = make_pair_shards(tmp_path / "hr", [3], hr_only=True)
    c = cfg(d, degrade="seed", batch_size=3)
    a = PairStream(c, shard_list(d), 0, 0).make_batch(0, TarReader(), Counter())
    b = PairStream(c, shard_list(d), 0, 0).make_batch(0, TarReader(), Counter())
    assert a["lr"].shape == (3, 16, 16, 3) and torch.equal(a["lr"], b["lr"])
    for hr, lr in zip(a["hr"].numpy(), a["lr"].numpy(), strict=True):
        down = cv2.resize(hr, (16, 16), interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(down - lr).mean() < 20


def _raw_shards(d: Path) -> Path:
    """HR-only raw-*.tar as ingest writes them: ``<key>.png`` + ``<key>.json`` per sample."""
    from awm.data.synth import generate
    from awm.imageio import encode_image
    from awm.shardwrite import ShardStats, write_index, write_shard

    d.mkdir(parents=True, exist_ok=True)
    samples = [{"__key__": f"r{k}", "png": encode_image(generate(k, 80, 64), "png"), "json": {"id": f"r{k}"}}
               for k in range(3)]
    write_shard(d / "raw-000000.tar", samples, ShardStats("raw-000000.tar"))
    write_index(d, "raw-")
    return d


def test_check_data_names_the_key_and_what_is_wrong(shards, tmp_path):
    from awm.data.loader import check_data
    from awm.errors import ConfigError

    check_data(cfg(shards, eval=str(shards / "eval")))
    with pytest.raises(ConfigError, match="'data.eval': got '.*evl'.*index.json not found"):
        check_data(cfg(shards, eval=str(shards / "evl")))
    with pytest.raises(ConfigError, match=r"'data.scale': got 3; valid: a scale the data.train shards hold .*lr_x2, lr_x4"):
        check_data(cfg(shards, scale=3, patch=30))
    raw = _raw_shards(tmp_path / "raw")
    with pytest.raises(ConfigError, match=r"found \{'raw-\*.tar': 1\} \(raw-\*.tar holds HR only: set data.degrade"):
        check_data(cfg(raw))
    check_data(cfg(raw, degrade="seed"))  # train and (null: train's) eval from raw shards


def test_hr_only_raw_shards_train_and_validate_with_a_preset(tmp_path):
    raw = _raw_shards(tmp_path / "raw")
    c = cfg(raw, degrade="seed", batch_size=2)
    b = PairStream(c, shard_list(raw, "train", "seed"), 0, 0).make_batch(0, TarReader(), Counter())
    assert b["hr"].shape == (2, 32, 32, 3) and b["lr"].shape == (2, 16, 16, 3)
    first = [(k, lr.copy()) for k, lr, _ in eval_pairs(raw, 2, 0, 1, crop=32, degrade="seed")]
    again = [(k, lr) for k, lr, _ in eval_pairs(raw, 2, 0, 1, crop=32, degrade="seed")]
    assert [k for k, _ in first] == ["r0", "r1", "r2"] and first[0][1].shape == (16, 16, 3)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again, strict=True))  # same LR every time


def test_limit_trains_on_the_first_samples_only(shards):
    c = cfg(shards, limit=4, batch_size=4, patches_per_image=1, streams=2)
    stream, reader, keys, skipped = PairStream(c, shard_list(shards), 0, 0), TarReader(), [], Counter()
    real = reader.read
    reader.read = lambda path, i: (keys.append(real(path, i)["__key__"]), real(path, i))[1]
    for i in range(12):
        stream.make_batch(i, reader, skipped)
    assert set(keys) == {f"img{i:05d}" for i in range(4)}  # the corrupt img00004 (5th) is never drawn
    assert not skipped
    assert epoch_steps(c, world_size=1, accum=1) == 1
    with pytest.raises(ConfigError, match="data.limit"):
        cfg(shards, limit=0)
