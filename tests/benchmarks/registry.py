"""Which benchmark measures which code, how `make bench` runs it, and how its rows read.

One place for the map benchmark -> measured paths: a row of the README's Performance table is
fresh only while none of its benchmark's paths changed after the commit it was measured on
(tests/unit/test_bench_results.py). ``args=None`` marks a row no run here can produce (a GPU
figure without a GPU, a hand extrapolation): such rows stay in results.jsonl as imported text and
the table labels them as from an earlier tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Rows = Callable[[dict[str, Any]], list[dict[str, str]]]


@dataclass(frozen=True)
class Bench:
    """A benchmark configuration: ``script`` run with ``args`` in ``env``; ``rows`` turns its JSON
    into table rows (what, result, baseline); ``paths`` is the code whose change (or the script's)
    makes it stale."""

    name: str
    script: str
    args: tuple[str, ...] | None
    paths: tuple[str, ...]
    rows: Rows | None = None
    needs: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _f(x: float, digits: int = 2) -> str:
    """A figure with ``digits`` significant digits, no exponent (readable in a table)."""
    if x == 0:
        return "0"
    from math import floor, log10
    d = max(0, digits - 1 - floor(log10(abs(x))))
    return f"{x:,.{d}f}"


def _generic(name: str) -> Rows:
    """Rows for a benchmark without a hand-written summary: its numeric leaves, named by path."""
    def rows(fig: dict[str, Any]) -> list[dict[str, str]]:
        leaves: list[str] = []

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                leaves.append(f"{prefix}={_f(float(v), 3)}")
        walk("", fig)
        return [{"what": f"`bench_{name.split('-')[0]}.py` (figures by key; see results.jsonl)",
                 "result": "; ".join(leaves[:16]) + (" ..." if len(leaves) > 16 else ""),
                 "baseline": "in the figures (see the benchmark's docstring)"}]
    return rows


def _dedup_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    sizes = fig["sizes"]
    ns = list(sizes)
    exp = " / ".join(f"10^{len(n) - 1}" for n in ns) + ("" if "1000000" in ns else " (10^6: not in this run; "
                                                          "`--sizes 1000000` builds its hash set once, ~30 min)")
    idx = " / ".join(_f(sizes[n]["index_us_per_lookup"] / 1e3) for n in ns)
    lin = " / ".join(_f(sizes[n]["bitwise_count_us_per_lookup"] / 1e3) for n in ns)
    ratio = " / ".join(_f(sizes[n]["speedup_vs_bitwise_count"]) + "x" for n in ns)
    old = " / ".join(_f(sizes[n]["speedup_vs_unpackbits"]) + "x" for n in ns)
    slower = [f"10^{len(n) - 1}" for n in ns if sizes[n]["speedup_vs_bitwise_count"] < 1]
    note = f"; **the index is slower at {', '.join(slower)}**" if slower else ""
    return [{"what": f"near-duplicate lookup, radius {fig['radius']}, {exp} kept hashes ({fig['hashes']})",
             "result": f"{idx} ms per lookup (multi-index, median of {fig['rounds']} interleaved rounds)",
             "baseline": f"{ratio} the best NumPy linear scan (`np.bitwise_count` popcount, {lin} ms){note}; "
                         f"{old} the older `np.unpackbits` scan; same answers on every query both ran"}]


def _crawl_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for sc in fig["scenarios"]:
        a = sc["awm"]
        peers = []
        for v in fig["peers"]:
            i, r = sc[f"img2dataset_{v}"], sc[f"ratio_vs_{v}"]
            met = r["images_per_s"] >= 1 and r["cpu_per_image"] <= 1 and r["rss"] <= 2
            peers.append(f"img2dataset `{v}` {_f(i['images_per_s'], 3)} images/s, {_f(i['cpu_ms_per_image'], 3)} CPU-ms "
                         f"per image, {_f(i['rss_mb'], 3)} MB RSS, {_f(i['written_mb'], 3)} MB written: awm at "
                         f"**{_f(r['images_per_s'])}x** its images/s (rounds {_f(r['images_per_s_min'])}-"
                         f"{_f(r['images_per_s_max'])}), {_f(r['cpu_per_image'])}x its CPU per image, {_f(r['rss'])}x "
                         f"its RSS (goal >= 1x, <= 1x, <= 2x: {'met' if met else 'not met'})")
        out.append({
            "what": f"crawl vs img2dataset {fig['img2dataset_version']} (`nodecode`: --disable_all_reencoding, bytes "
                    f"copied unchecked; `decode`: --resize_mode no --skip_reencode, one job per format), "
                    f"{fig['images']} wallpapers {fig['sizes']} PNG+JPEG ({_f(fig['mb_total'], 3)} MB), "
                    f"{fig['workers']} workers, {sc['latency_ms']} ms server latency, whole processes incl. start-up, "
                    "originals byte-exact on both sides",
            "result": f"awm {_f(a['images_per_s'], 3)} images/s, {_f(a['cpu_ms_per_image'], 3)} CPU-ms per image, "
                      f"peak RSS {_f(a['rss_mb'], 3)} MB, {_f(a['written_mb'], 3)} MB written "
                      f"(medians of {fig['rounds']} interleaved rounds)",
            "baseline": "; ".join(peers)})
    return out


def _upscale_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    t, tiny = fig.get("throughput"), fig.get("throughput_tiny")
    if t:
        def ratio(x: dict[str, Any]) -> str:
            return f"{x['model']} {_f(x['tiled_mp_s'], 3)} vs {_f(x['whole_mp_s'], 3)}"
        out.append({"what": f"upscale, tiled {t['tile']}/{t['tile_pad']} vs whole, x{t['scale']} {t['input']} input, "
                            f"CPU {t['precision']}, {fig['threads']} thread(s), both warmed up at full size",
                    "result": "input MP/s tiled vs whole: " + "; ".join(ratio(x) for x in (t, tiny) if x),
                    "baseline": "tiling time overhead (median runs): " + "; ".join(
                        f"{x['model']} {x['tiled_time_overhead'] * 100:+.1f}%" for x in (t, tiny) if x)})
    o = fig.get("onnx")
    if o:
        out.append({"what": f"upscale with onnxruntime vs torch, {t['model'] if t else ''} x4 {o['input']} input, "
                            f"tiled {o['tile']}, CPU, {o['threads']} thread(s) each, same process, runs interleaved",
                    "result": f"onnxruntime {_f(o['cpu_s_onnx'], 3)} CPU-s ({_f(o['wall_s_onnx'], 3)} s wall) per image",
                    "baseline": f"torch {_f(o['cpu_s_torch'], 3)} CPU-s ({_f(o['wall_s_torch'], 3)} s wall): onnxruntime "
                                f"**{_f(o['cpu_speedup'], 3)}x** faster in CPU time, {_f(o['wall_speedup'], 3)}x in wall "
                                f"(medians of {o['rounds']} pairs)"})
    m = fig.get("memory")
    if m:
        sizes = [k for k, v in m.items() if isinstance(v, dict) and "delta_mb" in v and not k.endswith("_whole")]
        whole = [k for k, v in m.items() if isinstance(v, dict) and k.endswith("_whole")]
        out.append({"what": f"upscale peak RSS over a 64x64 run, `--tile {m['tile']}`, x{m['scale']}, model "
                            f"`{m['model']['arch']}` ({m['model']['params']:,} parameters: the figures are canvas and tile buffers)",
                    "result": ", ".join(f"{k} +{_f(m[k]['delta_mb'], 3)} MB" for k in sizes),
                    "baseline": "bound 8 x output 8-bit bytes + 512 MB: " + ", ".join(
                        f"{k} {'within' if m[k]['within_bound'] else 'OVER'} ({_f(m[k]['delta_over_output'], 2)}x the output)"
                        for k in sizes) + "".join(f"; whole image, {k.removesuffix('_whole')}: +{_f(m[k]['delta_mb'], 3)} MB"
                                                  for k in whole)})
    return out


def _db(x: float | str) -> str:
    return x if isinstance(x, str) else _f(x, 3)


def _why(msg: str) -> str:
    """A refusal's reason, shortened for a table cell (results.jsonl keeps it whole)."""
    return msg if len(msg) <= 110 else msg[:msg.rfind(" ", 0, 107)] + " ..."


def _export_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    models = fig["models"]

    def name(m: dict[str, Any]) -> str:
        return f"demo {m['model']} (trained)" if m.get("trained") else m["model"]

    def cell(m: dict[str, Any], fmt: str) -> str:
        r = m[fmt]
        if "refused" in r:
            return f"{name(m)} refused"
        real = f" [{_db(r['min_db_real'])}]" if r.get("min_db_real") is not None else ""
        return f"{name(m)} {_db(r['min_db'])}{real}" + ("" if r["passes"] else " **below the floor: refused**")

    labels = {"onnx_fp32": "ONNX fp32", "onnx_fp16": "ONNX fp16", "ncnn": "NCNN fp32"}
    fmts = fig["formats"]
    floors = {f: next((m[f]["floor_db"] for m in models if "floor_db" in m[f]), None) for f in fmts}
    refused = []
    for m in models:
        why: dict[str, list[str]] = {}
        for f in fmts:
            if "refused" in m[f]:
                why.setdefault(m[f]["refused"], []).append(labels[f])
        refused += [f"{name(m)} {' and '.join(fs)}: {_why(msg)}" for msg, fs in why.items()]
    slow = max(((m[f]["seconds"], f"{name(m)} {labels[f]}") for m in models for f in fmts), default=None)
    real = fig["real"]
    real_txt = (f"in brackets over central 64 px crops of the {len(real['images'])} real images of `../shared/data/real`"
                if "images" in real else "real images: not in this run (`../shared/data/real` absent)")
    demo = "; the demo's trained Compact: not in this run (`make demo` first)" if "demo" in fig else ""
    v = fig["versions"]
    return [{"what": f"export fidelity: PSNR (dB, peak 1) of onnxruntime and ncnn (CPU) against torch fp32, same "
                     f"weights, through `awm export`'s export and check code; worst over the check's inputs (noise and "
                     f"generated anime, 2 sizes), {real_txt}; x{fig['scale']} random-init `-tiny` models with image-like "
                     f"outputs{demo}; torch {v['torch']}, onnxruntime {v['onnxruntime']}, ncnn {v['ncnn']}",
             "result": "; ".join(f"{labels[f]}: " + ", ".join(cell(m, f) for m in models) for f in fmts)
                       + (f"; slowest export and check {slow[1]}, {_f(slow[0], 2)} s" if slow else ""),
             "baseline": "floors a release enforces: " + ", ".join(f"{labels[f]} {_f(x, 2)} dB" for f, x in floors.items()
                                                                    if x is not None)
                         + ("; refused: " + "; ".join(refused) if refused else "")}]


def _train_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    rs = fig["results"]
    r0 = rs[0] if rs else {}
    rows = [{"what": f"training step on {fig['device']}, {fig['precision']}, {fig['threads']} thread(s), LR {r0['lr_patch']} px, "
                     f"batch {r0['batch']}, {fig['steps']} steps a repeat, {fig['repeats']} repeats alternating awm/bare",
             "result": "pairs/s awm (bare), medians: " + ", ".join(
                 f"{r['case']} {_f(r['awm']['pairs_per_s'], 3)} ({_f(r['bare']['pairs_per_s'], 3)})" for r in rs),
             "baseline": "a bare PyTorch loop with the same model, memory format, fused AdamW, EMA and losses on the same "
                         "in-memory batch; awm's overhead, median of the paired ratios [range]: " + ", ".join(
                 f"{r['case']} {r['overhead_pct']:+.1f}% [{r['overhead_pct_range'][0]:+.1f}, {r['overhead_pct_range'][1]:+.1f}]"
                 for r in rs) + " (on a shared 2-core machine a range this wide is noise)"}] if rs else []
    return rows + _train_peer_rows(fig)


def _train_peer_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    """awm against BasicSR and neosr, the peers named; a peer that could not run says why."""
    pc = fig.get("peers")
    if not pc:
        return []
    sides, labels = pc["sides"], pc["labels"]
    a = sides["awm"]
    measured = [k for k in labels if k in sides]
    cpu = [f"awm {_f(a['cpu_ms_per_pair'], 3)} ms"] + [f"{labels[k]} {_f(sides[k]['cpu_ms_per_pair'], 3)} ms"
                                                      for k in measured]
    rate = [f"awm {_f(a['pairs_per_s'], 3)}"] + [f"{labels[k]} {_f(sides[k]['pairs_per_s'], 3)}" for k in measured]
    ratios = [f"{labels[k]} **{_f(sides[k]['cpu_vs_awm'], 3)}x** awm's [{_f(sides[k]['cpu_vs_awm_range'][0], 3)}, "
              f"{_f(sides[k]['cpu_vs_awm_range'][1], 3)}]" for k in measured]
    ratios += [f"{labels[k]} **not measured**: {why}" for k, why in pc["skipped"].items()]
    return [{"what": f"training on {fig['device']}, awm vs {' and '.join(labels.values())}, {pc['case']} only (the "
                     "architecture all ship: SRVGGNetCompact 64x16 PReLU), L1 only, fp32, "
                     f"{fig['threads']} thread(s), batch {pc['batch']}, LR {pc['lr_patch']} px, {pc['workers']} loader "
                     f"worker(s), {pc['optimizer']} lr {pc['lr_g']:g}, EMA {'on' if pc['ema'] else 'off'} for every side, no augmentation; "
                     f"the same {pc['images']} images each in its native format (awm: pair shards, HR PNG + LR JPEG, through "
                     f"its Trainer and loader, each decode cut into {pc['awm_patches_per_image']} patches over as many "
                     "batches, its default; the peers: their paired datasets from LR/HR PNG folders, one crop per "
                     f"decode, through their own dataset/model API); {pc['steps']} steps "
                     f"after warm-up, {pc['rounds']} interleaved rounds",
             "result": "CPU per pair (process tree, medians): " + ", ".join(cpu)
                       + f"; bare loop on an in-memory batch {_f(sides['bare']['cpu_ms_per_pair'], 3)} ms (the floor); "
                       "pairs/s: " + ", ".join(rate),
             "baseline": "peer CPU per pair / awm's, median of the rounds [range]: " + "; ".join(ratios)}]


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _shard_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    """The eval split against the codec floor, per image size."""
    out = []
    for size, f in fig.items():
        if not isinstance(f, dict) or "floor_img_s" not in f:
            continue
        r = f["ratio_w1_to_floor"]
        out.append({
            "what": f"shard {size}, `seed` preset, eval split (whole images: the HR source PNG bytes pass through, "
                    f"only LRs are encoded), {f['images']} images, 1 worker (2 workers), PNG decoder {fig['png_decoder']}",
            "result": f"{_f(f['shard_w1_img_s_per_core'], 3)} images/s per core "
                      f"({_f(f['speedup_w2'])}x with 2 workers)",
            "baseline": f"{_f(r)} of the codec floor measured in the same run ({_f(f['floor_img_s'], 3)} images/s: "
                        f"read + decode + the LR encodes only; {_f(f['ratio_w1_to_floor_cpu'])} in CPU time; goal 0.85: "
                        f"{_met(r >= 0.85)}); {_f(f['shard_w1_img_s_per_core'] / f['seed_way_img_s'])}x the seed's "
                        f"loose-file way ({_f(f['seed_way_img_s'], 3)} images/s)"})
    return out


def _shard_tiled_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    """The train split cut into 512 px tiles, against the eval split of the same run."""
    out = []
    for size, f in fig.items():
        if isinstance(f, dict) and "shard_train_tiled_img_s" in f:
            t = f["shard_train_tiled_img_s"]
            out.append({
                "what": f"shard {size}, `seed`, **train split tiled** (`--tile 512`: every tile's HR PNG encoded, "
                        f"LRs per tile), {f['images']} images, 1 worker",
                "result": f"{_f(t, 3)} images/s",
                "baseline": f"{_f(t / f['shard_w1_img_s_per_core'])}x the eval split in the same run "
                            f"({_f(f['shard_w1_img_s_per_core'], 3)} images/s): tiles pay a PNG encode each and "
                            "a degradation per tile, which the eval split never does"})
    return out


def _loader_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    m, same, e2e, remote = fig["median"], fig["same_work"], fig["end_to_end"], fig["remote"]
    r = same["ratio_shards_vs_loose_tiles"]
    return [{
        "what": f"training loader, (LR, HR {fig['hr_patch']}) pairs, {fig['scale']}x, batch {fig['batch']}, from 512 px "
                f"tiles of 1080p images, each decode reused for 8 batches, {fig['repeats']} repeats",
        "result": f"{_f(m['shards_in_process'], 3)} pairs/s in-process, {_f(m['shards_1_worker'], 3)} through one "
                  "loader worker process",
        "baseline": f"the same tiles as loose files, same reuse: {_f(r, 3)}x (goal >= 1.0: {_met(r >= 1.0)}); the seed's "
                    f"way (a whole 1080p image decoded per pair, {_f(m['whole_images_reuse_1'], 3)} pairs/s): "
                    f"{_f(e2e['ratio'], 3)}x, of which {_f(e2e['of_which_reuse'])}x is the reuse; shards over HTTP "
                    f"through the shard cache vs a local folder: {_f(remote['ratio_http_cold_vs_local'], 3)}x cold, "
                    f"{_f(remote['ratio_http_warm_vs_local'], 3)}x warm; tiling offline "
                    f"{_f(fig['tiling_offline']['s_per_image'])} s per 1080p image"}]


def _degrade_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    m, ratio = fig["median"], fig["device_vs_worker_core"]
    presets = sorted(ratio)
    return [{
        "what": f"on-the-fly degradation, HR {fig['hr_patch']}, {fig['scale']}x, batch {fig['batch']}: loader worker "
                f"(OpenCV) vs the training-device path run on {fig['device']}",
        "result": "; ".join(f"`{p}` {_f(m[p + '/worker'], 3)} pairs/s per worker core vs {_f(m[p + '/device'], 3)} "
                            "on the device path" for p in presets),
        "baseline": "device/worker in the same run: " + ", ".join(f"{_f(ratio[p])} (`{p}`)" for p in presets)
                    + ", hence `auto` = worker on a CPU; GPU: not measured here (`tests/gpu/run.sh`)"}]


def _eval_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    """The fast metrics against pyiqa's own code, then 2 processes against 1."""
    pm = fig["per_metric"]
    out = [{
        "what": f"eval metrics, AWM's CPU fast path vs pyiqa's own code, {fig['metric_images']} images "
                f"{fig['metric_size'][0]}x{fig['metric_size'][1]}, {fig['threads']} thread(s), same process",
        "result": "CPU-ms per image: " + ", ".join(f"{m} {_f(v['fast_cpu_ms_per_image'], 3)}" for m, v in pm.items()),
        "baseline": "pyiqa " + ", ".join(f"{m} {_f(v['pyiqa_cpu_ms_per_image'], 3)} ms ({_f(v['cpu_speedup'])}x)"
                                         for m, v in pm.items())
                    + "; largest difference of the values: " + ", ".join(f"{m} {v['max_abs_diff']:.1e}" for m, v in pm.items())}]
    if "wall_s" in fig:
        w, loop, sw, sl = fig["wall_s"], fig["loop_images_per_s"], fig["wall_speedup_2x1_vs"], fig["loop_speedup_2x1_vs"]
        out.append({
            "what": f"`awm eval`, 2 processes (torchrun, 1 thread each) vs 1 process x 1 thread and x 2 threads, "
                    f"{fig['samples']} images {fig['size'][0]}x{fig['size'][1]}, {fig['models']} models, {fig['metrics']}",
            "result": f"whole command incl. start-up, imports and gather: {_f(w['2x1'], 3)} s (2x1) vs {_f(w['1x1'], 3)} s "
                      f"(1x1) vs {_f(w['1x2'], 3)} s (1x2); scoring loop {_f(loop['2x1'], 3)} vs {_f(loop['1x1'], 3)} vs "
                      f"{_f(loop['1x2'], 3)} images/s",
            "baseline": f"2 processes: {_f(sw['1x1'])}x the 1x1 wall ({_f(sl['1x1'])}x its loop), {_f(sw['1x2'])}x the "
                        f"1x2 wall ({_f(sl['1x2'])}x its loop); goal {fig['goal_speedup']}x over 1x1: "
                        f"{_met(sw['1x1'] >= fig['goal_speedup'])}; per-image scores of the layouts equal within "
                        f"{fig['per_image_max_abs_diff']:.1e}"})
    return out


def _jpeg_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    q0, q1, step = fig["qualities"]
    worst = "" if fig["floor_db"] is None else f"; worst quality {_db(fig['floor_db'])} dB"
    ref = sorted(fig["cv2_vs_source_mean_db"].values())
    return [{
        "what": f"device-path JPEG (torch, `awm.data.degrade_device`) vs OpenCV's encode + decode, qualities {q0}-{q1} "
                f"step {step}, {len(fig['images'])} images (generated, odd sizes, and the real ones), on {fig['device']}",
        "result": f"{fig['bit_exact_cases']} of {fig['cases']} cases bit-exact (largest pixel difference "
                  f"{fig['max_abs_diff']}{worst})",
        "baseline": f"OpenCV's own round trip changes the source by {_db(ref[0])}-{_db(ref[-1])} dB (median "
                    f"{_db(ref[len(ref) // 2])}): the agreement reads against that"}]


def _niqe_anime_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for name in ("real", "generated"):
        d = fig.get(name)
        if not d:
            continue
        ranks = "; ".join(f"{m}: {' < '.join(d[m]['rank_best_first'])} (HR beats bicubic on "
                          f"{d[m]['images_hr_beats_bicubic']} of {d['count']})" for m in d if isinstance(d[m], dict))
        out.append({
            "what": f"does the metric rank sharper reconstructions better (lower is better): HR, bicubic + unsharp, "
                    f"lanczos, bicubic of a 2x INTER_AREA downscale; {d['count']} {name} images"
                    + ("" if d["independent_of_the_fit"] else " (same generator as niqe_anime's fit: not independent)"),
            "result": ranks,
            "baseline": "standard NIQE (pyiqa, with the staged weights) in the same run where listed; a metric that "
                        "suits anime puts hr first and bicubic last"})
    return out


def _luma_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    ties = ", ".join(f"{k} {v:,}" for k, v in fig["tie_colours"].items())
    return [{
        "what": f"luma of all {fig['colours']:,} 8-bit colours, {' and '.join(fig['checked'])}, both scales",
        "result": "every colour within float32 rounding of the exact value" if fig["within_float32_rounding"]
                  else "**some colour outside float32 rounding**",
        "baseline": f"exact rational luma (tests/luma_ties.py); colours on a .5 tie, where CPUs may round either "
                    f"way: {ties}"}]


def _quality_rows(fig: dict[str, Any]) -> list[dict[str, str]]:
    m, goal = fig["mean"], fig["goal"]
    gain, niqe = fig["psnry_gain_db"], fig["niqe_anime_change"]
    met = gain >= goal["psnry_gain_db"] and niqe < 0
    return [{
        "what": f"demo model (`make demo`) vs bicubic on the {fig['images']} real images of `../shared/data/real`, "
                "never trained on, 2x `seed` eval split",
        "result": f"PSNR-Y {gain:+.2f} dB (median {fig['psnry_gain_median_db']:+.2f}; {fig['psnry_images_model_better']} "
                  f"of {fig['images']} images better); niqe_anime {m['niqe_anime']['model']:.2f} vs "
                  f"{m['niqe_anime']['bicubic']:.2f} ({fig['niqe_anime_images_model_better']} of the "
                  f"{fig['niqe_anime_images_scored']} it can score better)",
        "baseline": f"bicubic of the same LR (PSNR-Y {m['psnry']['bicubic']:.2f} dB); goal >= +{goal['psnry_gain_db']} dB "
                    f"and a lower niqe_anime: {_met(met)}; niqe_anime was fitted on {fig['niqe_anime_fitted_on']}: "
                    "on these real images it is independent, but they are few"}]


_ACQ = ("awm/acquire", "awm/shardwrite.py", "awm/imageio.py", "awm/errors.py", "tests/integration/booru_server.py")
_SHARD = ("awm/data", "awm/shardio", "awm/shardwrite.py", "awm/imageio.py")
_TRAIN = ("awm/train", "awm/models", "awm/data/loader.py", "awm/dist.py", "tests/benchmarks/peer_train.py")

BENCHES: tuple[Bench, ...] = (
    Bench("crawl", "bench_crawl.py", ("--images", "64", "--rounds", "3", "--latencies", "30"), _ACQ, _crawl_rows),
    Bench("crawl-extrapolated", "bench_crawl.py", None, _ACQ),
    Bench("dedup", "bench_dedup.py", ("--sizes", "10000,100000", "--rounds", "3"), ("awm/acquire/nearindex.py", "awm/acquire/clean.py"), _dedup_rows),
    Bench("shard", "bench_shard.py", ("--repeats", "2", "--sets", "1920x1080,3840x2160"), _SHARD, _shard_rows),
    Bench("shard-tiled", "bench_shard.py", ("--sets", "1920x1080", "--repeats", "2"), _SHARD, _shard_tiled_rows),
    Bench("loader", "bench_loader.py", ("--images", "4", "--repeats", "2"), _SHARD, _loader_rows),
    Bench("degrade", "bench_degrade.py", ("--images", "4", "--seconds", "3", "--repeats", "2"), ("awm/data",),
          _degrade_rows),
    Bench("train-cpu", "bench_train.py", ("--lr-patch", "8", "--batches", "4", "--cases", "compact-x2,span-x4,rrdb-6b-x4-l1",
                                          "--repeats", "3", "--peers", "basicsr,neosr", "--peer-batch", "8", "--peer-lr-patch", "16", "--peer-steps", "30",
                                          "--peer-rounds", "3"), _TRAIN, _train_rows, env={"OMP_NUM_THREADS": "1"}),
    Bench("train-gpu", "bench_train.py", None, _TRAIN, needs="cuda"),
    Bench("models-gpu", "bench_models.py", None, ("awm/models", "awm/train"), needs="cuda"),
    Bench("upscale-gpu", "bench_upscale.py", None, ("awm/upscale", "awm/models"), needs="cuda"),
    Bench("upscale", "bench_upscale.py", ("--size", "640x360", "--repeats", "4", "--mem-sizes", "1080p"),
          ("awm/upscale", "awm/models", "awm/release"), _upscale_rows, env={"OMP_NUM_THREADS": "1"}),
    Bench("export", "bench_export.py", (), ("awm/models/onnx.py", "awm/models/ncnn.py", "awm/models/archs.py", "awm/release"),
          _export_rows),
    Bench("eval", "bench_eval.py", ("--samples", "8", "--repeats", "2"), ("awm/eval", "awm/launch", "awm/dist.py"),
          _eval_rows),
    Bench("jpeg-agreement", "bench_jpeg_agreement.py", ("--step", "5"), ("awm/data/degrade_device.py", "awm/data/degrade_ops.py"),
          _jpeg_rows),
    Bench("niqe-anime", "bench_niqe_anime.py", (), ("awm/eval", "awm/assets"), _niqe_anime_rows),
    Bench("luma", "bench_luma.py", (), ("awm/eval/fast_metrics.py", "tests/luma_ties.py"), _luma_rows),
    Bench("quality", "bench_quality.py", (), ("awm/train", "awm/models", "awm/data", "awm/eval", "awm/demo.py"),
          _quality_rows, needs="demo"),
)


def by_name() -> dict[str, Bench]:
    """The registry keyed by benchmark name."""
    return {b.name: b for b in BENCHES}


def rows_for(bench: Bench, figures: dict[str, Any]) -> list[dict[str, str]]:
    """The table rows a run of ``bench`` yields from its printed JSON."""
    return (bench.rows or _generic(bench.name))(figures)
