"""The Ray Serve application: a FastAPI ingress over the decoding engine (serving.engine).

    POST /search      {query, user_id?, k, filters?}   -> Answer
    POST /recommend   {user_id, k, history?}          -> Answer
    GET  /healthz /readyz /metrics /models
    POST /admin/pin {task, version|null}, POST /admin/reload   (Authorization: Bearer <token>)

Admin routes check the token before they read the body; a body over max_body_bytes is a 413
before any handler reads it; every error carries `detail`, as the OpenAPI spec documents.

Each replica loads the base model once, answers from the bundles its engine holds, and
follows the registry on a background thread: a new version is loaded beside the serving one,
warmed, then swapped in (serving.bundle explains why in-flight requests are safe). A version
that fails to load is refused (serving.engine): the serving one stays, /models lists the
refusal and gensar_serve_refused_versions_total counts it; /admin/pin and /admin/reload
answer 409 for it.
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
from typing import NoReturn

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, SecretStr, ValidationError
from ray import serve
from starlette.datastructures import Headers

from gensar.layout import Layout
from gensar.settings import KafkaSettings
from serving.control import Control, read_control, write_control
from serving.engine import Engine, Query, Refusal, Swap, queries_of, request_history
# Metrics through the module: Serve pickles the ingress class by value, and pickled copies of
# metric objects would not be in the replica's registry.
from serving import metrics as meters
from serving.schemas import (Answer, Error, Models, PinRequest, Ready, RecommendRequest, RefusedVersion, SearchRequest,
                             TaskModel)
from serving.settings import ServingSettings

log = logging.getLogger("gensar.serving")
api = FastAPI(title="GenSAR serving", version="1",
              description="Search and recommendation from one generative model, with hot-swapped versions.")
bearer = HTTPBearer(auto_error=False)
ENDPOINTS = {"/search", "/recommend", "/healthz", "/readyz", "/metrics", "/models", "/admin/pin", "/admin/reload"}


class BodyLimit:
    """413 for a request body over the replica's max_body_bytes, before any handler buffers it:
    at once for a declared Content-Length, else as the bytes arrive (chunked, or a client that
    sends more than it declared). Pure ASGI, so the body is never read here."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # The settings are the replica's (application args), not this module's: Serve binds
        # the handlers' `self` the same way.
        limit = serve.get_replica_context().servable_object.settings.max_body_bytes
        message = f"request body over {limit} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > limit:
                raise HTTPException(413, message)  # inside the handler's read: FastAPI answers it
            return event

        await self.app(scope, counted, send)


api.add_middleware(BodyLimit)  # inside count_requests (added after), so 413s are counted


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


@api.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, but a body that is not UTF-8 is echoed lossily: FastAPI's own handler
    decodes the echoed bytes strictly and answers 500 (found by the API fuzz)."""
    errors = [e | {"input": e["input"].decode("utf-8", "replace")} if isinstance(e.get("input"), bytes) else e
              for e in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def unprocessable(field: str, message: str, value) -> RequestValidationError:
    """A 422 for a limit the schema cannot state (the replica's settings, its catalogue), in
    FastAPI's own shape, so every 422 matches the published HTTPValidationError."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *field.split(".")), "msg": message,
                                    "input": value}])


def authorize(token: SecretStr | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Admit an admin request only with the configured token. Admin handlers call this before
    they read the body, so an unauthenticated caller learns nothing about it (not even a 422)."""
    if token is None:
        refuse("disabled", 403, "admin operations are disabled: no admin token is configured")
    if credentials is None:
        refuse("missing", 401, "admin operations need 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
    # Constant time: how long the comparison takes must not tell how much of a guess is right.
    if not secrets.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        refuse("wrong", 403, "wrong admin token")


def refuse(reason: str, status: int, message: str, headers: dict | None = None) -> NoReturn:
    meters.ADMIN_AUTH_FAILURES.labels(reason).inc()
    log.warning("admin request refused: %s", message)  # never the token, presented or configured
    raise HTTPException(status, message, headers=headers)


async def body_as(request: Request, model: type[BaseModel]) -> BaseModel:
    """The JSON body as `model`, for handlers that must authorize before reading it; invalid
    bodies are 422 in FastAPI's own shape (loc starting with "body")."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise RequestValidationError([{"type": "content_type", "loc": ("body",), "input": media,
                                       "msg": "the body must be JSON, sent as Content-Type: application/json"}])
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from None


def json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of `model` for a handler that reads its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# The errors each route may answer, in the spec, so clients (and the API fuzz) know them all.
WHY = {400: "the body could not be parsed", 401: "no bearer token",
       403: "admin is off (no token configured) or the token is wrong", 404: "no such version in the registry",
       409: "the version cannot serve (the loader refused it): a pin is taken back, the serving version stays",
       413: "the body is over max_body_bytes"}
INVALID = {"description": "Validation Error",  # FastAPI's own, documented on routes that declare their body
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}


def errors(*codes: int) -> dict:
    return {code: {"model": Error, "description": WHY[code]} for code in codes}


