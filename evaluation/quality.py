"""The quality benchmark: identifiers, training, our model, baselines and ablations on one
dataset, within a time budget, scored on the same cases under both protocols.

Order of work (what matters most first, so a tight budget still yields the headline):
    1. leave-one-out: cases, candidates, baselines, identifiers; the joint model `gensar`
    2. the single-task models (the trade-off the paper is about)
    3. temporal split: real tag queries after the cut-off, baselines and a joint model
    4. identifier ablations: semantic-only, collaborative-only, no shared codebooks
Training time is shared out by weight among the models still to train, after reserving
what their evaluation is expected to take; whatever would overrun the budget is skipped
and listed as skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evaluation.baselines import BM25Search, DenseSearch, FusionSearch, ItemKNN, OwnTargetsSearch, Popularity
from evaluation.generative import GenerativeSystem
from evaluation.protocols import Case, cases, paper_candidates
from evaluation.report import markdown_table, result_rows
from evaluation.sasrec import SASRec
from gensar import data as datasets
from gensar.artifacts import write_file
from gensar.machine import machine
from identifiers.semantic import SemanticEncoder, item_texts
from model.modeling import ModelSettings
from model.recipe import train_gensar
from model.tasks import RenderSettings, TaskMix
from model.train import TrainSettings



class QualitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget_minutes: float = Field(25.0, gt=0)
    seed: int = 0
    beam_size: int = Field(30, ge=1)  # the paper's
    temporal: bool = True
    single_task: bool = True
    id_ablations: bool = True
    sasrec_seconds: float = Field(90.0, gt=0)
    # CPU threads for torch. On a 2-core machine shared with other jobs (load 5+), OpenMP
    # threads spin-wait for each other: 1 thread trained 3x faster than 2 and small index ops
    # ran 100x faster; on a quiet machine 2 threads are faster
    # (bench/results/quality_training_throughput.md). `--threads` chooses.
    torch_threads: int = Field(1, ge=1)
    min_train_seconds: float = Field(60.0, gt=0)  # a model that would get less is skipped
    # first guesses for budgeting, replaced by measurements as the run goes (bundled data)
    guess_build_seconds: float = Field(120.0, ge=0)  # one identifier map
    guess_temporal_prepare_seconds: float = Field(150.0, ge=0)  # temporal cases + search baselines
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings(epochs=50)  # the time budget decides
    mix: TaskMix = TaskMix()
    render: RenderSettings = RenderSettings()
    # RQ-VAE epochs of every map the benchmark builds (identifiers' default: 100, ~3 min per
    # map on 2 busy cores; the benchmark builds five maps, all with this same setting)
    rqvae_epochs: int = Field(40, ge=1)
    # relative training time of each model (the joint model learns two tasks and more)
    weight_joint: float = 4.0
    weight_temporal: float = 1.5
    weight_single: float = 2.0
    weight_ablation: float = 1.0


@dataclass
class SplitData:
    split: datasets.Split
    texts: list[str]  # item text by item row (training tags only)
    cases: list[Case]
    candidates: np.ndarray  # (N, 100) paper-protocol lists, column 0 the true item
    filled: np.ndarray  # (N,) random-filled negatives (search)
    bm25: BM25Search
    idmaps: dict[str, object] = field(default_factory=dict)


@dataclass
class Job:
    name: str  # system name in the results
    split: str  # "leave-one-out" | "temporal"
    variant: str  # identifier variant
    mix: TaskMix
    tasks: tuple[str, ...]  # tasks it is evaluated on
    weight: float
    protocols: tuple[str, ...] = ("paper", "full")


class Clock:
    def __init__(self, minutes: float):
        self.start = time.perf_counter()
        self.deadline = self.start + minutes * 60

    def left(self) -> float:
        return self.deadline - time.perf_counter()


ID_MODES = {"joint": "dual", "semantic-only": "semantic_only", "collaborative-only": "collaborative_only",
            "no-shared": "no_shared"}


def build_idmap(ds: datasets.Dataset, train_events, variant: str, state_dir: Path, seed: int,
                rqvae_epochs: int | None = None):
    """The identifier map of `variant` (the RQ-VAE mode), built from the training events only."""
    from identifiers.build import BuildConfig, build_identifiers
    from identifiers.rqvae import RQVAEConfig

    epochs = {"epochs": rqvae_epochs} if rqvae_epochs else {}
    config = BuildConfig(rqvae=RQVAEConfig(mode=ID_MODES[variant], seed=seed, **epochs))
    return build_identifiers(ds, train_events, config, state_dir, progress=False).idmap


def run_quality(data_dir: Path, settings: QualitySettings, state_dir: Path, cache_dir: Path,
                log: Callable[[str], None] = print, build_ids: Callable = None) -> dict:
    """Run everything within the budget and return the report. build_ids(ds, train_events,
    variant, directory, seed) -> IdentifierMap defaults to `build_idmap`."""
    import torch

    clock = Clock(settings.budget_minutes)
    torch.set_num_threads(settings.torch_threads)
    timings: dict[str, float] = {}

    def timed(key: str, fn, *args, **kwargs):
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[key] = round(time.perf_counter() - started, 2)
        log(f"{key}: {timings[key]:.1f}s ({clock.left() / 60:.1f} min left)")
        return value

    ds = timed("load", datasets.load, data_dir)
    index = {item: i for i, item in enumerate(ds.items)}
    encoder = SemanticEncoder(cache_dir / "embeddings", progress=False)
    run_dir = state_dir / "quality" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    results: list[dict] = []
    skipped: list[str] = []
    training: dict[str, dict] = {}

    def prepare(split: datasets.Split, keep: Callable[[Case], bool] = lambda c: True) -> SplitData:
        texts_by_id = item_texts(ds, split.train)
        texts = [texts_by_id[i] for i in ds.items]
        bm25 = BM25Search(texts)
        chosen = [c for c in cases(ds, split) if keep(c)]
        cands = paper_candidates(ds, index, chosen, bm25, seed=settings.seed)
        return SplitData(split, texts, chosen, cands.rows, cands.filled, bm25)

    def evaluate(system, sd: SplitData, task: str, protocols: tuple[str, ...] = ("paper", "full")) -> None:
        mask = np.array([c.task == task for c in sd.cases])
        chosen = [c for c, m in zip(sd.cases, mask) if m]
        if not chosen:
            return
        if "paper" in protocols:
            paper = system.score(chosen, sd.candidates[mask])
            results.extend(result_rows(system.name, task, chosen, sd.candidates[mask], paper, index, "paper",
                                       settings.seed, filled=sd.filled[mask]))
        if "full" in protocols:
            full = system.score(chosen)
            results.extend(result_rows(system.name, task, chosen, None, full, index, "full", settings.seed))

    def baselines(sd: SplitData, tag: str, rec: bool) -> None:
        dense = timed(f"{tag}/dense-index", DenseSearch, sd.texts, encoder)
        for system in (sd.bm25, dense, FusionSearch(sd.bm25, dense), OwnTargetsSearch(sd.bm25, index)):
            timed(f"{tag}/eval/{system.name}", evaluate, system, sd, "search")
        if rec:
            sasrec = timed(f"{tag}/train/sasrec", SASRec, sd.split.train, index, max_seconds=settings.sasrec_seconds,
                           seed=settings.seed)
            for system in (Popularity(sd.split.train, index), ItemKNN(sd.split.train, index), sasrec):
                timed(f"{tag}/eval/{system.name}", evaluate, system, sd, "rec")

    decode_seconds = [0.05]  # per case and protocol: a first guess, then measured

    def eval_estimate(job: Job) -> float:
        n = len(temporal.cases) if job.split == "temporal" and temporal else len(loo.cases)
        return decode_seconds[0] * n * len(job.protocols)

    build_seconds = [settings.guess_build_seconds]  # per identifier map, then measured
    built: set[tuple[str, str]] = set()

    def run_job(job: Job, sd: SplitData, remaining: list[Job]) -> None:
        unbuilt = {(j.split, j.variant) for j in remaining} - built - {(job.split, job.variant)}
        reserve = sum(eval_estimate(j) for j in remaining) + build_seconds[0] * len(unbuilt) + 10
        if temporal is None and any(j.split == "temporal" for j in remaining):
            reserve += settings.guess_temporal_prepare_seconds

        def training_seconds() -> float:
            return (clock.left() - reserve) * job.weight / sum(j.weight for j in remaining)

        if training_seconds() < settings.min_train_seconds:
            skipped.append(f"{job.name} ({job.split}): {clock.left() / 60:.1f} min left of the budget")
            log(f"skipping {job.name}: budget")
            return
        if job.variant not in sd.idmaps:
            build = build_ids or (lambda *a: build_idmap(*a, rqvae_epochs=settings.rqvae_epochs))
            started = time.perf_counter()
            sd.idmaps[job.variant] = timed(f"{job.split}/ids/{job.variant}", build, ds, sd.split.train, job.variant,
                                           run_dir / job.split / job.variant, settings.seed)
            build_seconds[0] = time.perf_counter() - started
            built.add((job.split, job.variant))
        idmap = sd.idmaps[job.variant]
        train_seconds = max(training_seconds(), settings.min_train_seconds)
        train_settings = settings.train.model_copy(update={"max_minutes": train_seconds / 60, "seed": settings.seed})
        gm, renderer, report = timed(f"{job.split}/train/{job.name}", train_gensar, ds, sd.split.train, idmap,
                                     settings.model, job.mix, train_settings, settings.render, progress=False,
                                     seed=settings.seed)
        gm.save(run_dir / job.split / f"model-{job.name}")
        training[f"{job.split}/{job.name}"] = {**gm.info, "train_seconds_allotted": round(train_seconds, 1)}
        started = time.perf_counter()
        for task in job.tasks:
            system = GenerativeSystem(job.name, task, gm, renderer, index, beam_size=settings.beam_size)
            timed(f"{job.split}/eval/{job.name}/{task}", evaluate, system, sd, task, job.protocols)
        scored = sum(c.task in job.tasks for c in sd.cases) * len(job.protocols)
        decode_seconds[0] = (time.perf_counter() - started) / max(scored, 1)

    loo = timed("leave-one-out/prepare", prepare, datasets.leave_one_out(ds))
    temporal: SplitData | None = None
    baselines(loo, "leave-one-out", rec=True)
    jobs = [Job("gensar", "leave-one-out", "joint", settings.mix, ("search", "rec"), settings.weight_joint)]
    if settings.single_task:
        jobs += [Job("gensar-rec-only", "leave-one-out", "joint", TaskMix.single("rec"), ("rec",), settings.weight_single),
                 Job("gensar-search-only", "leave-one-out", "joint", TaskMix.single("search"), ("search",),
                     settings.weight_single)]
    if settings.temporal:
        jobs.append(Job("gensar", "temporal", "joint", settings.mix, ("search",), settings.weight_temporal))
    if settings.id_ablations:
        # the identifier ablations are compared under the paper protocol only (half the decoding time)
        jobs += [Job(f"gensar-ids-{v}", "leave-one-out", v, settings.mix, ("search", "rec"), settings.weight_ablation,
                     ("paper",)) for v in list(ID_MODES)[1:]]
    for i, job in enumerate(jobs):
        if job.split == "temporal" and temporal is None:
            temporal = timed("temporal/prepare", prepare, datasets.temporal_split(ds), lambda c: c.task == "search")
            baselines(temporal, "temporal", rec=False)
        run_job(job, loo if job.split == "leave-one-out" else temporal, jobs[i:])

    timings["total"] = round(time.perf_counter() - clock.start, 1)
    return {
        "dataset": {**ds.stats(), "splits": {"leave-one-out": loo.split.sizes(),
                                             **({"temporal": temporal.split.sizes()} if temporal else {})},
                    "cases": {s: sum(c.split == s for c in (loo.cases + (temporal.cases if temporal else [])))
                              for s in sorted({c.split for c in loo.cases + (temporal.cases if temporal else [])})}},
        "timings": timings,
        "training": training,
        "results": results,
        "skipped": skipped,
        "settings": settings.model_dump(mode="json"),
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts": str(run_dir),
    }


def write_report(report: dict, out: Path) -> Path:
    """The JSON and a markdown table beside it (same name, .md), each written whole."""
    out = write_file(Path(out), json.dumps(report, indent=1))
    m = report["machine"]
    lines = [f"# Quality benchmark ({report['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; budget "
             f"{report['settings']['budget_minutes']} min, total {report['timings']['total']} s.",
             f"Dataset: {report['dataset']['root']} ({report['dataset']['items']} items, "
             f"{report['dataset']['users']} users); cases per split: {report['dataset']['cases']}.", "",
             "Metrics are expectations under random tie-breaking; 95% bootstrap intervals in brackets.", "",
             markdown_table(report["results"]), ""]
    if report["skipped"]:
        lines += ["Skipped for the budget: " + "; ".join(report["skipped"]), ""]
    write_file(out.with_suffix(".md"), "\n".join(lines))
    return out
