"""The quality benchmark: identifiers, training, our model, baselines and ablations on one
dataset, within a time budget, scored on the same cases under both protocols.

Order of work (what matters most first, so a tight budget still yields the headline):
    1. leave-one-out: cases, candidates, search baselines, popularity, item-kNN, the joint
       identifier map; SASRec, tuned on validation for as long as the joint model trains;
       the joint model `gensar`
    2. the single-task models (the trade-off the paper is about)
    3. temporal split: real tag queries after the cut-off, baselines and a joint model
    4. identifier ablations: semantic-only, collaborative-only, no shared codebooks
Training time is shared out by weight among the models still to train, after reserving
what their evaluation will take (timed on a small batch before the first model, then
measured on each evaluated model); a later job that would leave the current one less than
its minimum is left out of that share, and is itself skipped, and listed, only when its
own turn comes and it does not fit. A budget that cannot fit the joint model's minimum
training is refused up front (BudgetError): no report without the system it measures.
Case groups larger than `max_cases` are sampled (seeded) to that cap, the same sample for
every system; the report states the cap and the sizes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evaluation.baselines import BM25Search, DenseSearch, FusionSearch, ItemKNN, OwnTargetsSearch, Popularity
from evaluation.generative import GenerativeSystem, fit_prior
from evaluation.protocols import Case, cases, paper_candidates
from evaluation.report import markdown_table, result_rows
from evaluation.sasrec import tune_sasrec
from gensar import data as datasets
from gensar.artifacts import write_file
from gensar.machine import machine
from gensar.layout import Layout
from identifiers.build import build_variant
from identifiers.semantic import SemanticEncoder, item_texts
from model.modeling import ModelSettings, build_model
from model.recipe import make_renderer, train_gensar
from model.artifact import GenSARModel
from model.history import HistoryPrior
from model.tasks import RenderSettings, TaskMix
from model.train import TrainSettings


class BudgetError(RuntimeError):
    """The budget cannot fit the joint model's minimum training."""


class QualitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget_minutes: float = Field(25.0, gt=0)
    seed: int = 0
    beam_size: int = Field(30, ge=1)  # the paper's
    temporal: bool = True
    single_task: bool = True
    id_ablations: bool = True
    # Case groups above this are sampled to it (seeded, one sample for every system): a
    # tags-only dataset can have 20k temporal search cases, and full-catalogue beam search
    # costs ~0.05 s a case here.
    max_cases: int = Field(2000, ge=10)
    max_valid_cases: int = Field(200, ge=10)  # per case group, to fit the history prior and tune SASRec
    # CPU threads for torch. On a 2-core machine shared with other jobs (load 5+), OpenMP
    # threads spin-wait for each other: 1 thread trained 3x faster than 2 and small index ops
    # ran 100x faster; on a quiet machine 2 threads are faster
    # (bench/results/quality_training_throughput.md). `--threads` chooses.
    torch_threads: int = Field(1, ge=1)
    min_train_seconds: float = Field(60.0, gt=0)  # a model that would get less is skipped
    # first guesses for budgeting, replaced by measurements as the run goes (bundled data)
    guess_build_seconds: float = Field(90.0, ge=0)  # one identifier map
    guess_prepare_seconds: float = Field(120.0, ge=0)  # a split's cases, candidates and baselines
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings(epochs=200)  # the time budget decides
    mix: TaskMix = TaskMix()
    render: RenderSettings = RenderSettings()
    # RQ-VAE epochs of every map the benchmark builds (identifiers' default: 100, ~3 min per
    # map on 2 busy cores; the benchmark builds five maps, all with this same setting)
    rqvae_epochs: int = Field(40, ge=1)
    # relative training time of each model; SASRec trains (and tunes) as long as the joint model
    weight_joint: float = 4.0
    weight_temporal: float = 2.0
    weight_single: float = 1.5
    weight_ablation: float = 0.75


@dataclass
class SplitData:
    split: datasets.Split
    texts: list[str]  # item text by item row (training tags only)
    cases: list[Case]
    candidates: np.ndarray  # (N, 100) paper-protocol lists, column 0 the true item
    filled: np.ndarray  # (N,) random-filled negatives (search)
    bm25: BM25Search
    sizes: dict[str, int]  # case group -> cases before the cap
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
    fit_prior: bool = True  # False: the joint model's prior (the identifier ablations)


