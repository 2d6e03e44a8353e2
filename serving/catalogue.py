"""What serving knows about items besides their identifiers: titles and genres to answer
with and filter by, popularity for users without history, and the text the dense look-up
embeds. Built from the catalogue dataset (gensar.data) once per replica."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gensar.data import Dataset


def genres_of(fields: dict[str, str]) -> frozenset[str]:
    """MovieLens genres as the loader keeps them ("Comedy, Drama") -> {"comedy", "drama"}."""
    return frozenset(g.strip().lower() for g in fields.get("genres", "").split(",") if g.strip())


@dataclass(frozen=True)
class Catalogue:
    titles: dict[str, str]  # item id -> title
    genres: dict[str, frozenset[str]]  # item id -> lower-case genres
    popular: tuple[str, ...]  # item ids by interaction count, most first (ties: by id)
    counts: dict[str, int]

    @classmethod
    def of(cls, ds: Dataset) -> "Catalogue":
        counts = Counter(e.item_id for e in ds.interactions)
        popular = sorted(ds.items, key=lambda i: (-counts[i], i))
        return cls({i: u.title for i, u in ds.items.items()}, {i: genres_of(u.fields) for i, u in ds.items.items()},
                   tuple(popular), dict(counts))

    def text(self, item_id: str) -> str:
        """What the dense index embeds: the title and the genres."""
        return f"{self.titles[item_id]} ({', '.join(sorted(self.genres[item_id]))})"

    def all_genres(self) -> list[str]:
        return sorted(set().union(*self.genres.values())) if self.genres else []
