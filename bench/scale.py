"""How it scales (issue 18, parts 1-2): identifiers, the prefix constraint and constrained
decoding at 10k, 100k and 1M synthetic items, beside a dense ANN peer (faiss HNSW, exact
faiss, Qdrant embedded), measured in one run on this machine.

    .venv/bin/python -m bench.scale [--sizes 10000 100000 1000000] [--threads 1]

Catalogues: bench.scale_catalogue (clustered synthetic vectors standing in for the MiniLM
and item2vec embeddings). Part 1: bench.scale_identifiers. Part 2: bench.scale_decoding.
Report and charts: bench.scale_report. Writes bench/results/scale.{json,md} and
bench/results/scale_*.png. Each size runs after the previous one is freed.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from bench import scale_decoding, scale_faiss, scale_identifiers
from bench.output import RESULTS, write_results
from bench.scale_catalogue import PeakRSS, rss_bytes, synthetic_catalogue
from bench.scale_report import charts, markdown, verdicts
from gensar.machine import machine
from identifiers.rqvae import RQVAEConfig

SIZES = (10_000, 100_000, 1_000_000)


def measure_size(n: int, config: RQVAEConfig, args: argparse.Namespace, log=print):
    """-> (the size's results, our decoders at that size, kept for the interleaved timing)."""
    started = time.perf_counter()
    with PeakRSS() as mem:
        cat = synthetic_catalogue(n + scale_identifiers.NEW_ITEMS, seed=args.seed)
    row: dict = {"items": n, "catalogue": {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mib": mem.mib,
                                           "example_titles": cat.titles[:3],
                                           "example_genres": [list(g) for g in cat.genres[:3]]}}
    log(f"[{n:,}] catalogue in {row['catalogue']['seconds']}s")
    built, row["identifiers"] = scale_identifiers.run(cat, n, config, args.train_sample, args.sinkhorn_chunk,
                                                       args.threads)
    log(f"[{n:,}] identifiers: {row['identifiers']}")
    decoders, row["decoding"] = scale_decoding.run(built.idmap, cat, args.queries, args.batches, args.threads,
                                                   qdrant=n <= args.qdrant_max, control=n == min(args.sizes))
    log(f"[{n:,}] decoding: {row['decoding']}")
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["rss_after_gib"] = round(rss_bytes() / 2**30, 2)
    return row, decoders


def run(args: argparse.Namespace, out_dir: Path = RESULTS, log=print) -> dict:
    """Every size in args.sizes, then the verdicts and the charts (PNGs into out_dir)."""
    config = RQVAEConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs, seed=args.seed)
    results: dict = {"machine": machine(), "settings": {
        **{k: v for k, v in vars(args).items()}, "rqvae": config.model_dump(mode="json"),
        "torch_threads": args.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "beam": scale_decoding.BEAM, "dense_k": scale_decoding.K, "history_events": scale_decoding.HISTORY,
        "hnsw": {"M": scale_faiss.HNSW_M, "efConstruction": scale_faiss.HNSW_EF_CONSTRUCTION,
                 "efSearch": scale_faiss.HNSW_EF_SEARCH}}, "sizes": []}
    with threadpool_limits(limits=args.threads):  # numpy's BLAS (Qdrant's local scan) and OpenMP (faiss)
        decoders, slots = [], []  # slots: (size's results, key) each decoder's latency goes to
        for n in args.sizes:
            row, size_decoders = measure_size(n, config, args, log)
            results["sizes"].append(row)
            decoders += size_decoders  # small: models, constraints, requests; the catalogue is freed
            slots += [(row, key) for key in ("generative", "generative_plus_level")[:len(size_decoders)]]
            gc.collect()
        log("timing our decoding, all sizes interleaved")
        for (row, key), latency in zip(slots, scale_decoding.time_generative(decoders, args.queries, args.batches)):
            row["decoding"][key].update(latency)
    results["verdicts"] = verdicts(results["sizes"])
    results["charts"] = charts(results["sizes"], out_dir, args.name)
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS / faiss threads (1: fastest on a shared 2-core machine)")
    p.add_argument("--train-sample", type=int, default=50_000, help="items the RQ-VAE trains on (all items are assigned)")
    p.add_argument("--sinkhorn-chunk", type=int, default=100_000,
                   help="largest set balanced by one Sinkhorn pass (the build does the whole catalogue in one)")
    p.add_argument("--epochs", type=int, default=30, help="RQ-VAE epochs over the sample (default config: 100)")
    p.add_argument("--warmup-epochs", type=int, default=5, help="RQ-VAE autoencoder warm-up epochs (default config: 10)")
    p.add_argument("--queries", type=int, default=100, help="timed requests at batch 1")
    p.add_argument("--batches", type=int, default=20, help="timed batches of 16")
    p.add_argument("--qdrant-max", type=int, default=100_000,
                   help="largest size Qdrant embedded runs at (its local mode is a linear scan in Python/numpy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="scale", help="results name: bench/results/<name>.json, .md, <name>_*.png")
    return p


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    results = run(args)
    lines = markdown(results)
    write_results(args.name, results, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