class Clock:
    def __init__(self, minutes: float):
        self.start = time.perf_counter()
        self.deadline = self.start + minutes * 60

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def cap_cases(found: list[Case], cap: int, seed: int) -> tuple[list[Case], dict[str, int]]:
    """Each case group sampled to `cap` (seeded, event order kept) -> (cases, sizes before)."""
    rng = np.random.default_rng(seed)
    sizes = {g: sum(c.split == g for c in found) for g in sorted({c.split for c in found})}
    keep = set()
    for g, n in sizes.items():
        members = [i for i, c in enumerate(found) if c.split == g]
        keep |= set(members if n <= cap else rng.choice(members, cap, replace=False).tolist())
    return [c for i, c in enumerate(found) if i in keep], sizes


def run_quality(data_dir: Path, settings: QualitySettings, layout: Layout,
                log: Callable[[str], None] = print, build_ids: Callable = None) -> dict:
    """Run everything within the budget and return the report; its scratch (models, maps) goes
    below the layout's state. build_ids(ds, train_events, variant, layout, seed) -> IdentifierMap
    defaults to `identifiers.build.build_variant`. Raises
    BudgetError, before any training, when the joint model cannot get its minimum."""
    import torch

    clock = Clock(settings.budget_minutes)
    fixed = settings.guess_prepare_seconds + settings.guess_build_seconds
    if clock.left() < fixed + 2 * settings.min_train_seconds:
        raise BudgetError(f"a budget of {settings.budget_minutes} min cannot fit the joint model: preparing the "
                          f"split and its identifiers takes about {fixed:.0f} s, then the joint model and SASRec "
                          f"get at least {settings.min_train_seconds:.0f} s each")
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
    encoder = SemanticEncoder(layout.embeddings, progress=False)
    run_dir = layout.state / "quality" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    results: list[dict] = []
    skipped: list[str] = []
    training: dict[str, dict] = {}
    tuning: dict[str, dict] = {}
    priors: dict[str, dict] = {}  # split/job/task -> fit_prior's report
    fitted: dict[str, HistoryPrior] = {}  # split -> the joint model's prior (the ablations reuse it)

    def prepare(split: datasets.Split, keep: Callable[[Case], bool] = lambda c: True, part: str = "test") -> SplitData:
        texts_by_id = item_texts(ds, split.train)
        texts = [texts_by_id[i] for i in ds.items]
        bm25 = BM25Search(texts)
        cap = settings.max_cases if part == "test" else settings.max_valid_cases
        chosen, sizes = cap_cases([c for c in cases(ds, split, part) if keep(c)], cap, settings.seed)
        cands = paper_candidates(ds, index, chosen, bm25, seed=settings.seed)
        return SplitData(split, texts, chosen, cands.rows, cands.filled, bm25, sizes)

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

    def search_baselines(sd: SplitData, tag: str) -> None:
        dense = timed(f"{tag}/dense-index", DenseSearch, sd.texts, encoder)
        for system in (sd.bm25, dense, FusionSearch(sd.bm25, dense), OwnTargetsSearch(sd.bm25, index)):
            timed(f"{tag}/eval/{system.name}", evaluate, system, sd, "search")

    # seconds per case of each protocol for our model: timed on a small batch, then measured
    decode_seconds = {"paper": 0.05, "full": 0.05}
    build_seconds = [settings.guess_build_seconds]  # per identifier map, then measured
    built: set[tuple[str, str]] = set()

    def case_count(job: Job) -> int:
        sd = temporal if job.split == "temporal" else loo
        if sd is None:  # not prepared yet: the leave-one-out count stands in
            sd = loo
        return sum(c.task in job.tasks for c in sd.cases)

    def valid_count(job: Job) -> int:
        return min(settings.max_valid_cases * 3, case_count(job))

    def reserve(jobs: list[Job]) -> float:
        """Seconds the jobs need besides training: their evaluation, unbuilt maps, an unprepared split."""
        unbuilt = {(j.split, j.variant) for j in jobs} - built
        seconds = sum(case_count(j) * sum(decode_seconds[p] for p in j.protocols) for j in jobs)
        seconds += sum(valid_count(j) * (decode_seconds["paper"] + decode_seconds["full"]) for j in jobs if j.fit_prior)
        seconds += build_seconds[0] * len(unbuilt) + 10
        if temporal is None and any(j.split == "temporal" for j in jobs):
            seconds += timings.get("leave-one-out/prepare-all", settings.guess_prepare_seconds)
        return seconds

    def share(job: Job, remaining: list[Job], extra_weight: float = 0.0) -> float:
        """Training seconds of `job`: its weight's share of what the remaining jobs leave,
        dropping jobs from the end of the order while they would leave it under the minimum."""
        planned = list(remaining)
        while True:
            seconds = (clock.left() - reserve(planned)) * job.weight / (sum(j.weight for j in planned) + extra_weight)
            if seconds >= settings.min_train_seconds or len(planned) == 1:
                return seconds
            planned.pop()

    def ensure_map(job: Job, sd: SplitData):
        if job.variant not in sd.idmaps:
            build = build_ids or (lambda *a: build_variant(*a, rqvae_epochs=settings.rqvae_epochs))
            started = time.perf_counter()
            sd.idmaps[job.variant] = timed(f"{job.split}/ids/{job.variant}", build, ds, sd.split.train, job.variant,
                                           Layout.under(run_dir / job.split / job.variant, layout.cache), settings.seed)
            build_seconds[0] = time.perf_counter() - started
            built.add((job.split, job.variant))
        return sd.idmaps[job.variant]

    def time_decoding(sd: SplitData, idmap) -> None:
        """Seconds per case of each protocol, from an untrained model of the configured shape."""
        renderer = make_renderer(ds, sd.split.train, idmap, settings.model, settings.render)
        gm = GenSARModel(build_model(settings.model, renderer.vocab, settings.seed).eval(), renderer.vocab,
                         settings.model, settings.render, idmap.version, idmap.fingerprint())
        for protocol in ("paper", "full"):
            started, n = time.perf_counter(), 0
            for task in ("search", "rec"):
                mask = np.array([c.task == task for c in sd.cases])
                chosen = [c for c, m in zip(sd.cases, mask) if m][:16]
                if chosen:
                    system = GenerativeSystem("timing", task, gm, renderer, index, beam_size=settings.beam_size)
                    system.score(chosen, sd.candidates[mask][:16] if protocol == "paper" else None)
                    n += len(chosen)
            decode_seconds[protocol] = (time.perf_counter() - started) / max(n, 1)
        timings["decode-seconds-per-case"] = {p: round(v, 4) for p, v in decode_seconds.items()}
        log(f"decoding: {decode_seconds['paper']:.3f} s a case (paper, exact), {decode_seconds['full']:.3f} s "
            f"(full, beam {settings.beam_size})")

    validation: dict[str, SplitData] = {}

    def valid_data(job: Job, sd: SplitData) -> SplitData:
        if job.split not in validation:
            keep = (lambda c: c.task == "search") if job.split == "temporal" else (lambda c: True)
            validation[job.split] = timed(f"{job.split}/prepare-valid", prepare, sd.split, keep, "valid")
        return validation[job.split]

    def sasrec_baseline(sd: SplitData, seconds: float) -> None:
        valid = valid_data(jobs[0], sd)
        rec = np.array([c.task == "rec" for c in valid.cases])
        model, report = timed("leave-one-out/train/sasrec", tune_sasrec, sd.split.train, index,
                              [c for c, m in zip(valid.cases, rec) if m], valid.candidates[rec], max_seconds=seconds,
                              seed=settings.seed)
        tuning["sasrec"] = {**report, "budget_seconds": round(seconds, 1)}
        timed("leave-one-out/eval/sasrec", evaluate, model, sd, "rec")

    def run_job(job: Job, sd: SplitData, remaining: list[Job], train_seconds: float | None = None) -> None:
        if train_seconds is None:
            train_seconds = share(job, remaining)
        if train_seconds < settings.min_train_seconds:
            skipped.append(f"{job.name} ({job.split}): {clock.left() / 60:.1f} min left of the budget")
            log(f"skipping {job.name}: budget")
            return
        idmap = ensure_map(job, sd)
        train_settings = settings.train.model_copy(update={"max_minutes": train_seconds / 60, "seed": settings.seed})
        gm, renderer, report = timed(f"{job.split}/train/{job.name}", train_gensar, ds, sd.split.train, idmap,
                                     settings.model, job.mix, train_settings, settings.render, progress=False,
                                     seed=settings.seed)
        if job.fit_prior:  # the history prior's weights, per task, on this split's validation cases
            vsd, weights = valid_data(job, sd), {}
            for task in job.tasks:
                mask = np.array([c.task == task for c in vsd.cases])
                if mask.any():
                    system = GenerativeSystem(job.name, task, gm, renderer, index, beam_size=settings.beam_size)
                    weights[task], priors[f"{job.split}/{job.name}/{task}"] = timed(
                        f"{job.split}/prior/{job.name}/{task}", fit_prior, system,
                        [c for c, m in zip(vsd.cases, mask) if m], vsd.candidates[mask])
            gm.prior = HistoryPrior(weights=weights)
        else:
            gm.prior = fitted.get(job.split, HistoryPrior())
        if job.name == "gensar":
            fitted[job.split] = gm.prior
        gm.save(run_dir / job.split / f"model-{job.name}")
        training[f"{job.split}/{job.name}"] = {**gm.info, "train_seconds_allotted": round(train_seconds, 1),
                                               "prior": gm.prior.model_dump()}
        for task in job.tasks:
            system = GenerativeSystem(job.name, task, gm, renderer, index, beam_size=settings.beam_size)
            for protocol in job.protocols:
                started = time.perf_counter()
                timed(f"{job.split}/eval/{job.name}/{task}/{protocol}", evaluate, system, sd, task, (protocol,))
                n = sum(c.task == task for c in sd.cases)
                decode_seconds[protocol] = (time.perf_counter() - started) / max(n, 1)
            if job.fit_prior and job.name == "gensar":  # the likelihood alone, for what the prior adds
                plain = GenerativeSystem(f"{job.name}/no-prior", task, replace(gm, prior=HistoryPrior()), renderer,
                                         index, beam_size=settings.beam_size)
                timed(f"{job.split}/eval/{job.name}/no-prior/{task}", evaluate, plain, sd, task, ("paper",))

    started = time.perf_counter()
    loo = timed("leave-one-out/prepare", prepare, datasets.leave_one_out(ds))
    temporal: SplitData | None = None
    search_baselines(loo, "leave-one-out")
    for system in (Popularity(loo.split.train, index), ItemKNN(loo.split.train, index)):
        timed(f"leave-one-out/eval/{system.name}", evaluate, system, loo, "rec")
    timings["leave-one-out/prepare-all"] = round(time.perf_counter() - started, 1)
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
                     ("paper",), fit_prior=False) for v in ("semantic-only", "collaborative-only", "no-shared")]
    time_decoding(loo, ensure_map(jobs[0], loo))
    # the headline: SASRec tuned for as long as the joint model trains, then the joint model
    joint_seconds = share(jobs[0], jobs, extra_weight=settings.weight_joint)
    if joint_seconds < settings.min_train_seconds:
        raise BudgetError(f"the joint model would get {joint_seconds:.0f} s of training, under its minimum of "
                          f"{settings.min_train_seconds:.0f} s, with {clock.left() / 60:.1f} min of the "
                          f"{settings.budget_minutes} min budget left: give a larger --budget-minutes")
    sasrec_baseline(loo, joint_seconds)
    run_job(jobs[0], loo, jobs, train_seconds=joint_seconds)
    for i, job in enumerate(jobs[1:], start=1):
        if job.split == "temporal" and temporal is None:
            if share(job, jobs[i:]) < settings.min_train_seconds:
                skipped.append(f"{job.name} ({job.split}): {clock.left() / 60:.1f} min left of the budget")
                continue
            temporal = timed("temporal/prepare", prepare, datasets.temporal_split(ds), lambda c: c.task == "search")
            search_baselines(temporal, "temporal")
        run_job(job, loo if job.split == "leave-one-out" else temporal, jobs[i:])

    timings["total"] = round(time.perf_counter() - clock.start, 1)
    groups = loo.sizes | (temporal.sizes if temporal else {})
    evaluated = loo.cases + (temporal.cases if temporal else [])
    return {
        "dataset": {**ds.stats(), "splits": {"leave-one-out": loo.split.sizes(),
                                             **({"temporal": temporal.split.sizes()} if temporal else {})},
                    "cases": {g: sum(c.split == g for c in evaluated) for g in groups},
                    "cases_before_cap": groups, "max_cases": settings.max_cases},
        "scoring": {"paper": "exact log-likelihood of each candidate's identifier (no beam), plus the history prior",
                    "full": f"constrained beam search over the catalogue, beam {settings.beam_size}, plus the history "
                            "items the prior lifts (scored exactly), plus the history prior",
                    "history_prior": "per task: w_search * log1p(times searched) + w_interaction * log1p(times "
                                     "interacted) by the user, fitted on validation cases (history_prior)"},
        "timings": timings,
        "training": training,
        "tuning": tuning,
        "history_prior": priors,
        "results": results,
        "skipped": skipped,
        "order": [f"{j.split}/{j.name}" for j in jobs],
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
