"""The HTTP API's bodies (published as the OpenAPI spec). Unknown keys are a 422."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gensar.events import Id  # item / user ids: 1 to 128 characters
from serving.settings import HISTORY_LIMIT, K_LIMIT, QUERY_LIMIT


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchFilters(Strict):
    genre: str | None = Field(None, min_length=1, max_length=64, description="only items of this genre")


class Searched(Strict):
    """An earlier search in a request's own history: its query and the item clicked for it."""

    item_id: Id
    query: str = Field(min_length=1, max_length=QUERY_LIMIT)


# A request's own history, oldest first: an item id is an interaction, a Searched a search.
History = list[Id | Searched]
HISTORY_DOC = ("the user's earlier events, oldest first (an item id: an interaction; {item_id, query}: a search); "
               "default: the user's current history from the streams")


class SearchRequest(Strict):
    query: str = Field(min_length=1, max_length=QUERY_LIMIT)
    user_id: Id | None = Field(None, description="personalises by the user's current history")
    k: int = Field(10, ge=1, le=K_LIMIT)
    filters: SearchFilters | None = None
    history: History | None = Field(None, max_length=HISTORY_LIMIT, description=HISTORY_DOC)


class RecommendRequest(Strict):
    user_id: Id
    k: int = Field(10, ge=1, le=K_LIMIT)
    history: History | None = Field(None, max_length=HISTORY_LIMIT, description=HISTORY_DOC)


class Item(BaseModel):
    id: str
    title: str
    score: float


class Answer(BaseModel):
    items: list[Item]
    model_version: str
    idmap_version: str
    # model: decoded; model+dense: fused with the dense look-up; popularity / search-history:
    # a user without usable history (cold start)
    source: Literal["model", "model+dense", "popularity", "search-history"]


class TaskModel(BaseModel):
    version: str
    idmap_version: str
    pinned: bool
    load_seconds: float
    loaded_at: float


class RefusedVersion(BaseModel):
    version: str
    task: str = Field(description="the task that wanted it")
    reason: Literal["corrupt", "unknown", "wrong-base", "map-missing", "layout", "load-failed"]
    detail: str = Field(description="what the loader found, for a person to read")
    at: float


class Models(BaseModel):
    device: str
    base_model: str
    replica: str = Field(description="the Serve replica that answered (each replica follows the registry itself)")
    pid: int = Field(description="its process")
    tasks: dict[str, TaskModel]  # "search", "rec"
    swaps: list[dict]  # the latest swaps of this replica, newest last
    refused: list[RefusedVersion] = Field(description="the latest versions this replica refused to serve, newest "
                                          "last; the task kept what it served")


class Error(BaseModel):
    """Every error but a 422 (which is FastAPI's HTTPValidationError, a list in `detail`)."""
    detail: str = Field(min_length=1, description="what is wrong, for a person to read")


class Ready(BaseModel):
    ready: bool
    detail: str | None = Field(None, description="why not, when not ready (503)")


class PinRequest(Strict):
    task: Literal["joint", "search", "rec"] = "joint"
    # A registry version name (learner.registry.Manifest), and never "." or "..": the name
    # becomes a path under the registry's adapters folder.
    version: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
                                description="null releases the pin: the registry decides again")
