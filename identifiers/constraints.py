"""Which identifier tokens may follow a prefix: the constraint of constrained decoding.

Identifiers are fixed-length code tuples (c_1 .. c_L), each code in [0, K). Their prefixes
form a trie, stored level by level as sorted integer keys so that one beam-search step
for a whole batch is a handful of tensor operations, never a Python loop per beam (a
per-step Python trie callback was measured ~5x slower than unconstrained decoding):

    node ids at depth l:      0 .. n_l - 1   (depth 0 = the roots, one per group)
    keys[l]:   (n_{l+1},)     sorted parent * K + code: child j of depth l+1 has key keys[l][j]
    offsets[l]: (n_l + 1,)    CSR: children of node p are keys[l][offsets[l][p]:offsets[l][p+1]]
    leaf_row:  (n_L,)         the row of the code array a complete identifier names

A *group* is one candidate set with its own root: group 0 is the whole catalogue, or,
for the paper's 1+99 protocol, group g holds request g's 100 candidates, so a batch of
requests decodes over different subsets at once.

Memory is O(items x L), not O(items x K): the catalogue here costs ~1 MB.
"""

from __future__ import annotations

import numpy as np
import torch


class PrefixConstraint:
    def __init__(self, codes: np.ndarray, codebook_size: int, groups: np.ndarray | None = None,
                 rows: np.ndarray | None = None, n_groups: int | None = None):
        """codes: (M, L) int, every code in [0, codebook_size); groups: (M,) group of each
        row (default: one group); rows: (M,) the item row each code row stands for
        (default: 0..M-1); n_groups: at least max(groups) + 1 (a group may be empty).
        Identifiers must be unique within a group."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] == 0:
            raise ValueError(f"codes must be (items, levels), got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
            raise ValueError(f"codes must lie in [0, {codebook_size})")
        m, depth = codes.shape
        groups = np.zeros(m, np.int64) if groups is None else np.asarray(groups, np.int64)
        rows = np.arange(m, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.codebook_size, self.depth = codebook_size, depth
        self.n_groups = max(n_groups or 1, int(groups.max()) + 1 if m else 1)

        order = np.lexsort(tuple(codes[:, l] for l in reversed(range(depth))) + (groups,))
        codes, groups, rows = codes[order], groups[order], rows[order]

        keys, offsets = [], []
        node = groups  # depth-0 node of every row: its group's root
        n_nodes = self.n_groups
        for l in range(depth):
            key = node * codebook_size + codes[:, l]  # sorted, since rows are sorted lexicographically
            unique, child = np.unique(key, return_inverse=True)
            keys.append(unique)
            offsets.append(np.searchsorted(unique // codebook_size, np.arange(n_nodes + 1)))
            node, n_nodes = child.reshape(-1), len(unique)
        if len(node) and np.any(np.diff(node) == 0):
            raise ValueError("identifiers are not unique within a group")
        leaf_row = np.empty(n_nodes, np.int64)
        leaf_row[node] = rows

        self.keys = [torch.from_numpy(k) for k in keys]
        self.offsets = [torch.from_numpy(o.astype(np.int64)) for o in offsets]
        self.leaf_row = torch.from_numpy(leaf_row)

    def to(self, device: torch.device | str) -> "PrefixConstraint":
        self.keys = [k.to(device) for k in self.keys]
        self.offsets = [o.to(device) for o in self.offsets]
        self.leaf_row = self.leaf_row.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.leaf_row.device

    def roots(self, groups: torch.Tensor) -> torch.Tensor:
        """(B,) group ids -> (B,) depth-0 nodes (a root's id is its group)."""
        return groups.to(self.device, torch.long)

    def allowed(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """(B,) nodes at depth `level` -> (B, K) bool: which codes extend each prefix to a
        valid identifier. A negative node (a dead beam) allows nothing."""
        b = nodes.shape[0]
        mask = torch.zeros(b, self.codebook_size, dtype=torch.bool, device=self.device)
        live = nodes >= 0
        safe = nodes.clamp(min=0)
        start, stop = self.offsets[level][safe], self.offsets[level][safe + 1]
        counts = torch.where(live, stop - start, torch.zeros_like(start))  # (B,)
        beam = torch.repeat_interleave(torch.arange(b, device=self.device), counts)  # (sum counts,)
        first = torch.cumsum(counts, 0) - counts  # where each beam's children begin in `beam`
        child = start[beam] + torch.arange(beam.shape[0], device=self.device) - first[beam]
        mask[beam, self.keys[level][child] % self.codebook_size] = True
        return mask

    def advance(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """(B,) nodes at depth `level`, (B,) chosen codes -> (B,) nodes at depth level+1;
        -1 where the code does not extend the prefix (or the beam was already dead)."""
        keys = self.keys[level]
        if len(keys) == 0:
            return torch.full_like(nodes, -1)
        key = nodes.clamp(min=0) * self.codebook_size + codes
        child = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        found = (nodes >= 0) & (keys[child] == key)
        return torch.where(found, child, torch.full_like(child, -1))

    def items(self, leaves: torch.Tensor) -> torch.Tensor:
        """(B,) depth-L nodes -> (B,) item rows; -1 stays -1."""
        return torch.where(leaves >= 0, self.leaf_row[leaves.clamp(min=0)], torch.full_like(leaves, -1))

    def contains(self, codes: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """(N, L) code tuples -> (N,) bool: is each a complete identifier of its group?"""
        codes = torch.as_tensor(np.asarray(codes, np.int64), device=self.device)
        g = torch.zeros(len(codes), dtype=torch.long) if groups is None else torch.as_tensor(np.asarray(groups, np.int64))
        nodes = self.roots(g)
        for level in range(self.depth):
            nodes = self.advance(level, nodes, codes[:, level])
        return (nodes >= 0).cpu().numpy()


def candidate_constraint(codes: np.ndarray, codebook_size: int, candidates: np.ndarray) -> PrefixConstraint:
    """One group per request: candidates (B, C) item rows -> a constraint whose group b
    allows exactly the identifiers of candidates[b] (the paper's 1+99 protocol)."""
    candidates = np.asarray(candidates, np.int64)
    groups = np.repeat(np.arange(len(candidates)), candidates.shape[1])
    rows = candidates.reshape(-1)
    return PrefixConstraint(np.asarray(codes)[rows], codebook_size, groups=groups, rows=rows)
