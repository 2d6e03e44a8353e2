"""The scale bench's verdicts (issue 18's done-when checks), markdown and PNG curves.

Charts use matplotlib's Figure directly (no pyplot: no global state, no display), as demo.plots does.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from bench.output import write_png

LATENCY_LIMIT = 1.5  # decoding at the largest size / at the smallest, same beam and batch
CONSTRAINT_LIMIT_BYTES = 200 * 10**6  # 200 MB for the largest catalogue's constraint
PEERS = ("generative", "faiss-hnsw", "faiss-flat", "qdrant")
LABELS = {"generative": "ours: constrained beam 30", "faiss-hnsw": "faiss HNSW top-30",
          "faiss-flat": "faiss exact top-30", "qdrant": "Qdrant embedded top-30"}


def _mb(b: float) -> float:
    return round(b / 10**6, 1)


def verdicts(sizes: list[dict]) -> dict:
    """The two done-when checks, between the smallest and the largest size measured."""
    if not sizes:
        return {}
    small, large = sizes[0], sizes[-1]
    ratios = {f"batch{b}": round(large["decoding"]["generative"][f"batch{b}"]["p50_ms"]
                                 / small["decoding"]["generative"][f"batch{b}"]["p50_ms"], 3) for b in (1, 16)}
    levels = (small["decoding"]["generative"]["id_levels"], large["decoding"]["generative"]["id_levels"])
    constraint = large["decoding"]["constraint"]["catalogue"]["tensor_bytes"]
    first_disambiguated = next((s["items"] for s in sizes if any(
        t["disambiguation_level"] for t in s["identifiers"]["tasks"].values())), None)
    latency = {"from_items": small["items"], "to_items": large["items"], "p50_ratio": ratios,
               "limit": LATENCY_LIMIT, "id_levels": list(levels), "pass": all(r <= LATENCY_LIMIT for r in ratios.values())}
    control = small["decoding"].get("generative_plus_level")
    if control and control["id_levels"] == levels[1]:
        # the growth split: one more level at the small size, then more items at the same layout
        gen = small["decoding"]["generative"]
        latency["split"] = {f"batch{b}": {
            "one_more_level": round(control[f"batch{b}"]["p50_ms"] / gen[f"batch{b}"]["p50_ms"], 3),
            "more_items_same_layout": round(large["decoding"]["generative"][f"batch{b}"]["p50_ms"]
                                            / control[f"batch{b}"]["p50_ms"], 3)} for b in (1, 16)}
    return {
        "decoding_latency": latency,
        "constraint_memory": {"items": large["items"], "tensor_bytes": constraint, "limit_bytes": CONSTRAINT_LIMIT_BYTES,
                              "serving_bundle_bytes": large["decoding"]["constraint"]["serving_bundle"]["tensor_bytes"],
                              "pass": constraint <= CONSTRAINT_LIMIT_BYTES},
        "default_layout": {"first_size_needing_disambiguation": first_disambiguated},
    }


def _peer_rows(s: dict):
    d = s["decoding"]
    c = d["constraint"]["catalogue"]
    yield "generative", c["build_s"], c["tensor_bytes"], d["generative"], "-"
    if d.get("generative_plus_level"):
        yield f"generative, ids + 1 level ({d['generative_plus_level']['id_levels']})", "-", "-", \
            d["generative_plus_level"], "-"
    for name in ("faiss-hnsw", "faiss-flat"):
        yield name, d[name]["build_s"], d[name]["index_bytes"], d[name], d[name]["recall_at_30"]
    if d["qdrant"]:
        q = d["qdrant"]
        yield "qdrant", q["build_s"], q["peak_rss_mib"] * 2**20, q, "1.0 (exact scan)"


def markdown(results: dict) -> list[str]:
    m, st, sizes, v = results["machine"], results["settings"], results["sizes"], results["verdicts"]
    lines = [f"# How it scales: identifiers, constraint and decoding ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores (shared with other work during the run), "
             f"{m['memory_gib']} GiB; torch {m['torch']}, {st['threads']} thread(s) for torch, BLAS and faiss.", "",
             "Catalogues are synthetic (bench.scale_catalogue): generated titles and genres, and clustered vectors "
             "(20 topics x 20 sub-topics x 16 micro-clusters, Zipf-like sizes) that stand in for the MiniLM "
             "semantic (384-d) and item2vec collaborative (64-d) embeddings; MiniLM was not run over a million "
             "titles (hours on 2 cores, and it would measure the encoder).", "",
             f"RQ-VAE: the default architecture (2 shared + 2 specific levels of 256), trained on a sample of "
             f"min(items, {st['train_sample']:,}) for {st['warmup_epochs']} + {st['epochs']} epochs (default config: "
             "10 + 100 over every item), then ALL items assigned (Sinkhorn over the catalogue, collisions.resolve), "
             "as the bootstrap does. Memory: peak RSS above the stage's start, sampled every 5 ms.", "",
             "## Identifiers", "",
             "| items | train s (sample) | step ms | default config, est. | assign s | assign peak MiB | "
             "collisions before (search / rec) | max items per prefix | prefixes over 256 | disambiguation level | "
             "id levels | add 1,000 s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        i, t = s["identifiers"], s["identifiers"]["tasks"]
        add = i["add_1000"]
        lines.append(
            f"| {s['items']:,} | {i['train']['seconds']} ({i['train']['items']:,}) | {i['train']['step_ms']} | "
            f"{i['train']['default_config_estimate_s'] / 60:.0f} min | {i['assign']['seconds']} | {i['assign']['peak_rss_mib']} | "
            f"{t['search']['collision_rate_before']:.2%} / {t['rec']['collision_rate_before']:.2%} | "
            f"{t['search']['max_items_per_prefix']} / {t['rec']['max_items_per_prefix']} | "
            f"{t['search']['prefixes_over_capacity']} / {t['rec']['prefixes_over_capacity']} | "
            f"{'yes' if t['search']['disambiguation_level'] else 'no'} / {'yes' if t['rec']['disambiguation_level'] else 'no'} | "
            f"{t['search']['id_levels']} / {t['rec']['id_levels']} | "
            f"{add['seconds'] if not add['capacity_error'] else 'CapacityError'} |")
    lines += ["", "## Constraint", "",
              "| items | build s | tensors MB | nodes per level | serving bundle (2 tasks + genre groups): rows, MB, build s |",
              "|---|---|---|---|---|"]
    for s in sizes:
        c, b = s["decoding"]["constraint"]["catalogue"], s["decoding"]["constraint"]["serving_bundle"]
        lines.append(f"| {s['items']:,} | {c['build_s']} | {_mb(c['tensor_bytes'])} | {c['nodes_per_level']} | "
                     f"{b['rows_per_task']:,}, {_mb(b['tensor_bytes'])}, {b['build_s']} |")
    lines += ["", "## Decoding beside the dense peer", "",
              f"Latency of one call in ms: one request alone (batch 1) or 16 together (batch 16, the batch's time). "
              f"Ours: beam {st['beam']} over the rec ids, default model shape with random weights (the cost of a "
              f"step does not depend on the weights), a request = {st['history_events']} past interactions. "
              f"Peer: top {st['dense_k']} over the same items' semantic vectors, query encoding not included. "
              "Memory: constraint tensors (ours), index bytes (faiss), peak RSS of the upload (Qdrant).", "",
              "| items | way | build s | memory MB | b1 p50 | b1 p99 | b16 p50 | b16 p99 | recall@30 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in sizes:
        for name, build_s, memory, lat, recall in _peer_rows(s):
            lines.append(f"| {s['items']:,} | {name} | {build_s} | {memory if memory == '-' else _mb(memory)} | {lat['batch1']['p50_ms']} | "
                         f"{lat['batch1']['p99_ms']} | {lat['batch16']['p50_ms']} | {lat['batch16']['p99_ms']} | {recall} |")
        if not s["decoding"]["qdrant"]:
            lines.append(f"| {s['items']:,} | qdrant | not run: over --qdrant-max ({st['qdrant_max']:,}) | | | | | | |")
    if v:
        d, c = v["decoding_latency"], v["constraint_memory"]
        lines += ["", "## Verdicts", "",
                  f"- Generative decoding latency at {d['to_items']:,} items within {d['limit']}x of {d['from_items']:,} "
                  f"(p50, same beam and batch): **{'PASS' if d['pass'] else 'FAIL'}**, batch 1 {d['p50_ratio']['batch1']}x, "
                  f"batch 16 {d['p50_ratio']['batch16']}x (ids {d['id_levels'][0]} -> {d['id_levels'][1]} levels)."
                  + ("" if "split" not in d else " Of that, one more id level at "
                     f"{d['from_items']:,} items: {d['split']['batch1']['one_more_level']}x / "
                     f"{d['split']['batch16']['one_more_level']}x (batch 1 / 16); then {d['to_items']:,} items at "
                     f"the same layout: {d['split']['batch1']['more_items_same_layout']}x / "
                     f"{d['split']['batch16']['more_items_same_layout']}x: what the constraint's growth costs."),
                  f"- The constraint for {c['items']:,} items within {_mb(c['limit_bytes']):.0f} MB: "
                  f"**{'PASS' if c['pass'] else 'FAIL'}**, {_mb(c['tensor_bytes'])} MB (one task, whole catalogue; "
                  f"serving's bundle, both tasks with genre groups: {_mb(c['serving_bundle_bytes'])} MB).",
                  f"- First size that needs a disambiguation level with the default layout: "
                  f"{v['default_layout']['first_size_needing_disambiguation'] or 'none measured'}."]
    lines += ["", "## Notes", "",
              f"- Past {st['sinkhorn_chunk']:,} items the last-level Sinkhorn runs on random chunks of that many, each "
              "balanced: one pass over the whole catalogue (what the bootstrap does) holds the (n, 256) distances and "
              "their temporaries, ~0.85 GB per 100k items, ~8.5 GB at 1M. Training is bounded by the sample; "
              "'default config, est.' is the measured step time x the default config's steps over every item.",
              "- When a 3-code prefix holds more than 256 items, collisions.resolve appends a disambiguation level "
              "to every id of that task (0 for the items that kept their code): ids become 5 levels, the model's "
              "vocabulary one slot longer, decoding one step longer. A map without that level cannot take new items "
              "under a full prefix (place_new raises CapacityError; the learner reports them unplaced).",
              f"- Qdrant embedded (qdrant-client local mode) is an exact scan in Python/numpy with per-point Python "
              f"objects, not an HNSW: it is measured up to --qdrant-max ({st['qdrant_max']:,}); at 1M it would take "
              "~10x its 100k latency and memory. A Qdrant server (the Helm chart's) indexes with HNSW: not measured here.",
              f"- faiss HNSW keeps efSearch {st['hnsw']['efSearch']} at every size, so its recall@30 (against exact "
              "top 30) falls as the catalogue grows; holding recall needs a larger efSearch, which costs latency.",
              "- Load from other work on this shared machine lands on single calls (the p99s); our decoding is "
              "timed with the sizes interleaved round by round so that it falls on every size alike."]
    if results.get("charts"):
        lines += ["", "Charts: " + ", ".join(f"[{p}]({p})" for p in results["charts"])]
    return lines


def charts(sizes: list[dict], out_dir: Path, name: str = "scale") -> list[str]:
    """<name>_latency.png (ours and the peers, batch 1 and 16) and <name>_cost.png
    (memory, build time, prefix load); returns the file names."""
    if not sizes:
        return []
    items = [s["items"] for s in sizes]
    fig = Figure(figsize=(11, 4.2))
    for panel, batch in enumerate((1, 16)):
        ax = fig.add_subplot(1, 2, panel + 1)
        for peer in PEERS:
            rows = [(s["items"], (s["decoding"]["generative"] if peer == "generative" else s["decoding"][peer]))
                    for s in sizes if s["decoding"].get(peer)]
            if not rows:
                continue
            x = [r[0] for r in rows]
            line, = ax.plot(x, [r[1][f"batch{batch}"]["p50_ms"] for r in rows], "o-", label=f"{LABELS[peer]} p50")
            ax.plot(x, [r[1][f"batch{batch}"]["p99_ms"] for r in rows], "--", color=line.get_color(), alpha=0.6)
            control = sizes[0]["decoding"].get("generative_plus_level")
            if peer == "generative" and control and "batch1" in control:
                ax.plot([sizes[0]["items"]], [control[f"batch{batch}"]["p50_ms"]], "x", ms=9, color=line.get_color(),
                        label=f"ours, ids + 1 level ({control['id_levels']}) p50")
        ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="ms per call (dashed: p99)",
               title=f"latency, batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        if panel == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(fig, out_dir / f"{name}_latency.png")

    fig = Figure(figsize=(13, 4.2))
    ax = fig.add_subplot(1, 3, 1)
    ax.plot(items, [s["decoding"]["constraint"]["catalogue"]["tensor_bytes"] / 1e6 for s in sizes], "o-", label="ours: constraint, 1 task")
    ax.plot(items, [s["decoding"]["constraint"]["serving_bundle"]["tensor_bytes"] / 1e6 for s in sizes], "o:",
            label="ours: serving bundle (2 tasks + genres)")
    ax.plot(items, [s["decoding"]["faiss-hnsw"]["index_bytes"] / 1e6 for s in sizes], "s-", label="faiss HNSW index")
    ax.axhline(CONSTRAINT_LIMIT_BYTES / 1e6, color="grey", lw=0.8, ls="--", label="200 MB")
    ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="MB", title="memory")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 2)
    ax.plot(items, [s["identifiers"]["train"]["seconds"] for s in sizes], "o-", label="RQ-VAE train (sample)")
    ax.plot(items, [s["identifiers"]["assign"]["seconds"] for s in sizes], "o-", label="assign + resolve (all)")
    ax.plot(items, [max(s["decoding"]["constraint"]["catalogue"]["build_s"], 1e-3) for s in sizes], "o-", label="constraint build")
    ax.plot(items, [s["identifiers"]["add_1000"]["seconds"] for s in sizes], "o-", label="add 1,000 items")
    ax.plot(items, [s["decoding"]["faiss-hnsw"]["build_s"] for s in sizes], "s-", label="faiss HNSW build")
    q = [(s["items"], s["decoding"]["qdrant"]["build_s"]) for s in sizes if s["decoding"]["qdrant"]]
    if q:
        ax.plot(*zip(*q), "s-", label="Qdrant upload")
    ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="seconds", title="build")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 3)
    for task in ("search", "rec"):
        ax.plot(items, [s["identifiers"]["tasks"][task]["max_items_per_prefix"] for s in sizes], "o-",
                label=f"{task}: max items under one 3-code prefix")
    ax.axhline(256, color="grey", lw=0.8, ls="--", label="256 last-level codes")
    ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="items", title="last-level load (before resolution)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(fig, out_dir / f"{name}_cost.png")
    return [f"{name}_latency.png", f"{name}_cost.png"]