@serve.deployment
@serve.ingress(api)
class GenSARServer:
    def __init__(self, overrides: dict | None = None, layout: Layout | None = None, kafka: KafkaSettings | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gensar.data import load
        from identifiers.settings import QdrantSettings
        from identifiers.vectors import ItemVectorStore
        from serving.bundle import Loader
        from serving.catalogue import Catalogue
        from serving.dense import DenseIndex
        from serving.userstate import UserState

        self.settings = settings = ServingSettings(**(overrides or {}))
        self.layout = layout = layout or Layout.of()  # None: this replica's environment (GENSAR_STATE_DIR, ...)
        catalogue = Catalogue.of(load(settings.catalogue_dir()))
        self.genres = set(catalogue.all_genres())
        loader = Loader(settings, layout, catalogue)
        qdrant = QdrantSettings()
        shared = ItemVectorStore(layout.qdrant, qdrant) if settings.dense and qdrant.url else None  # a server: the identifiers' collection
        dense = DenseIndex(catalogue, layout.embeddings, loader.device, shared) if settings.dense else None
        self.engine = Engine(loader, catalogue, dense, settings.beam_size, settings.dense_k,
                             (settings.dense_weight, settings.dense_weight_without_history))
        self.engine.on_refusal = self._refused
        context = serve.get_replica_context()
        self.replica, self.pid = context.replica_id.unique_id, os.getpid()
        meters.REPLICA.labels(self.replica).set(1)
        self.users = UserState(settings.streams_url, settings.streams_timeout_s)
        for batched in (self._search_batch, self._recommend_batch):
            batched.set_max_batch_size(settings.max_batch_size)
            batched.set_batch_wait_timeout_s(settings.batch_wait_s)
        self.follow()  # the first versions load before the replica reports ready
        rank = context.rank
        self._stagger = rank.rank * settings.swap_stagger_s if rank is not None else 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._follow_loop, name="gensar-follow-registry", daemon=True).start()
        if settings.follow_items:
            from gensar.settings import Settings
            from serving.items import follow_items

            threading.Thread(target=follow_items, args=(kafka or Settings().kafka, catalogue, dense, self._stop),
                             name="gensar-follow-items", daemon=True).start()

    # --- following the registry ---------------------------------------------------------

    def follow(self, retry: bool | set = frozenset()) -> list[Swap]:
        """Apply the operators' pins and the registry's decisions now; `retry`: refused
        versions to try again (True: all)."""
        self.engine.pins = dict(read_control(self.layout.serving_control).pins)
        swaps = self.engine.refresh(retry)
        for swap in swaps:
            meters.SWAPS.labels(swap.task).inc()
            meters.SWAP_LOAD.labels(swap.task).observe(swap.load_seconds)
            log.info("swapped %s: %s -> %s (loaded in %.2fs)", swap.task, swap.old, swap.new, swap.load_seconds)
        if swaps:
            meters.MODEL_VERSION.clear()
            for task, bundle in self.engine.slots.items():
                meters.MODEL_VERSION.labels(task, bundle.version, bundle.idmap_version).set(1)
        return swaps

    @staticmethod
    def _refused(refusal: Refusal) -> None:
        meters.REFUSED_VERSIONS.labels(refusal.reason).inc()
        log.error("refused version %s for %s (%s): %s; the serving version stays", refusal.version, refusal.task,
                  refusal.reason, refusal.detail)

    def held_back(self) -> str | None:
        """Why tasks do not serve what they should, after the last refresh, if they do not."""
        held = self.engine.held_back
        if not held:
            return None
        slots = self.engine.slots
        return "; ".join(f"version {r.version} cannot serve {task} ({r.reason}: {r.detail}); "
                         f"{task} serves {slots[task].version if task in slots else 'nothing'}" for task, r in held.items())

    def _follow_loop(self) -> None:
        try:  # loading a version yields the CPU to requests (Linux nices threads one by one)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.settings.poll_s):
            try:
                self.engine.pins = dict(read_control(self.layout.serving_control).pins)
                if self._stagger and self.engine.due():
                    time.sleep(self._stagger)
                self.follow()
            except Exception:  # a bad version or an unreadable registry must not stop serving
                meters.REFRESH_ERRORS.inc()
                log.exception("following the registry failed; the serving versions stay")

    def __del__(self):
        self._stop.set()

    # --- the API ------------------------------------------------------------------------

    @api.post("/search", response_model=Answer, responses=errors(400, 413))
    async def search(self, body: SearchRequest) -> Answer:
        if len(body.query) > self.settings.max_query_chars:
            raise unprocessable("query", f"query longer than {self.settings.max_query_chars} characters", body.query)
        self._check_k(body.k)
        genre = body.filters.genre.lower() if body.filters and body.filters.genre else None
        if genre is not None and genre not in self.genres:
            raise unprocessable("filters.genre", f"unknown genre {body.filters.genre!r}; "
                                f"known: {', '.join(sorted(self.genres))}", body.filters.genre)
        self._check_history(body.history)
        if body.history is not None:  # the caller's own history: the user-state API is not asked
            history = request_history(body.history)
        else:
            state = await asyncio.to_thread(self.users.histories, body.user_id) if body.user_id else None
            history = state.events if state else ()
        return await self._search_batch(Query("search", body.k, history=history, query=body.query, genre=genre))

    @api.post("/recommend", response_model=Answer, responses=errors(400, 413))
    async def recommend(self, body: RecommendRequest) -> Answer:
        self._check_k(body.k)
        self._check_history(body.history)
        if body.history is not None:  # the caller's own history: the user-state API is not asked
            history = request_history(body.history)
            queries = queries_of(history)
        else:
            state = await asyncio.to_thread(self.users.histories, body.user_id)
            history, queries = state.events, state.queries
        return await self._recommend_batch(Query("rec", body.k, history=history, search_history=queries))

    def _check_k(self, k: int) -> None:
        if k > self.settings.max_k:
            raise unprocessable("k", f"k must be at most {self.settings.max_k}", k)

    def _check_history(self, history: list | None) -> None:
        if history is not None and len(history) > self.settings.max_history:
            raise unprocessable("history", f"history longer than {self.settings.max_history} items",
                                jsonable_encoder(history))

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

    @api.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "a task has no version yet"}})
    async def readyz(self):
        missing = sorted({"search", "rec"} - set(self.engine.slots))
        if missing:
            return JSONResponse({"ready": False, "detail": f"no version loaded yet for {', '.join(missing)}"},
                                status_code=503)
        return Ready(ready=True)

    @api.get("/metrics", response_class=PlainTextResponse)  # the spec says text/plain, as answered
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/models", response_model=Models)
    async def models(self) -> Models:
        pins = self.engine.pins
        return Models(device=self.engine.loader.device, base_model=self.engine.loader.base_name,
                      replica=self.replica, pid=self.pid,
                      tasks={task: TaskModel(version=b.version, idmap_version=b.idmap_version,
                                             pinned=bool(pins.get(task) or pins.get("joint")),
                                             load_seconds=b.load_seconds, loaded_at=b.loaded_at)
                             for task, b in self.engine.slots.items()},
                      swaps=[vars(s) for s in self.engine.swaps],
                      refused=[RefusedVersion(**vars(r)) for r in self.engine.refusals])

    # --- admin --------------------------------------------------------------------------

    # The body is not a parameter: FastAPI reads and validates a declared body before it runs
    # any dependency, so the token would be checked second.
    @api.post("/admin/pin", response_model=Models, openapi_extra=json_body(PinRequest),
              responses=errors(401, 403, 404, 409, 413) | {422: INVALID})
    async def pin(self, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Models:
        """Serve `version` for `task` whatever the registry says (every replica follows within
        a poll interval); version null hands the task back to the registry."""
        authorize(self.settings.admin_token, credentials)
        body = await body_as(request, PinRequest)
        if body.version is not None and body.version not in self.engine.loader.registry.store.keys():
            raise HTTPException(404, f"unknown version {body.version}")
        control = read_control(self.layout.serving_control)
        pins = {t: v for t, v in control.pins.items() if t != body.task}
        write_control(self.layout.serving_control, Control(pins=pins | ({body.task: body.version} if body.version else {})))
        try:
            await asyncio.to_thread(self.follow, {body.version} if body.version else frozenset())
            refusal = self.engine.refused(body.version) if body.version else None
            why = f"{refusal.reason}: {refusal.detail}" if refusal else None
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable registry
            why = str(exc) or type(exc).__name__
        if why is not None:  # the version cannot serve: take the pin back, keep serving
            write_control(self.layout.serving_control, control)
            self.engine.pins = dict(control.pins)
            raise HTTPException(409, f"version {body.version} cannot serve ({why}); the pin is taken back")
        return await self.models()

    @api.post("/admin/reload", response_model=Models, responses=errors(401, 403, 409))
    async def reload(self, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Models:
        """Re-read the registry and the pins now rather than at the next poll, trying refused
        versions again; 409 when what should serve cannot (the serving versions stay)."""
        authorize(self.settings.admin_token, credentials)
        try:
            await asyncio.to_thread(self.follow, True)
            why = self.held_back()
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable registry
            why = f"the registry could not be read ({str(exc) or type(exc).__name__}); the serving versions stay"
        if why is not None:
            raise HTTPException(409, why)
        return await self.models()


def build(args: dict | None = None, layout: Layout | None = None, kafka: KafkaSettings | None = None):
    """The application, with settings overrides (ServingSettings fields) as args; `layout`
    and `kafka` (the items topic's cluster) None: each replica's own, from its environment
    (as in a pod)."""
    settings = ServingSettings(**(args or {}))
    return GenSARServer.options(
        num_replicas=settings.replicas, max_ongoing_requests=4 * settings.max_batch_size,
        max_queued_requests=settings.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": settings.retry_after_s},
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
    ).bind(args or {}, layout, kafka)


app = build()
