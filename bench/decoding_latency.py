"""Decoding latency per query: constrained beam search with the vectorised prefix
constraint, against unconstrained beam search and against a per-step Python trie
callback (what `prefix_allowed_tokens_fn` does: one Python call per beam per step), and
exact scoring of 100 candidate identifiers (the paper protocol's, model.generate.score_ids),
in the same run, at batch 1 and batched, on CPU and (when present) on a CUDA GPU. The
model is the decoder-only causal LM: a query's history is prefilled once, then each
identifier level is one cached step.

The model is the default architecture (ModelSettings()) with random weights: decoding
cost does not depend on the weights. The identifiers have the paper's layout over the
bundled catalogue (2 shared + 2 specific levels, 256 codes, 9,742 items), drawn at random
unless --idmap names a built map; sources are the bundled leave-one-out rec test cases.

    .venv/bin/python -m bench.decoding_latency [--idmap DIR] [--queries 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.output import write_results
from evaluation.protocols import cases
from gensar.data import leave_one_out, load
from gensar.machine import machine
from gensar.settings import BUNDLED_DATA
from identifiers.constraints import PrefixConstraint
from identifiers.idmap import IdentifierMap
from identifiers.semantic import item_texts
from model.generate import beam_search, score_ids
from model.modeling import ModelSettings, build_model
from model.tasks import RenderSettings, Renderer
from model.vocab import IdLayout, Vocabulary


class PythonTrie:
    """The baseline: a dict trie walked per beam per step in Python (same interface as
    PrefixConstraint, so the same beam loop runs it)."""

    def __init__(self, codes: np.ndarray, codebook_size: int):
        self.codebook_size = codebook_size
        self.prefixes: list[tuple[int, ...]] = [()]
        self.children: dict[tuple[int, ...], dict[int, int]] = {(): {}}
        self.leaf_row: dict[int, int] = {}
        for row, code in enumerate(codes.tolist()):
            for l in range(len(code)):
                parent, child = tuple(code[:l]), tuple(code[: l + 1])
                if child not in self.children:
                    self.children[child] = {}
                    self.prefixes.append(child)
                    self.children[parent][code[l]] = len(self.prefixes) - 1
            self.leaf_row[self.children[tuple(code[:-1])][code[-1]]] = row

    def to(self, device):
        return self

    def roots(self, groups):
        return torch.zeros_like(groups)

    def allowed(self, level, nodes):
        mask = torch.zeros(len(nodes), self.codebook_size, dtype=torch.bool)
        for b, node in enumerate(nodes.tolist()):  # the per-beam Python callback
            if node >= 0:
                mask[b, list(self.children[self.prefixes[node]].keys())] = True
        return mask.to(nodes.device)

    def advance(self, level, nodes, codes):
        out = [self.children[self.prefixes[n]].get(c, -1) if n >= 0 else -1 for n, c in zip(nodes.tolist(), codes.tolist())]
        return torch.tensor(out, device=nodes.device)

    def items(self, leaves):
        return torch.tensor([self.leaf_row.get(n, -1) for n in leaves.tolist()], device=leaves.device)


def random_map(item_ids: tuple[str, ...], seed: int = 0) -> IdentifierMap:
    """Paper-layout ids drawn at random. Ids that collide (about one pair per task at 100k items:
    n^2 / 2 over 256^4) get their specific levels drawn again from a second stream, so a draw
    without collisions (the bundled 9,742 items') is what it always was."""
    rng, redraw = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    n = len(item_ids)
    shared = rng.integers(0, 256, (n, 2))
    codes = [np.concatenate([shared, rng.integers(0, 256, (n, 2))], 1) for _ in ("search", "rec")]
    for c in codes:
        while len(repeated := np.setdiff1d(np.arange(n), np.unique(c, axis=0, return_index=True)[1])):
            c[repeated, 2:] = redraw.integers(0, 256, (len(repeated), 2))
    return IdentifierMap(version="bench-random", item_ids=item_ids, n_shared=2, codebook_size=256,
                         search_codes=codes[0], rec_codes=codes[1])


def percentiles(values: list[float]) -> dict:
    ms = np.array(values) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def timed_batches(model, sources, batch, rounds, decode) -> dict:
    """Per-query latency of decode(chunk): at batch 1 each query is timed alone; batched, a
    batch's time is divided by its size (and the batch times themselves are reported too)."""
    per_query, per_batch = [], []
    for _ in range(rounds):
        for start in range(0, len(sources), batch):
            chunk = sources[start: start + batch]
            if next(model.parameters()).is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            decode(chunk)
            if next(model.parameters()).is_cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t
            per_batch.append(elapsed)
            per_query.extend([elapsed / len(chunk)] * len(chunk))
    return {"per_query": percentiles(per_query), "per_batch": percentiles(per_batch)}


def measure(model, vocab, sources, constraint, beam, batch, rounds) -> dict:
    """Beam search over the catalogue (constraint None: unconstrained)."""
    return timed_batches(model, sources, batch, rounds, lambda chunk: beam_search(
        model, vocab, "rec", chunk, constraint, beam_size=beam, batch_size=batch))


def measure_exact(model, vocab, sources, codes, batch, rounds) -> dict:
    """Scoring 100 given identifiers exactly (codes: (100, L))."""
    return timed_batches(model, sources, batch, rounds, lambda chunk: score_ids(
        model, vocab, "rec", chunk, np.stack([codes] * len(chunk)), batch_size=batch))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idmap", type=Path)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--beam", type=int, default=30)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = load(BUNDLED_DATA)
    split = leave_one_out(ds)
    idmap = IdentifierMap.load(args.idmap) if args.idmap else random_map(tuple(ds.items))
    texts = item_texts(ds, split.train)
    vocab = Vocabulary.for_corpus(IdLayout.of(idmap), [*texts.values(), *(e.query for e in ds.searches)])
    renderer = Renderer(vocab, idmap, ds, texts, RenderSettings())
    rec_cases = [c for c in cases(ds, split) if c.task == "rec"][: args.queries]
    sources = [renderer.source("rec", c.history) for c in rec_cases]
    built = time.perf_counter()
    vectorised = PrefixConstraint(idmap.rec_codes, idmap.codebook_size)
    build_vectorised = time.perf_counter() - built
    built = time.perf_counter()
    python_trie = PythonTrie(idmap.rec_codes, idmap.codebook_size)
    build_python = time.perf_counter() - built
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict = {"machine": machine(), "settings": {**vars(args), "idmap": str(args.idmap or "random, paper layout"),
                                                       "model": ModelSettings().model_dump(mode="json"),
                                                       "items": len(idmap)},
                     "constraint_build_s": {"vectorised": round(build_vectorised, 3), "python_trie": round(build_python, 3)},
                     "devices": {}}
    for device in devices:
        model = build_model(ModelSettings(), vocab).to(device).eval()
        beam_search(model, vocab, "rec", sources[:2], vectorised, beam_size=args.beam)  # warm-up
        rows = {}
        for batch in (1, args.batch):
            for name, constraint in (("unconstrained", None), ("vectorised", vectorised), ("python_trie", python_trie)):
                rows[f"batch{batch}/{name}"] = measure(model, vocab, sources, constraint, args.beam, batch, args.rounds)
                print(device, batch, name, rows[f"batch{batch}/{name}"]["per_query"], flush=True)
            rows[f"batch{batch}/exact-100"] = measure_exact(model, vocab, sources, idmap.rec_codes[:100], batch,
                                                            args.rounds)
            print(device, batch, "exact-100", rows[f"batch{batch}/exact-100"]["per_query"], flush=True)
            base = rows[f"batch{batch}/unconstrained"]["per_query"]["p50_ms"]
            for name in ("vectorised", "python_trie"):
                rows[f"batch{batch}/{name}"]["p50_vs_unconstrained"] = round(
                    rows[f"batch{batch}/{name}"]["per_query"]["p50_ms"] / base, 2)
            rows[f"batch{batch}/python_trie"]["p50_vs_vectorised"] = round(
                rows[f"batch{batch}/python_trie"]["per_query"]["p50_ms"] / rows[f"batch{batch}/vectorised"]["per_query"]["p50_ms"], 2)
        results["devices"][device] = rows
    if "cuda" not in results["devices"]:
        results["devices"]["cuda"] = "not measured: no GPU in this session"
    m = results["machine"]
    lines = [f"# Decoding latency ({m['date']})", "", f"Machine: {m['cpu']}, {m['cores']} cores. "
             f"Beam {args.beam}, {args.queries} bundled rec queries x {args.rounds} rounds, "
             f"{len(idmap)} items, ids {idmap.rec_codes.shape[1]} levels x {idmap.codebook_size} codes "
             f"({results['settings']['idmap']}), model {ModelSettings().d_model}d x {ModelSettings().layers} layers.", "",
             "Rows: beam search (unconstrained, vectorised constraint, Python trie) over the catalogue, "
             "and exact-100: the log-likelihood of 100 given identifiers (the paper protocol).", "",
             "| device | batch | decoding | p50 ms/query | p99 ms/query | p50 ms/batch | x unconstrained (p50) |",
             "|---|---|---|---|---|---|---|"]
    for device, rows in results["devices"].items():
        if isinstance(rows, str):
            lines.append(f"| {device} | - | - | {rows} | | | |")
            continue
        for key, row in rows.items():
            batch, name = key.split("/")
            lines.append(f"| {device} | {batch[5:]} | {name} | {row['per_query']['p50_ms']} | {row['per_query']['p99_ms']} | "
                         f"{row['per_batch']['p50_ms']} | {row.get('p50_vs_unconstrained', 1.0 if name == 'unconstrained' else '-')} |")
    lines += ["", f"Constraint build: vectorised {build_vectorised:.2f}s, Python trie {build_python:.2f}s. "
              "Python trie / vectorised at p50: " + ", ".join(
                  f"batch {k.split('/')[0][5:]}: {v['p50_vs_vectorised']}x" for k, v in results["devices"]["cpu"].items()
                  if "p50_vs_vectorised" in v), ""]
    write_results("decoding_latency", results, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
