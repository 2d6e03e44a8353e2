"""Training throughput, in identifier (item) targets per second, of the two recipes on
the bundled data, side by side in one run: CPU with 1 and 2 torch threads, and a CUDA GPU
when present.

    per-target seq2seq (the old recipe, kept here only as the comparison point): one sample
        per target, a T5 encoder pass over the prompt and the last 10 events, the decoder
        generating that one identifier; batches of 64 samples
    whole-sequence decoder (model/, the recipe we ship): each user's events as one token
        sequence (windows of 256, overlap 32), a target at every event, token-packed
        batches of 8,192, plus the alignment sequences of the default mix

Both models have the same width and depth (ModelSettings(): 128d x 2 layers) and read the
same training split with the same identifiers.

    .venv/bin/python -m bench.quality_training_throughput [--idmap DIR] [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from bench.decoding_latency import random_map
from bench.output import write_results
from gensar.data import event_order, leave_one_out, load
from gensar.machine import machine
from gensar.settings import BUNDLED_DATA
from identifiers.idmap import IdentifierMap
from model.modeling import ModelSettings, build_model, parameter_count
from model.recipe import make_renderer
from model.tasks import TaskMix, build_pools, epoch_order
from model.train import TrainSettings, batches, collate, identifiers_in, learning_rate, make_optimizer, train_step

OLD_BATCH = 64
OLD_HISTORY = 10  # events the old recipe's source showed


def old_recipe(renderer, train_events, steps: int):
    """(model, batches) of the per-target seq2seq recipe: source = history prefix, labels = the id."""
    settings, vocab = ModelSettings(), renderer.vocab
    config = T5Config(vocab_size=vocab.size, d_model=settings.d_model, d_kv=settings.d_model // settings.heads,
                      d_ff=settings.d_ff, num_layers=settings.layers, num_decoder_layers=settings.layers,
                      num_heads=settings.heads, dropout_rate=0.1, feed_forward_proj="relu", pad_token_id=vocab.pad_id,
                      decoder_start_token_id=vocab.start_id, tie_word_embeddings=True)
    by_user = defaultdict(list)
    for e in sorted(train_events, key=event_order):
        by_user[e.user_id].append(e)
    samples = []
    for events in by_user.values():
        for i, e in enumerate(events[1:], start=1):
            task = "rec" if e.type == "interaction" else "search"
            target = renderer.target_id(task, e.item_id if task == "rec" else e.clicked_items[0])
            if target is not None:
                samples.append((renderer.source(task, events[max(0, i - OLD_HISTORY): i], getattr(e, "query", None)),
                                target + (vocab.eos_id,)))
            if len(samples) >= OLD_BATCH * steps:
                break
    out = []
    for start in range(0, len(samples), OLD_BATCH):
        chunk = samples[start: start + OLD_BATCH]
        s, t = max(len(x) for x, _ in chunk), max(len(y) for _, y in chunk)
        input_ids = torch.full((len(chunk), s), vocab.pad_id)
        labels = torch.full((len(chunk), t), -100)
        for i, (x, y) in enumerate(chunk):
            input_ids[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), torch.tensor(y)
        out.append({"input_ids": input_ids, "attention_mask": (input_ids != vocab.pad_id).long(), "labels": labels})
    return T5ForConditionalGeneration(config), out


def rate(step, model, batch_list, device, targets_of) -> float:
    """Identifier targets per second over `batch_list`."""
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for b in batch_list:
        step(model, {k: v.to(device) for k, v in b.items()})
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(map(targets_of, batch_list)) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idmap", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ds = load(BUNDLED_DATA)
    split = leave_one_out(ds)
    idmap = IdentifierMap.load(args.idmap) if args.idmap else random_map(tuple(ds.items))
    renderer = make_renderer(ds, split.train, idmap, ModelSettings())
    vocab, settings, mix = renderer.vocab, TrainSettings(), TaskMix()
    new_batches = [collate(b, vocab, mix) for b in batches(epoch_order(build_pools(renderer, split.train), mix, 0, 0),
                                                           settings.batch_tokens, 0, 0)]
    configs = [("cpu", 1), ("cpu", 2)] + ([("cuda", 0)] if torch.cuda.is_available() else [])
    rows: dict[str, dict | str] = {}
    for device, threads in configs:
        if threads:
            torch.set_num_threads(threads)
        for recipe in ("per-target seq2seq (old)", "whole-sequence decoder (new)"):
            if recipe.endswith("(old)"):
                model, batch_list = old_recipe(renderer, split.train, args.steps * (args.rounds + 1))
                targets_of = lambda b: int(b["input_ids"].shape[0])  # one identifier per sample
            else:
                model, batch_list = build_model(ModelSettings(), vocab), new_batches
                targets_of = lambda b: identifiers_in(b, vocab)
            model.to(device)
            optimizer = make_optimizer(model, settings)
            if recipe.endswith("(old)"):
                def step(m, b):
                    m.train()
                    loss = m(**b).loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            else:
                def step(m, b):
                    train_step(m, vocab, b, optimizer, learning_rate(settings, 1000, 0.0), settings.grad_clip)
            rates = [rate(step, model, batch_list[r * args.steps:(r + 1) * args.steps], device, targets_of)
                     for r in range(args.rounds + 1)][1:]  # round 0 warms up
            name = f"{device}" + (f"/{threads}-thread" if threads else "")
            rows[f"{name} | {recipe}"] = {"targets_per_s_median": round(statistics.median(rates), 1),
                                         "targets_per_s_rounds": [round(x, 1) for x in rates],
                                         "parameters": parameter_count(model)}
            print(name, recipe, rows[f"{name} | {recipe}"], flush=True)
        old, new = (rows[f"{name} | {r}"]["targets_per_s_median"] for r in ("per-target seq2seq (old)",
                                                                            "whole-sequence decoder (new)"))
        rows[f"{name} | ratio new / old"] = {"targets_per_s_median": round(new / old, 1)}
    if not torch.cuda.is_available():
        rows["cuda"] = "not measured: no GPU in this session"
    epoch_targets = sum(identifiers_in(b, vocab) for b in new_batches)
    result = {"machine": machine(), "model": ModelSettings().model_dump(mode="json"), "steps_per_round": args.steps,
              "rounds": args.rounds, "new_recipe_targets_per_epoch": epoch_targets,
              "new_recipe_batch_tokens": settings.batch_tokens, "old_recipe_batch": OLD_BATCH, "results": rows}
    m = result["machine"]
    lines = [f"# Training throughput ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores. Both models {ModelSettings().d_model}d x "
             f"{ModelSettings().layers} layers over the same vocabulary; the bundled data's leave-one-out training "
             f"split; {args.rounds} rounds of {args.steps} steps after a warm-up round. The new recipe trains "
             f"{epoch_targets:,} identifier targets per epoch.", "",
             "| device | recipe | identifier targets/s (median) | rounds |", "|---|---|---|---|"]
    for key, row in rows.items():
        device, _, recipe = key.partition(" | ")
        lines.append(f"| {device} | {recipe} | {row} | |" if isinstance(row, str) else
                     f"| {device} | {recipe} | {row['targets_per_s_median']} | {row.get('targets_per_s_rounds', '')} |")
    write_results("quality_training_throughput", result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
