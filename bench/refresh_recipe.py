"""Refresh recipe: how a LoRA refresh renders the stream samples it trains on.

    per-sample   each sample on its own: its history as context, the loss on its target
                 (the learner's recipe before Renderer.stream_windows)
    sequences    the base model's way (Renderer.stream_windows, what learner.refresh runs):
                 one sequence per user in event order, the samples' events the targets,
                 cut into the base model's overlapping windows

World: the demo's quick bootstrap (demo.bootstrap, profile QUICK: the 600 most active items
of the bundled data, an identifier map and a small base model from the first 70% of their
events by time; kept in `--state` and reused). Stream: the next `--events` events, turned
into training samples as the stream worker does (bench.adapter_layout.stream_samples:
streams.state over every earlier event, StreamSettings defaults).

Method. One `learner.refresh.Refresher.run` per run on the same window (learner defaults
but `epochs`; a fresh local registry each, so every run starts from the base model and
its gate compares the candidate with the base): the window's newest `holdout_fraction` is
held out, the rest trained on. Per run: refresh seconds (training and the gate's scoring
of both versions), the tokens and targets handed to training per epoch, the mean train
loss over the first and the last fifth of the steps (the loss of the run's own sequences:
next_query pieces weigh in the sequences recipe, so the two are not on one scale), the held-out identifier
loss (nats per code, the held-out samples rendered as serving renders a request) of the
base and the candidate, and the gate's candidate - serving HR@10 / NDCG@10 per task with
paired bootstrap 95% intervals (learner.refresh.gate, among 99 paper-protocol negatives).

    .venv/bin/python -m bench.refresh_recipe [--state DIR] [--events 3000] [--runs per-sample:1,sequences:3:512,...]

Results: bench/results/refresh_recipe.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.adapter_layout import stream_samples
from bench.output import write_results
from demo.bootstrap import BASE_NAME, ensure_base_model, ensure_identifiers, prepare_world
from demo.settings import QUICK
from gensar.layout import Layout
from gensar.machine import machine
from gensar.settings import Settings
from identifiers.semantic import item_texts
from learner.lora import merged
from learner.refresh import GATE_METRICS, Refresher
from learner.registry import LocalArtifactStore, Registry
from learner.settings import LearnerSettings
from model.artifact import GenSARModel
from model.tasks import KIND, Renderer, Sample, TaskMix
from model.train import mean_loss
from streams.settings import StreamSettings

IDENTIFIERS = TaskMix(rec=1.0, search=1.0, next_query=0.0)  # the loss on identifier codes only


def per_sample(renderer: Renderer, samples) -> list[Sample]:
    """The per-sample recipe: each sample's request prefix (Renderer.source: its history,
    then <rec> or <search> query [SEP]) and its target id, the loss on the target only."""
    out = []
    for s in samples:
        target = renderer.target_id(s.task, s.target_item)
        if target is not None:
            source = renderer.source(s.task, s.events, s.query)
            out.append(Sample(s.task, source + target, (0,) * len(source) + (KIND[s.task],) * len(target)))
    return out


class Recipe(Renderer):
    """The learner's renderer with the recipe under test; notes what it handed to training."""

    recipe = "sequences"
    trained: list[Sample] = []

    def stream_windows(self, samples):
        self.trained = super().stream_windows(samples) if self.recipe == "sequences" else per_sample(self, samples)
        return self.trained


