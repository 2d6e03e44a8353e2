"""The GenSAR RQ-VAE: shared codebooks over a joint latent, then task-specific codebooks.

    semantic s (384) --enc_s--> z_s (32) ┐
                                         ├─ z = [z_s; z_c] (64) --shared levels--> q_shared, residual r
    collab.  c (64)  --enc_c--> z_c (32) ┘
    r = [r_s; r_c]:  r_s --semantic levels--> q_sem     r_c --collaborative levels--> q_col
    ẑ_s = q_shared[:32] + q_sem --dec_s--> ŝ            ẑ_c = q_shared[32:] + q_col --dec_c--> ĉ

search id = shared codes + semantic codes; rec id = shared codes + collaborative codes; each
id alone decodes its own embedding. Paper setting: 2 shared levels (dim 64), 2 specific
levels (dim 32), 256 codes, beta 0.25.

loss = sum_t w_t ||x_t - x̂_t||² + sum_levels ( ||sg(r) - e||² + beta ||r - sg(e)||² )
with straight-through gradients from the decoders into the encoders. Codebooks start from
k-means over the residuals after a short autoencoder warm-up; codes unused for a while are
re-seeded from live residuals (dead-code guard); the last level of each id is assigned by
Sinkhorn-Knopp balancing, which spreads items over codes and so reduces collisions.

Ablation modes (`RQVAEConfig.mode`):
    dual                both tasks, shared then specific levels (GenSAR)
    no_shared           no shared codebooks: each id is its task's specific codes only
    semantic_only       one branch (text): search id == rec id == its codes
    collaborative_only  one branch (interactions): search id == rec id == its codes
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm import tqdm

TASKS = ("semantic", "collaborative")
ID_OF_TASK = {"semantic": "search", "collaborative": "rec"}


class RQVAEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["dual", "no_shared", "semantic_only", "collaborative_only"] = "dual"
    shared_levels: int = Field(2, ge=0)  # paper: 2, over the joint latent (n_tasks x latent_dim = 64)
    specific_levels: int = Field(2, ge=0)  # paper: 2 per task, dim latent_dim
    codebook_size: int = Field(256, ge=2)  # paper: 256
    latent_dim: int = Field(32, ge=1)  # per task (paper: 32)
    hidden_dims: tuple[int, ...] = (256, 128)  # encoder MLP widths (decoder mirrors); small enough for CPU
    beta: float = Field(0.25, ge=0)  # commitment weight (paper: 0.25)
    task_weights: dict[Literal["semantic", "collaborative"], float] = {"semantic": 1.0, "collaborative": 1.0}
    epochs: int = Field(100, ge=0)
    warmup_epochs: int = Field(10, ge=0)  # plain autoencoder epochs before the k-means initialisation
    batch_size: int = Field(1024, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    kmeans_iters: int = Field(15, ge=1)
    dead_code_interval: int = Field(5, ge=1)  # epochs between re-seeding unused codes
    # Balanced last-level assignment: entropy relative to the median code gap (0.01-0.03
    # gave max load ~1.2x the mean at ~2% extra distance on MovieLens); used for the
    # catalogue's final codes, and in training batches only if asked (costly on CPU).
    sinkhorn_epsilon: float = Field(0.02, gt=0)
    sinkhorn_iters: int = Field(50, ge=1)
    sinkhorn_in_training: bool = False
    seed: int = 0

    @property
    def tasks(self) -> tuple[str, ...]:
        return {"semantic_only": ("semantic",), "collaborative_only": ("collaborative",)}.get(self.mode, TASKS)

    @property
    def n_shared(self) -> int:
        return 0 if self.mode == "no_shared" else self.shared_levels

    @model_validator(mode="after")
    def _id_lengths(self) -> "RQVAEConfig":
        if self.mode in ("dual", "no_shared") and self.specific_levels < 1:
            raise ValueError(f"mode {self.mode} needs specific_levels >= 1 (the two ids must differ somewhere)")
        if self.n_shared + self.specific_levels < 1:
            raise ValueError("an id needs at least one level")
        return self


# --- building blocks -------------------------------------------------------------------------


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def sinkhorn_assign(distances: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Balanced assignment of B points to K codes: entropic optimal transport with uniform
    marginals (every code holds B/K points), solved by Sinkhorn-Knopp in the log domain,
    then each point's most probable code. Each row is shifted by its minimum (absorbed by
    the row scaling) and all by the median gap, so epsilon is scale-free. (B, K) -> (B,)"""
    d = distances - distances.min(1, keepdim=True).values
    log_kernel = -d / (epsilon * d.median().clamp_min(1e-12))  # (B, K)
    b, k = d.shape
    log_v = torch.zeros(k, dtype=d.dtype, device=d.device)
    for _ in range(iters):
        log_u = -math.log(b) - torch.logsumexp(log_kernel + log_v, 1)  # (B,) rows spend 1/B each
        log_v = -math.log(k) - torch.logsumexp(log_kernel + log_u[:, None], 0)  # (K,) codes receive 1/K each
    return (log_kernel + log_v).argmax(1)  # u is constant per row: irrelevant to the argmax


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means from k distinct random points; a cluster that empties keeps its
    centroid (the dead-code guard re-seeds it later). With fewer points than codes the
    extra centroids are jittered copies of points. (N, d) -> (k, d)"""
    n = len(x)
    if n <= k:
        extra = x[torch.randint(n, (k - n,), generator=generator)] + 1e-3 * torch.randn(k - n, x.shape[1], generator=generator)
        return torch.cat([x, extra])
    centroids = x[torch.randperm(n, generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = (centroids.pow(2).sum(1) - 2 * x @ centroids.T).argmin(1)  # nearest centroid, |x|² dropped
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size, dim) / math.sqrt(dim))  # (K, dim)

    def distances(self, r: torch.Tensor) -> torch.Tensor:
        """Squared euclidean distances (B, K)."""
        return (r.pow(2).sum(1, keepdim=True) - 2 * r @ self.weight.T + self.weight.pow(2).sum(1)).clamp_min(0)


@dataclass
class Levels:
    """What one pass through the quantiser produced."""

    codes: dict[str, torch.Tensor]  # id ("search"/"rec") -> (B, L) codes, shared levels first
    last_distances: dict[str, torch.Tensor]  # id -> (B, K) distances at its last level
    quantised: dict[str, torch.Tensor]  # task -> (B, latent) ẑ_t
    residuals: dict[str, torch.Tensor]  # codebook name ("shared.0", "semantic.1", ...) -> (B, dim) the input it quantised
    loss: torch.Tensor  # codebook + beta * commitment, summed over levels


# --- the model --------------------------------------------------------------------------------


class RQVAE(nn.Module):
    def __init__(self, config: RQVAEConfig, semantic_dim: int, collaborative_dim: int):
        super().__init__()
        self.config = config
        self.input_dims = {"semantic": semantic_dim, "collaborative": collaborative_dim}
        c, tasks = config, config.tasks
        hidden = list(c.hidden_dims)
        self.encoders = nn.ModuleDict({t: mlp([self.input_dims[t], *hidden, c.latent_dim]) for t in tasks})
        self.decoders = nn.ModuleDict({t: mlp([c.latent_dim, *reversed(hidden), self.input_dims[t]]) for t in tasks})
        joint = c.latent_dim * len(tasks)
        self.shared = nn.ModuleList([Codebook(c.codebook_size, joint) for _ in range(c.n_shared)])
        self.specific = nn.ModuleDict({t: nn.ModuleList([Codebook(c.codebook_size, c.latent_dim)
                                                         for _ in range(c.specific_levels)]) for t in tasks})
        for t in tasks:  # per-feature standardisation of the inputs, fitted on the training items
            self.register_buffer(f"mean_{t}", torch.zeros(self.input_dims[t]))
            self.register_buffer(f"std_{t}", torch.ones(self.input_dims[t]))

    # --- the forward pass, top to bottom ---

    def standardise(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: (x[t] - getattr(self, f"mean_{t}")) / getattr(self, f"std_{t}") for t in self.config.tasks}

    def encode_latent(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.encoders[t](xs[t]) for t in self.config.tasks}  # task -> (B, latent)

    def quantise(self, z: dict[str, torch.Tensor], balance_last: bool) -> Levels:
        c, tasks = self.config, self.config.tasks
        residual = torch.cat([z[t] for t in tasks], 1)  # (B, n_tasks * latent): the joint latent
        q_shared = torch.zeros_like(residual)
        shared_codes, loss, residuals = [], residual.new_zeros(()), {}
        last_shared_is_last = c.specific_levels == 0
        last_distances = {}
        for level, book in enumerate(self.shared):
            d = book.distances(residual)  # (B, K)
            is_last = last_shared_is_last and level == len(self.shared) - 1
            idx = self._assign(d, balance_last and is_last)
            e = book.weight[idx]  # (B, joint)
            loss = loss + self._level_loss(residual, e)
            residuals[f"shared.{level}"] = residual.detach()
            q_shared, residual = q_shared + e, residual - e.detach()
            shared_codes.append(idx)
            if is_last:
                last_distances = {ID_OF_TASK[t]: d for t in tasks}
        codes, quantised = {}, {}
        for i, t in enumerate(tasks):
            part = slice(i * c.latent_dim, (i + 1) * c.latent_dim)
            r, q, task_codes = residual[:, part], q_shared[:, part], list(shared_codes)
            for level, book in enumerate(self.specific[t]):
                d = book.distances(r)  # (B, K)
                is_last = level == len(self.specific[t]) - 1
                idx = self._assign(d, balance_last and is_last)
                e = book.weight[idx]  # (B, latent)
                loss = loss + self._level_loss(r, e)
                residuals[f"{t}.{level}"] = r.detach()
                q, r = q + e, r - e.detach()
                task_codes.append(idx)
                if is_last:
                    last_distances[ID_OF_TASK[t]] = d
            codes[ID_OF_TASK[t]] = torch.stack(task_codes, 1)  # (B, L)
            quantised[t] = z[t] + (q - z[t]).detach()  # straight-through: decoder gradients reach the encoder
        if len(tasks) == 1:  # one branch: both ids are the same codes
            only = ID_OF_TASK[tasks[0]]
            other = "rec" if only == "search" else "search"
            codes[other], last_distances[other] = codes[only], last_distances[only]
        return Levels(codes, last_distances, quantised, residuals, loss)

    def _assign(self, distances: torch.Tensor, balanced: bool) -> torch.Tensor:
        if balanced and len(distances) > 1:
            return sinkhorn_assign(distances.detach(), self.config.sinkhorn_epsilon, self.config.sinkhorn_iters)
        return distances.argmin(1)

    def _level_loss(self, r: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(e, r.detach()) + self.config.beta * F.mse_loss(r, e.detach())

    def decode(self, quantised: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.decoders[t](quantised[t]) for t in self.config.tasks}  # standardised space

    def forward(self, x: dict[str, torch.Tensor], balance_last: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor], Levels]:
        xs = self.standardise(x)
        levels = self.quantise(self.encode_latent(xs), balance_last)
        recon = self.decode(levels.quantised)
        errors = {t: F.mse_loss(recon[t], xs[t]) for t in self.config.tasks}
        loss = sum(self.config.task_weights[t] * errors[t] for t in self.config.tasks) + levels.loss
        return loss, errors, levels

    # --- inference ---

    @torch.no_grad()
    def assign(self, semantic: np.ndarray, collaborative: np.ndarray, balanced: bool) -> Levels:
        """Codes for a batch of items (balanced: Sinkhorn over the batch at the last level)."""
        self.eval()
        device = self.device
        x = {"semantic": torch.as_tensor(semantic, dtype=torch.float32, device=device),
             "collaborative": torch.as_tensor(collaborative, dtype=torch.float32, device=device)}
        return self.quantise(self.encode_latent(self.standardise(x)), balance_last=balanced)

    @torch.no_grad()
    def reconstruction_error(self, semantic: np.ndarray, collaborative: np.ndarray,
                             codes: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
        """Per task: MSE in standardised space and mean cosine(x, x̂) in the input space,
        decoding the given ids (default: nearest codes)."""
        self.eval()
        device = self.device
        x = {"semantic": torch.as_tensor(semantic, dtype=torch.float32, device=device),
             "collaborative": torch.as_tensor(collaborative, dtype=torch.float32, device=device)}
        xs = self.standardise(x)
        quantised = self.quantise(self.encode_latent(xs), balance_last=False).quantised if codes is None \
            else self.quantised_from_codes(codes)
        recon = self.decode(quantised)
        out = {}
        for t in self.config.tasks:
            raw = recon[t] * getattr(self, f"std_{t}") + getattr(self, f"mean_{t}")
            out[t] = {"mse": float(F.mse_loss(recon[t], xs[t])),
                      "cosine": float(F.cosine_similarity(raw, x[t], dim=1).mean())}
        return out

    def quantised_from_codes(self, codes: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """ẑ_t from ids ("search"/"rec" -> (B, L[+1])); a disambiguation column is ignored."""
        c = self.config
        out = {}
        for i, t in enumerate(c.tasks):
            ids = torch.as_tensor(np.asarray(codes[ID_OF_TASK[t]]), dtype=torch.long, device=self.device)
            part = slice(i * c.latent_dim, (i + 1) * c.latent_dim)
            q = torch.zeros(len(ids), c.latent_dim, device=self.device)
            for level, book in enumerate(self.shared):
                q = q + book.weight[ids[:, level], part]
            for level, book in enumerate(self.specific[t]):
                q = q + book.weight[ids[:, c.n_shared + level]]
            out[t] = q
        return out

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- persistence ---

    def export(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(config, state): what an identifier map stores to encode new items later."""
        config = {"rqvae": self.config.model_dump(mode="json"), **{f"{t}_dim": d for t, d in self.input_dims.items()}}
        state = {("codebooks." + k if k.startswith(("shared.", "specific.")) else k): v.detach().cpu().numpy()
                 for k, v in self.state_dict().items()}
        return config, state

    @classmethod
    def restore(cls, config: dict, state: dict[str, np.ndarray]) -> "RQVAE":
        model = cls(RQVAEConfig(**config["rqvae"]), config["semantic_dim"], config["collaborative_dim"])
        model.load_state_dict({k.removeprefix("codebooks."): torch.from_numpy(np.array(v)) for k, v in state.items()})
        return model.eval()


