"""Training throughput of the GenSAR model (samples/s and the implied time per epoch of the
default task mixture on the bundled data): CPU with 1 and 2 torch threads, and a CUDA GPU
when present, same samples, same model, in one run.

    .venv/bin/python -m bench.quality_training_throughput [--idmap DIR] [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.decoding_latency import random_map
from bench.output import write_results
from gensar.data import leave_one_out, load
from gensar.machine import machine
from gensar.settings import BUNDLED_DATA
from identifiers.idmap import IdentifierMap
from identifiers.semantic import item_texts
from model.modeling import ModelSettings, build_model, parameter_count
from model.tasks import RenderSettings, Renderer, TaskMix, build_pools, epoch_order
from model.train import TrainSettings, collate, learning_rate, make_optimizer, train_step
from model.vocab import IdLayout, Vocabulary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idmap", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ds = load(BUNDLED_DATA)
    split = leave_one_out(ds)
    idmap = IdentifierMap.load(args.idmap) if args.idmap else random_map(tuple(ds.items))
    texts = item_texts(ds, split.train)
    vocab = Vocabulary.for_corpus(IdLayout.of(idmap), [*texts.values(), *(e.query for e in split.train if e.type == "search")])
    pools = build_pools(Renderer(vocab, idmap, ds, texts, RenderSettings()), split.train)
    settings = TrainSettings()
    order = epoch_order(pools, TaskMix(), seed=0, epoch=0)
    per_epoch = len(order)
    configs = [("cpu", 1), ("cpu", 2)] + ([("cuda", 0)] if torch.cuda.is_available() else [])
    rows = {}
    for device, threads in configs:
        if threads:
            torch.set_num_threads(threads)
        model = build_model(ModelSettings(), vocab).to(device)
        optimizer = make_optimizer(model, settings)
        rates = []
        for r in range(args.rounds + 1):  # round 0 warms up
            batches = [collate(order[i * settings.batch_size:(i + 1) * settings.batch_size], vocab.pad_id, device)
                       for i in range(r * args.steps, (r + 1) * args.steps)]
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for step, batch in enumerate(batches):
                train_step(model, batch, optimizer, learning_rate(settings, 1000 + step, 0.0), settings.grad_clip)
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                rates.append(sum(b["input_ids"].shape[0] for b in batches) / (time.perf_counter() - started))
        name = f"{device}" + (f"/{threads}-thread" if threads else "")
        rows[name] = {"samples_per_s_median": round(statistics.median(rates), 1),
                      "samples_per_s_rounds": [round(x, 1) for x in rates],
                      "minutes_per_epoch": round(per_epoch / statistics.median(rates) / 60, 1)}
        print(name, rows[name], flush=True)
    if "cuda" not in rows:
        rows["cuda"] = "not measured: no GPU in this session"
    result = {"machine": machine(), "model": ModelSettings().model_dump(mode="json"), "parameters": parameter_count(model),
              "batch_size": settings.batch_size, "samples_per_epoch": per_epoch, "steps_per_round": args.steps,
              "rounds": args.rounds, "results": rows}
    m = result["machine"]
    lines = [f"# Training throughput ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs while measured). Model "
             f"{ModelSettings().d_model}d x {ModelSettings().layers} layers, {result['parameters']:,} parameters, batch "
             f"{settings.batch_size}; default task mixture, {per_epoch:,} samples per epoch; {args.rounds} rounds of "
             f"{args.steps} steps.", "", "| device | samples/s (median) | rounds | minutes per epoch |", "|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row} | | |" if isinstance(row, str) else
                     f"| {name} | {row['samples_per_s_median']} | {row['samples_per_s_rounds']} | {row['minutes_per_epoch']} |")
    write_results("quality_training_throughput", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
