"""Test helper: small contract-1 pair shards written directly with awm.shardwrite (no awm.data.shard needed).

LR is an INTER_AREA downscale saved as JPEG q85, like the seed's; sizes are multiples of the scale.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from awm.data.synth import generate
from awm.imageio import encode_image
from awm.shardwrite import ShardStats, write_index, write_shard


def make_pair_shards(directory: Path, counts: list[int], scales: tuple[int, ...] = (2,),
                     size: tuple[int, int] = (96, 64), seed: int = 0, split: str = "train",
                     hr_only: bool = False, corrupt: tuple[str, ...] = ()) -> Path:
    """Shards ``{split}-%06d.tar`` holding ``counts[i]`` samples each, plus ``index.json``.

    Keys listed in ``corrupt`` get truncated HR bytes (truncated samples: the "truncated" skip).
    """
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, count in enumerate(counts):
        samples = []
        for _ in range(count):
            key = f"img{n:05d}"
            hr = generate(seed * 100003 + n, *size)
            m = max(scales)
            hr = hr[: hr.shape[0] // m * m, : hr.shape[1] // m * m]
            sample = {"__key__": key, "hr.png": encode_image(hr, "png"),
                      "json": {"id": key, "source": "synth", "scales": list(scales), "preset": "test",
                               "params": {}, "seed": seed, "hr_size": [hr.shape[1], hr.shape[0]],
                               "tile": None}}
            if key in corrupt:
                sample["hr.png"] = sample["hr.png"][: len(sample["hr.png"]) // 2]
            if not hr_only:
                for s in scales:
                    lr = cv2.resize(hr, (hr.shape[1] // s, hr.shape[0] // s), interpolation=cv2.INTER_AREA)
                    sample[f"lr_x{s}.jpg"] = encode_image(lr, "jpg", 85)
            samples.append(sample)
            n += 1
        name = f"{split}-{i:06d}.tar"
        write_shard(directory / name, samples, ShardStats(name))
    write_index(directory, split, {"split": split, "scales": list(scales), "preset": "test", "seed": seed})
    return directory

