"""The Ray Serve application: a FastAPI ingress over the decoding engine (serving.engine).

    POST /search      {query, user_id?, k, filters?}   -> Answer
    POST /recommend   {user_id, k, history?}          -> Answer
    GET  /healthz /readyz /metrics /models
    POST /admin/pin {task, version|null}, POST /admin/reload   (Authorization: Bearer <token>)

Each replica loads the base model once, answers from the bundles its engine holds, and
follows the registry on a background thread: a new version is loaded beside the serving one,
warmed, then swapped in (serving.bundle explains why in-flight requests are safe).
Requests are batched per task by `serve.batch` within a small wait budget and decoded off
the event loop, so requests keep arriving while a batch decodes.

`serving.app:app` is the bound application (Helm's import path, `gensar serve`);
`serving.app:build` is the builder that takes settings overrides as application args.
"""

# No `from __future__ import annotations`: FastAPI resolves the handlers' annotations at run time.
import asyncio
import logging
import os
import secrets
import threading
import time

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve

from serving.control import Control, read_control, write_control
from serving.engine import Engine, Query, Swap, item_history
# Metrics through the module: Serve pickles the ingress class by value, and pickled copies of
# metric objects would not be in the replica's registry.
from serving import metrics as meters
from serving.schemas import Answer, Models, PinRequest, RecommendRequest, SearchRequest, TaskModel
from serving.settings import ServingSettings

log = logging.getLogger("gensar.serving")
api = FastAPI(title="GenSAR serving", version="1",
              description="Search and recommendation from one generative model, with hot-swapped versions.")
bearer = HTTPBearer(auto_error=False)
ENDPOINTS = {"/search", "/recommend", "/healthz", "/readyz", "/metrics", "/models", "/admin/pin", "/admin/reload"}


@api.middleware("http")
async def count_requests(request: Request, call_next):
    endpoint = request.url.path if request.url.path in ENDPOINTS else "other"  # bounded label values
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        meters.REQUESTS.labels(endpoint, str(status)).inc()
        meters.LATENCY.labels(endpoint).observe(time.perf_counter() - started)


def unprocessable(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=message)


