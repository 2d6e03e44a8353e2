"""Part 1 of the scale bench: identifiers at a catalogue size, through the project's own code.

    train      identifiers.rqvae.train_rqvae on a SAMPLE of the items (bounded epochs:
               the default 100 epochs over every item would take hours at 1M on 2 cores;
               the step time is measured, so the full cost is extrapolated)
    assign     RQVAE.assign(balanced=True) over ALL items (Sinkhorn over the catalogue at
               the last level), then collisions.resolve per task: what build._build does.
               Past `sinkhorn_chunk` items (100k) the Sinkhorn runs on random chunks of
               that many, each balanced: one pass over 1M would hold ~9 GB (the (n, 256)
               distance matrix and its temporaries, ~0.9 GB per 100k items, measured)
    add        identifiers.assign.add_items for 1,000 new items: the learner's path
               (encode through the trained RQ-VAE, place against the existing ids, derive)

Memory is bench.scale_catalogue.PeakRSS: the peak RSS above the stage's start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.scale_catalogue import Catalogue, PeakRSS
from identifiers.assign import add_items
from identifiers.collisions import CapacityError, resolve
from identifiers.idmap import IdentifierMap
from identifiers.rqvae import RQVAE, RQVAEConfig, train_rqvae

NEW_ITEMS = 1_000


@dataclass
class Built:
    idmap: IdentifierMap  # over the first n items
    model: RQVAE
    report: dict


def prefix_load(codes: np.ndarray, codebook_size: int) -> dict:
    """How full the last level is before resolution: items per (first L-1 codes) prefix.
    A prefix with more than K items cannot give each a distinct last code: a disambiguation
    level is needed."""
    _, load = np.unique(codes[:, :-1], axis=0, return_counts=True)
    over = load[load > codebook_size]
    return {"prefixes": int(len(load)), "max_items_per_prefix": int(load.max()),
            "mean_items_per_prefix": round(float(load.mean()), 2),
            "prefixes_over_capacity": int(len(over)), "items_over_capacity": int((over - codebook_size).sum())}


def assign_all(model: RQVAE, semantic: np.ndarray, collaborative: np.ndarray, chunk: int,
               seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Codes (n, L) and last-level distances (n, K) per id ("search", "rec") of every item,
    Sinkhorn-balanced over the whole set if n <= chunk, else over random chunks of <= chunk
    (a random chunk's balanced load is the whole set's, in expectation). -> (codes, distances, chunks)"""
    n = len(semantic)
    parts = np.array_split(np.random.default_rng(seed).permutation(n), -(-n // chunk)) if n > chunk else [slice(None)]
    codes: dict[str, np.ndarray] = {}
    distances: dict[str, np.ndarray] = {}
    for rows in parts:
        levels = model.assign(semantic[rows], collaborative[rows], balanced=True)
        for task in ("search", "rec"):
            c, d = levels.codes[task].cpu().numpy(), levels.last_distances[task].cpu().numpy()
            if len(parts) == 1:
                codes[task], distances[task] = c, d
                continue
            codes.setdefault(task, np.empty((n, c.shape[1]), np.int64))[rows] = c
            distances.setdefault(task, np.empty((n, d.shape[1]), np.float32))[rows] = d
        del levels
    return codes, distances, len(parts)


def build(cat: Catalogue, n: int, config: RQVAEConfig, train_sample: int, sinkhorn_chunk: int,
          seed: int = 0) -> Built:
    """Identifiers for the first n items of `cat` (the rest are the new items of `add`)."""
    semantic, collaborative = cat.semantic[:n], cat.collaborative[:n]
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, train_sample), replace=False))
    with PeakRSS() as train_mem:
        started = time.perf_counter()
        model, history = train_rqvae(config, semantic[rows], collaborative[rows], progress=False)
        train_s = time.perf_counter() - started
    steps = (config.warmup_epochs + config.epochs) * -(-len(rows) // config.batch_size)
    default = RQVAEConfig()
    default_steps = (default.warmup_epochs + default.epochs) * -(-n // default.batch_size)

    with PeakRSS() as assign_mem:
        started = time.perf_counter()
        all_codes, distances, chunks = assign_all(model, semantic, collaborative, sinkhorn_chunk, seed)
        encode_s = time.perf_counter() - started
        tasks = {}
        for task in ("search", "rec"):
            codes = all_codes[task]
            load = prefix_load(codes, config.codebook_size)
            t = time.perf_counter()
            r = resolve(codes, distances[task], config.codebook_size)
            tasks[task] = {"collision_rate_before": round(r.collision_rate, 4), "moved": r.moved,
                           "disambiguation_level": r.disambiguation, "id_levels": int(r.codes.shape[1]),
                           "items_with_disambiguation_value": int((r.codes[:, -1] > 0).sum()) if r.disambiguation else 0,
                           "resolve_s": round(time.perf_counter() - t, 2), **load, "codes": r.codes}
        del all_codes, distances
        assign_s = time.perf_counter() - started

    model_config, model_state = model.export()
    search, rec = tasks["search"].pop("codes"), tasks["rec"].pop("codes")
    idmap = IdentifierMap("v1", tuple(cat.item_ids[:n]), search, rec, n_shared=config.n_shared,
                          codebook_size=config.codebook_size, coded_collaborative=collaborative,
                          model_config=model_config, model_state=model_state)
    report = {
        "train": {"items": len(rows), "epochs": config.warmup_epochs + config.epochs, "steps": steps,
                  "seconds": round(train_s, 2), "step_ms": round(1000 * train_s / max(steps, 1), 2),
                  "peak_rss_mib": train_mem.mib, "final_loss": round(history[-1]["loss"], 4) if history else None,
                  "default_config_steps": default_steps,
                  "default_config_estimate_s": round(default_steps * train_s / max(steps, 1))},
        "assign": {"items": n, "seconds": round(assign_s, 2), "encode_and_sinkhorn_s": round(encode_s, 2),
                   "sinkhorn_chunks": chunks,
                   "peak_rss_mib": assign_mem.mib},
        "tasks": tasks,
    }
    return Built(idmap, model, report)


def add_new(built: Built, cat: Catalogue, n: int) -> dict:
    """Time add_items for the items after the first n (NEW_ITEMS of them)."""
    new = slice(n, n + NEW_ITEMS)
    with PeakRSS() as mem:
        started = time.perf_counter()
        try:
            derived = add_items(built.idmap, "v2", cat.item_ids[new], cat.semantic[new], cat.collaborative[new],
                                built.model)
            error = None
        except CapacityError as exc:  # a full prefix and no disambiguation level: the learner reports these unplaced
            derived, error = None, str(exc)
        seconds = time.perf_counter() - started
    out = {"items": NEW_ITEMS, "seconds": round(seconds, 3), "per_item_ms": round(1000 * seconds / NEW_ITEMS, 3),
           "peak_rss_mib": mem.mib, "capacity_error": error}
    if derived is not None:
        out["new_items_in_map"] = len(derived.diff.added)
    return out


def run(cat: Catalogue, n: int, config: RQVAEConfig, train_sample: int, sinkhorn_chunk: int,
        threads: int) -> tuple[Built, dict]:
    torch.set_num_threads(threads)
    built = build(cat, n, config, train_sample, sinkhorn_chunk)
    built.report["add_1000"] = add_new(built, cat, n)
    return built, built.report