def run_once(base: GenSARModel, renderer: Recipe, recent, recipe: str, epochs: float, batch_tokens: int,
             settings: LearnerSettings, held_out: list[Sample], root: Path) -> dict:
    renderer.recipe = recipe
    registry = Registry(LocalArtifactStore(root / f"{recipe}-{epochs}-{batch_tokens}"))
    training = settings.training.model_copy(update={"epochs": epochs, "batch_tokens": batch_tokens})
    learner = settings.model_copy(update={"training": training})
    decision = Refresher(base, BASE_NAME, renderer, registry, learner).run(recent, [], "v1")
    manifest = registry.manifest("v1")
    with tempfile.TemporaryDirectory() as tmp:
        candidate = merged(base.model, registry.fetch("v1", Path(tmp) / "v1")[1])
    trained = renderer.trained
    tokens = sum(len(s.tokens) for s in trained)
    losses, fifth = manifest.train_loss, max(1, len(manifest.train_loss) // 5)  # one loss per step
    gate = {task: {"n": c.n, "verdict": c.verdict,
                   **{m: {"candidate": manifest.metrics[f"candidate:{task}"][m],
                          "serving": manifest.metrics[f"serving:{task}"][m],
                          "difference": c.difference.get(m), "ci95": c.ci95.get(m)} for m in GATE_METRICS}}
            for task, c in manifest.gate.tasks.items()}
    return {"recipe": recipe, "epochs": epochs, "batch_tokens": batch_tokens, "status": decision.status,
            "reason": decision.reason,
            "refresh_seconds": round(manifest.refresh_seconds, 1), "samples": manifest.window.samples,
            "sequences": len(trained), "tokens_per_epoch": tokens, "targets_per_epoch": sum(s.targets for s in trained),
            "tokens_trained": round(tokens * epochs), "steps": len(manifest.train_loss),
            "train_loss_first": sum(losses[:fifth]) / fifth, "train_loss_last": sum(losses[-fifth:]) / fifth,
            "held_out_id_loss": mean_loss(candidate, base.vocab, held_out, IDENTIFIERS), "gate": gate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--state", type=Path, default=Path(tempfile.gettempdir()) / "gensar-refresh-recipe")
    parser.add_argument("--events", type=int, default=3000)  # stream events after the bootstrap: the window
    # recipe:epochs[:batch_tokens], ...; batch_tokens: the learner's by default
    parser.add_argument("--runs", default="per-sample:1,per-sample:2,per-sample:1:1024,sequences:1,sequences:3,"
                                          "sequences:1:512,sequences:3:512")
    parser.add_argument("--gate-min-cases", type=int, default=QUICK.gate_min_cases)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {message}", flush=True)

    root = args.state.resolve()
    (root / "demo").mkdir(parents=True, exist_ok=True)
    quick = QUICK.model_copy(update={"replay_events": args.events})
    world = prepare_world((args.data or Settings().data_dir).resolve(), root, quick)
    layout = Layout.under(root)
    idmap = ensure_identifiers(world, layout, quick, log)
    ensure_base_model(world, idmap, layout, quick, log)
    base = GenSARModel.load(layout.base_model(BASE_NAME))
    renderer = Recipe(base.vocab, idmap, world.ds, item_texts(world.ds, []), base.render)  # as learner.service
    recent = [s for samples in stream_samples(world.bootstrap, world.stream, StreamSettings()) for s in samples]
    settings = LearnerSettings(gate_min_cases=args.gate_min_cases, device="cpu")
    held_out = per_sample(renderer, recent[max(1, int(len(recent) * (1 - settings.holdout_fraction))):])  # as run() cuts
    log(f"window: {len(recent):,} samples from {len(world.stream):,} events "
        f"({sum(s.task == 'search' for s in recent)} search), {len(held_out)} held out")

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.runs.split(","):
            recipe, epochs, *batch = spec.split(":")
            batch_tokens = int(batch[0]) if batch else settings.training.batch_tokens
            runs.append(run_once(base, renderer, recent, recipe, float(epochs), batch_tokens, settings, held_out,
                                 Path(tmp)))
            r = runs[-1]
            log(f"{spec}: {r['status']} in {r['refresh_seconds']}s, {r['tokens_trained']:,} tokens, "
                f"loss {r['train_loss_first']:.3f} -> {r['train_loss_last']:.3f} - {r['reason']}")
    report = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
              "learner": settings.model_dump(include={"holdout_fraction", "gate_negatives", "gate_margin", "lora",
                                                      "training"}),
              "render": base.render.model_dump(), "window_samples": len(recent),
              "window_search_samples": sum(s.task == "search" for s in recent), "held_out": len(held_out),
              "base_held_out_id_loss": mean_loss(base.model, base.vocab, held_out, IDENTIFIERS), "runs": runs,
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    text = markdown(report)
    write_results("refresh_recipe", report, text)
    print(text)


def interval(g: dict) -> str:
    if g["difference"] is None:
        return "not decided"
    lo, hi = g["ci95"]
    return f"{g['candidate']:.3f} - {g['serving']:.3f} = {g['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def markdown(r: dict) -> str:
    m, lr = r["machine"], r["learner"]
    lines = [f"# Refresh recipe: per-sample vs whole user sequences ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {r['args']['threads']} torch thread(s). One refresh per run on "
             f"the same window: {r['window_samples']:,} samples from the {r['args']['events']} stream events after "
             f"the quick demo's bootstrap ({r['window_search_samples']} search), the newest {r['held_out']} held out "
             f"for the gate; LoRA r={lr['lora']['r']}, lr {lr['training']['learning_rate']}, batch "
             f"{lr['training']['batch_tokens']} tokens unless the table says; context "
             f"{r['render']['context_tokens']}, overlap "
             f"{r['render']['overlap_tokens']}. Held-out identifier loss of the base model: "
             f"{r['base_held_out_id_loss']:.4f} nats per code. Wall {r['wall_seconds'] / 60:.1f} min.", "",
             "| recipe | epochs | batch tokens | refresh s | sequences | tokens / epoch | tokens trained | steps "
             "| train loss first -> last fifth | held-out id loss | decision |", "|---" * 11 + "|"]
    for run in r["runs"]:
        lines.append(f"| {run['recipe']} | {run['epochs']:g} | {run['batch_tokens']} | {run['refresh_seconds']} | "
                     f"{run['sequences']:,} | {run['tokens_per_epoch']:,} | {run['tokens_trained']:,} | {run['steps']} | "
                     f"{run['train_loss_first']:.3f} -> {run['train_loss_last']:.3f} | {run['held_out_id_loss']:.4f} | "
                     f"{run['status']} |")
    lines += ["", "Gate, candidate - serving (the base model) on the held-out samples, paired bootstrap 95% interval:", "",
              "| recipe | epochs | batch tokens | task | n | HR@10 | NDCG@10 |", "|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        for task, g in run["gate"].items():
            lines.append(f"| {run['recipe']} | {run['epochs']:g} | {run['batch_tokens']} | {task} | {g['n']} | "
                         f"{interval(g['HR@10'])} | {interval(g['NDCG@10'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