# --- training --------------------------------------------------------------------------------


def train_rqvae(config: RQVAEConfig, semantic: np.ndarray, collaborative: np.ndarray, device: str = "cpu",
                progress: bool = True) -> tuple[RQVAE, list[dict[str, float]]]:
    """Fit on all items; returns the model and per-epoch losses (phase 'warmup' or 'rq')."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = RQVAE(config, semantic.shape[1], collaborative.shape[1]).to(device)
    x = {"semantic": torch.as_tensor(semantic, dtype=torch.float32, device=device),
         "collaborative": torch.as_tensor(collaborative, dtype=torch.float32, device=device)}
    for t in config.tasks:
        getattr(model, f"mean_{t}").copy_(x[t].mean(0))
        getattr(model, f"std_{t}").copy_(x[t].std(0).clamp_min(1e-6))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n, history = len(semantic), []

    def run_epoch(phase: str) -> dict[str, float]:
        model.train()
        totals: dict[str, float] = {}
        for batch in torch.randperm(n, generator=generator).split(config.batch_size):
            xb = {t: v[batch.to(device)] for t, v in x.items()}
            if phase == "warmup":  # plain autoencoder: shapes the latent before k-means
                xs = model.standardise(xb)
                recon = model.decode(model.encode_latent(xs))
                errors = {t: F.mse_loss(recon[t], xs[t]) for t in config.tasks}
                loss = sum(config.task_weights[t] * errors[t] for t in config.tasks)
            else:
                loss, errors, _ = model(xb, balance_last=config.sinkhorn_in_training)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for key, value in {"loss": loss, **{f"recon_{t}": e for t, e in errors.items()}}.items():
                totals[key] = totals.get(key, 0.0) + value.item() * len(batch) / n
        return {"phase": phase, **totals}

    bar = tqdm(total=config.warmup_epochs + config.epochs, desc="training RQ-VAE", unit="epoch", disable=not progress)
    for _ in range(config.warmup_epochs):
        history.append(run_epoch("warmup"))
        bar.update()
    _kmeans_init(model, x, config, generator)
    for epoch in range(config.epochs):
        history.append(run_epoch("rq"))
        if (epoch + 1) % config.dead_code_interval == 0 and epoch + 1 < config.epochs:
            history[-1]["revived_codes"] = _revive_dead_codes(model, x, generator)
        bar.update()
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    bar.close()
    return model.eval(), history


def _codebooks(model: RQVAE) -> dict[str, Codebook]:
    books = {f"shared.{i}": b for i, b in enumerate(model.shared)}
    for t in model.config.tasks:
        books.update({f"{t}.{i}": b for i, b in enumerate(model.specific[t])})
    return books


@torch.no_grad()
def _kmeans_init(model: RQVAE, x: dict[str, torch.Tensor], config: RQVAEConfig, generator: torch.Generator) -> None:
    """Each level's codebook := k-means of the residuals it will see, level by level."""
    model.eval()
    books = _codebooks(model)
    z = model.encode_latent(model.standardise(x))
    for name in books:  # levels in order: the residuals of level l need levels < l initialised
        residuals = model.quantise(z, balance_last=False).residuals[name]
        books[name].weight.copy_(kmeans(residuals.cpu(), config.codebook_size, config.kmeans_iters, generator).to(residuals.device))


@torch.no_grad()
def _revive_dead_codes(model: RQVAE, x: dict[str, torch.Tensor], generator: torch.Generator) -> int:
    """Codes no item chooses are moved onto random residuals of their level (plus a little
    noise), so they can win items again instead of wasting capacity."""
    model.eval()
    levels = model.quantise(model.encode_latent(model.standardise(x)), balance_last=False)
    revived = 0
    for name, book in _codebooks(model).items():
        residuals = levels.residuals[name]
        usage = torch.bincount(book.distances(residuals).argmin(1), minlength=len(book.weight))
        dead = torch.nonzero(usage == 0).squeeze(1)
        if len(dead):
            picks = torch.randint(len(residuals), (len(dead),), generator=generator).to(residuals.device)
            noise = 0.01 * residuals.std() * torch.randn(len(dead), residuals.shape[1], generator=generator).to(residuals.device)
            book.weight[dead] = residuals[picks] + noise
            revived += len(dead)
    return revived