@serve.deployment
@serve.ingress(api)
class GenSARServer:
    def __init__(self, overrides: dict | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gensar.data import load
        from identifiers.settings import IdentifierSettings, QdrantSettings
        from identifiers.vectors import ItemVectorStore
        from serving.bundle import Loader
        from serving.catalogue import Catalogue
        from serving.dense import DenseIndex
        from serving.userstate import UserState

        self.settings = settings = ServingSettings(**(overrides or {}))
        catalogue = Catalogue.of(load(settings.catalogue_dir()))
        self.genres = set(catalogue.all_genres())
        loader = Loader(settings, catalogue)
        qdrant = QdrantSettings()
        shared = ItemVectorStore(qdrant) if settings.dense and qdrant.url else None  # a server: the identifiers' collection
        dense = DenseIndex(catalogue, IdentifierSettings().cache_path(), loader.device, shared) if settings.dense else None
        self.engine = Engine(loader, catalogue, dense, settings.beam_size, settings.dense_k)
        self.users = UserState(settings.streams_url, settings.streams_timeout_s)
        for batched in (self._search_batch, self._recommend_batch):
            batched.set_max_batch_size(settings.max_batch_size)
            batched.set_batch_wait_timeout_s(settings.batch_wait_s)
        self.follow()  # the first versions load before the replica reports ready
        rank = serve.get_replica_context().rank
        self._stagger = rank.rank * settings.swap_stagger_s if rank is not None else 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._follow_loop, name="gensar-follow-registry", daemon=True).start()
        if settings.follow_items:
            from gensar.settings import Settings
            from serving.items import follow_items

            threading.Thread(target=follow_items, args=(Settings().kafka, catalogue, dense, self._stop),
                             name="gensar-follow-items", daemon=True).start()

    # --- following the registry ---------------------------------------------------------

    def follow(self) -> list[Swap]:
        """Apply the operators' pins and the registry's decisions now."""
        self.engine.pins = dict(read_control(self.settings.registry_dir()).pins)
        swaps = self.engine.refresh()
        for swap in swaps:
            meters.SWAPS.labels(swap.task).inc()
            meters.SWAP_LOAD.labels(swap.task).observe(swap.load_seconds)
            log.info("swapped %s: %s -> %s (loaded in %.2fs)", swap.task, swap.old, swap.new, swap.load_seconds)
        if swaps:
            meters.MODEL_VERSION.clear()
            for task, bundle in self.engine.slots.items():
                meters.MODEL_VERSION.labels(task, bundle.version, bundle.idmap_version).set(1)
        return swaps

    def _follow_loop(self) -> None:
        try:  # loading a version yields the CPU to requests (Linux nices threads one by one)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.settings.poll_s):
            try:
                self.engine.pins = dict(read_control(self.settings.registry_dir()).pins)
                if self._stagger and self.engine.due():
                    time.sleep(self._stagger)
                self.follow()
            except Exception:  # a bad version or an unreadable registry must not stop serving
                meters.REFRESH_ERRORS.inc()
                log.exception("following the registry failed; the serving versions stay")

    def __del__(self):
        self._stop.set()

    # --- the API ------------------------------------------------------------------------

    @api.post("/search", response_model=Answer)
    async def search(self, body: SearchRequest) -> Answer:
        if len(body.query) > self.settings.max_query_chars:
            raise unprocessable(f"query longer than {self.settings.max_query_chars} characters")
        self._check_k(body.k)
        genre = body.filters.genre.lower() if body.filters and body.filters.genre else None
        if genre is not None and genre not in self.genres:
            raise unprocessable(f"unknown genre {body.filters.genre!r}; known: {', '.join(sorted(self.genres))}")
        state = await asyncio.to_thread(self.users.histories, body.user_id) if body.user_id else None
        query = Query("search", body.k, history=state.events if state else (), query=body.query, genre=genre)
        return await self._search_batch(query)

    @api.post("/recommend", response_model=Answer)
    async def recommend(self, body: RecommendRequest) -> Answer:
        self._check_k(body.k)
        if body.history is not None and len(body.history) > self.settings.max_history:
            raise unprocessable(f"history longer than {self.settings.max_history} items")
        state = await asyncio.to_thread(self.users.histories, body.user_id)
        history = item_history(body.history) if body.history is not None else state.events
        return await self._recommend_batch(Query("rec", body.k, history=history, search_history=state.queries))

    def _check_k(self, k: int) -> None:
        if k > self.settings.max_k:
            raise unprocessable(f"k must be at most {self.settings.max_k}")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)  # reset from settings in __init__
    async def _search_batch(self, queries: list[Query]) -> list[Answer]:
        meters.BATCH_SIZE.labels("search").observe(len(queries))
        return await asyncio.to_thread(self.engine.search, queries)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _recommend_batch(self, queries: list[Query]) -> list[Answer]:
        meters.BATCH_SIZE.labels("rec").observe(len(queries))
        return await asyncio.to_thread(self.engine.recommend, queries)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        ready = {"search", "rec"} <= set(self.engine.slots)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/models", response_model=Models)
    async def models(self) -> Models:
        pins = self.engine.pins
        return Models(device=self.engine.loader.device, base_model=self.engine.loader.base_name,
                      tasks={task: TaskModel(version=b.version, idmap_version=b.idmap_version,
                                             pinned=bool(pins.get(task) or pins.get("joint")),
                                             load_seconds=b.load_seconds, loaded_at=b.loaded_at)
                             for task, b in self.engine.slots.items()},
                      swaps=[vars(s) for s in self.engine.swaps])

    # --- admin --------------------------------------------------------------------------

    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        token = self.settings.admin_token
        if token is None:
            raise HTTPException(403, "admin operations are disabled: no admin token is configured")
        if credentials is None:
            raise HTTPException(401, "admin operations need 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
            raise HTTPException(403, "wrong admin token")

    @api.post("/admin/pin", response_model=Models)
    async def pin(self, body: PinRequest, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Models:
        """Serve `version` for `task` whatever the registry says (every replica follows within
        a poll interval); version null hands the task back to the registry."""
        self._authorize(credentials)
        if body.version is not None:
            try:
                self.engine.loader.registry.manifest(body.version)
            except ValueError as exc:
                raise HTTPException(404, str(exc)) from None
        control = read_control(self.settings.registry_dir())
        pins = {t: v for t, v in control.pins.items() if t != body.task}
        write_control(self.settings.registry_dir(), Control(pins=pins | ({body.task: body.version} if body.version else {})))
        try:
            await asyncio.to_thread(self.follow)
        except Exception as exc:  # the version cannot serve: take the pin back, keep serving
            write_control(self.settings.registry_dir(), control)
            self.engine.pins = dict(control.pins)
            raise HTTPException(409, f"version {body.version} cannot serve: {exc}") from None
        return await self.models()

    @api.post("/admin/reload", response_model=Models)
    async def reload(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Models:
        """Re-read the registry and the pins now rather than at the next poll."""
        self._authorize(credentials)
        await asyncio.to_thread(self.follow)
        return await self.models()


def build(args: dict | None = None):
    """The application, with settings overrides (ServingSettings fields) as args."""
    settings = ServingSettings(**(args or {}))
    return GenSARServer.options(
        num_replicas=settings.replicas, max_ongoing_requests=4 * settings.max_batch_size,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
    ).bind(args or {})


app = build()
