"""The Ray Serve application on loopback: one Serve app for the module (Ray start-up is slow
on two cores). Both endpoints answer with valid items and versions; a version promoted while
requests stream in swaps with no failed and no mixed-version answer; the user's current
history is read per request; admin checks the token before anything else; bad bodies are 422,
oversized ones 413; a slow client holds up no one; a fuzz of every route, method, header and
content type over the published OpenAPI spec yields no 5xx, a message with every error and
schema-true answers."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

import httpx
import pytest
import requests
import schemathesis
from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials
from hypothesis import HealthCheck, given, seed, settings as hsettings, strategies as st
from prometheus_client import REGISTRY
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from gensar.events import HistoryEntry
from infra.ports import free_port
from learner.registry import LocalArtifactStore, Registry
from serving.schemas import Answer
from serving.settings import ServingSettings
from streams.views import UserHistory
from bench.serving_load import UserStandIn
from test_serving_engine import NEW_ITEM, build_world

TOKEN = "test-admin-token"


class UserTables(UserStandIn):
    """The stream workers' read contract (bench.serving_load.UserStandIn), served from a dict
    the test updates as the workers update their table."""

    def __init__(self):
        super().__init__({})

    def click(self, user_id: str, item_id: str) -> None:
        h = UserHistory.model_validate(self.histories.get(user_id) or dict(
            user_id=user_id, history=[], search_history=[], events=[], interactions=0, searches=0))
        clicked = h.model_copy(update=dict(history=h.history + [item_id], interactions=h.interactions + 1,
                                           events=h.events + [HistoryEntry(item_id=item_id, timestamp=time.time())]))
        self.histories[user_id] = clicked.model_dump(mode="json")

    def searched(self, user_id: str, query: str, item_id: str) -> None:
        h = UserHistory.model_validate(self.histories[user_id])
        entry = HistoryEntry(item_id=item_id, query=query, timestamp=time.time())
        self.histories[user_id] = h.model_copy(update=dict(search_history=h.search_history + [query],
                                                           searches=h.searches + 1,
                                                           events=h.events + [entry])).model_dump(mode="json")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    world = build_world(root)
    tables = UserTables()
    threading.Thread(target=tables.serve_forever, daemon=True).start()
    env = pytest.MonkeyPatch()  # Ray's workers inherit this process' environment at ray.init
    for key, value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}.items():
        env.setenv(key, value)
    import ray
    from ray import serve

    from infra.ray_local import ensure_ray
    from serving.app import build

    ensure_ray(num_cpus=2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    overrides = {"catalogue": str(world.settings.catalogue_dir()), "poll_s": 0.5, "beam_size": 10,
                 "max_batch_size": 8, "admin_token": TOKEN, "follow_items": False, "streams_url": f"http://127.0.0.1:{tables.server_address[1]}"}
    serve.run(build(overrides, world.layout), name="gensar", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    yield client, world, tables
    client.close()
    serve.shutdown()
    ray.shutdown()
    env.undo()
    tables.shutdown()


def admin(client, path: str, body: dict | None = None, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(path, json=body, headers=headers)


def test_probes_models_and_openapi(served):
    client, *_ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    models = client.get("/models").json()
    assert {t: m["version"] for t, m in models["tasks"].items()} == {"search": "v1", "rec": "v1"}
    assert models["base_model"] == "tiny" and models["device"] == "cpu"
    spec = client.get("/openapi.json").json()
    assert {"/search", "/recommend", "/models", "/admin/pin", "/admin/reload"} <= set(spec["paths"])


def test_search_and_recommend_answer_valid_items_and_versions(served):
    client, *_ = served
    rec = client.post("/recommend", json={"user_id": "someone", "k": 5, "history": ["3", "4", "5"]})
    search = client.post("/search", json={"query": "alpha", "k": 6, "filters": {"genre": "Comedy"}})
    for response, k in ((rec, 5), (search, 6)):
        assert response.status_code == 200, response.text
        answer = Answer.model_validate(response.json())
        assert answer.model_version == "v1" and answer.idmap_version == "tiny1" and len(answer.items) == k
        assert all(i.title and (i.id.isdigit()) for i in answer.items)
    assert {i["id"] for i in search.json()["items"]} <= {str(i) for i in range(0, 128, 4)}  # comedy: every 4th item
    assert NEW_ITEM in [i["id"] for i in client.post("/search", json={"query": "zulu quebec newcomer", "k": 10}).json()["items"]]


def test_a_new_click_shows_up_in_the_next_answer(served):
    client, _, tables = served
    first = client.post("/recommend", json={"user_id": "u-live", "k": 5}).json()
    assert first["source"] == "popularity"  # unknown users are not an error
    tables.click("u-live", "17")
    tables.click("u-live", "18")
    after = client.post("/recommend", json={"user_id": "u-live", "k": 5}).json()
    assert after["source"] == "model"
    explicit = client.post("/recommend", json={"user_id": "x", "k": 5, "history": ["17", "18"]}).json()
    assert after["items"] == explicit["items"]  # the stream state is exactly what the model saw
    reads = state_reads(client)
    assert client.post("/search", json={"query": "kilo", "user_id": "u-live", "k": 5}).status_code == 200
    assert client.post("/search", json={"query": "kilo", "k": 5}).status_code == 200
    assert state_reads(client) == reads + 1  # personalised search reads the state; anonymous does not


def test_an_explicit_history_with_searches_answers_as_the_same_stream_state(served):
    client, _, tables = served
    tables.click("u-both", "17")
    tables.searched("u-both", "kilo tango", "21")
    tables.click("u-both", "18")
    explicit_history = ["17", {"item_id": "21", "query": "kilo tango"}, "18"]
    for path, body in (("/search", {"query": "alpha"}), ("/recommend", {})):
        from_state = client.post(path, json={**body, "user_id": "u-both", "k": 5}).json()
        reads = state_reads(client)
        explicit = client.post(path, json={**body, "user_id": "x", "k": 5, "history": explicit_history}).json()
        assert state_reads(client) == reads  # the caller's history: the user-state API is not asked
        assert explicit["items"] == from_state["items"] and explicit["source"] == from_state["source"], path
        interactions_only = client.post(path, json={**body, "user_id": "x", "k": 5, "history": ["17", "18"]}).json()
        assert [i["score"] for i in interactions_only["items"]] != [i["score"] for i in explicit["items"]], path
    for bad in ([{"item_id": "21"}], [{"item_id": "21", "query": ""}], [{"item_id": "21", "query": "q", "x": 1}], [7]):
        response = client.post("/search", json={"query": "alpha", "history": bad})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["body", "history"], bad


def state_reads(client) -> float:
    line = next(l for l in client.get("/metrics").text.splitlines() if l.startswith("gensar_serve_user_state_seconds_count"))
    return float(line.split()[-1])


def test_bad_bodies_are_422_with_a_message(served):
    client, *_ = served
    for path, body in (("/search", {"query": "", "k": 5}), ("/search", {"query": "a", "k": 101}),
                       ("/search", {"query": "a" * 513}), ("/search", {"query": "a", "filters": {"genre": "opera"}}),
                       ("/search", {"query": "a", "surprise": 1}), ("/recommend", {"k": 5}),
                       ("/recommend", {"user_id": "u", "history": [str(i) for i in range(201)]}),
                       ("/search", {"query": "a", "history": [{"item_id": "1", "query": "q"}] * 201}),
                       ("/recommend", {"user_id": "u", "k": 0})):
        response = client.post(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        # The published HTTPValidationError, also for the app's own checks (the unknown genre).
        assert all(e["msg"] and e["loc"][0] == "body" for e in response.json()["detail"]), response.text
    assert client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    for headers in ({"Content-Type": "text/plain"}, {}):  # not UTF-8: FastAPI's own 422 handler answered 500
        response = client.post("/search", content=b"\xff\xfe{", headers=headers)
        assert response.status_code == 422 and response.json()["detail"], response.text


# --- admin: the token before anything else ---------------------------------------------------


def bearer(token: str) -> HTTPAuthorizationCredentials:
    return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("gensar_serve_admin_auth_failures_total", {"reason": reason}) or 0.0


def test_a_blank_admin_token_is_no_token():
    for blank in ("", "  "):
        assert ServingSettings(admin_token=blank).admin_token is None
    assert ServingSettings(admin_token="s3cret").admin_token.get_secret_value() == "s3cret"


def test_with_no_token_configured_admin_is_refused_and_counted():
    from serving.app import authorize

    for configured in (None, ServingSettings(admin_token="").admin_token):
        before = refusals("disabled")
        with pytest.raises(HTTPException) as refused:
            authorize(configured, bearer(TOKEN))
        assert refused.value.status_code == 403 and "no admin token is configured" in refused.value.detail
        assert refusals("disabled") == before + 1


def test_refusals_are_logged_without_the_token(caplog):
    from serving.app import authorize

    with caplog.at_level(logging.WARNING, logger="gensar.serving"):
        for presented in (None, bearer("guess-9f8e7d")):
            with pytest.raises(HTTPException):
                authorize(SecretStr("configured-1a2b3c"), presented)
    assert len(caplog.records) == 2
    assert "configured-1a2b3c" not in caplog.text and "guess-9f8e7d" not in caplog.text


def served_refusals(client, reason: str) -> float:
    prefix = f'gensar_serve_admin_auth_failures_total{{reason="{reason}"}}'
    return next((float(l.split()[-1]) for l in client.get("/metrics").text.splitlines() if l.startswith(prefix)), 0.0)


def test_admin_needs_the_token(served):
    client, *_ = served
    before = {reason: served_refusals(client, reason) for reason in ("missing", "wrong")}
    missing = admin(client, "/admin/reload", token=None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer" and missing.json()["detail"]
    assert client.post("/admin/reload", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    for wrong in ("guess", TOKEN[:-1], TOKEN + "x"):
        response = admin(client, "/admin/reload", token=wrong)
        assert response.status_code == 403 and response.json()["detail"] == "wrong admin token"
    assert served_refusals(client, "missing") == before["missing"] + 2
    assert served_refusals(client, "wrong") == before["wrong"] + 3
    assert admin(client, "/admin/pin", {"task": "rec", "version": "v404"}).status_code == 404
    assert admin(client, "/admin/reload").status_code == 200


def test_admin_checks_the_token_before_it_reads_the_body(served):
    client, *_ = served
    bad = [dict(json={"task": "everything", "surprise": 1}), dict(json=[1, 2]),
           dict(content=b"\x00{garbage", headers={"Content-Type": "application/json"}),
           dict(content=b"\t\xc3\x8c\xff", headers={"Content-Type": "application/json"}),  # not UTF-8: was a 500
           dict(content=b"task=rec", headers={"Content-Type": "application/x-www-form-urlencoded"}), dict()]
    for kwargs in bad:
        unauthenticated = client.post("/admin/pin", **kwargs)
        assert unauthenticated.status_code == 401, (kwargs, unauthenticated.text)  # not a 422 that tells the schema
        headers = kwargs.get("headers", {})
        wrong = client.post("/admin/pin", **(kwargs | {"headers": headers | {"Authorization": "Bearer guess"}}))
        assert wrong.status_code == 403, (kwargs, wrong.text)
        right = client.post("/admin/pin", **(kwargs | {"headers": headers | {"Authorization": f"Bearer {TOKEN}"}}))
        assert right.status_code == 422 and right.json()["detail"][0]["loc"][0] == "body", (kwargs, right.text)
    for version in ("..", ".", "v1/../v2", ""):  # a version name becomes a path in the registry
        assert admin(client, "/admin/pin", {"version": version}).status_code == 422, version


# --- limits and slow clients --------------------------------------------------------------------


def test_oversized_bodies_are_413_with_a_message(served):
    client, *_ = served
    big = json.dumps({"query": "a" * (2 << 20)}).encode()  # 2 MB, past the default 512 KiB
    for method, path in (("POST", "/search"), ("POST", "/recommend"), ("POST", "/admin/pin"), ("GET", "/healthz")):
        response = client.request(method, path, content=big, headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "request body over" in response.json()["detail"], (path, response.text)
    # No Content-Length (chunked): counted as it arrives.
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    chunked = client.post("/search", content=chunks, headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["detail"], chunked.text
    assert client.post("/search", json={"query": "alpha", "k": 3}).status_code == 200


def test_a_slow_client_holds_up_no_one(served):
    client, *_ = served
    body = json.dumps({"query": "alpha", "k": 3}).encode()
    with socket.create_connection((client.base_url.host, client.base_url.port), timeout=10) as slow:
        slow.sendall(b"POST /search HTTP/1.1\r\nHost: gensar\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:4]))
        started = time.perf_counter()
        others = [client.post("/search", json={"query": "kilo", "k": 3}).status_code, client.get("/healthz").status_code]
        waited = time.perf_counter() - started
        for i in range(4, len(body)):  # the rest, a byte every 20 ms
            slow.sendall(body[i:i + 1])
            time.sleep(0.02)
        reply = slow.recv(65536)
    assert others == [200, 200] and waited < 2.0, (others, waited)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def answer_of(client, body) -> tuple[str, dict[str, float]]:
    a = client.post("/recommend", json=body).raise_for_status().json()
    return a["model_version"], {i["id"]: i["score"] for i in a["items"]}


def test_a_swap_under_a_steady_stream_fails_nothing_and_mixes_nothing(served):
    client, world, _ = served
    body = {"user_id": "stream", "k": 5, "history": ["40", "41", "42"]}
    reference = {}
    for version in ("v2", None):  # v2 pinned, then the registry's choice again (v1)
        models = admin(client, "/admin/pin", {"task": "joint", "version": version}).raise_for_status().json()
        version, items = answer_of(client, body)
        reference[version] = items
    assert set(reference) == {"v1", "v2"} and reference["v1"] != reference["v2"]
    assert models["tasks"]["rec"]["version"] == "v1"
    results, stop = [], threading.Event()

    def stream():
        with httpx.Client(base_url=client.base_url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/recommend", json=body)
                    a = r.json() if r.status_code == 200 else None
                    results.append((r.status_code, a and a["model_version"], a and {i["id"]: i["score"] for i in a["items"]}))
                except httpx.HTTPError as exc:
                    results.append((repr(exc), None, None))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    Registry(LocalArtifactStore(world.layout.registry)).promote("v2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(v == "v2" for _, v, _ in results[-5:]):
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:3]
    versions = [v for _, v, _ in results]
    assert versions.count("v1") > 0 and versions.count("v2") > 0
    for _, version, items in results:
        assert items.keys() == reference[version].keys(), (version, items)
        assert all(abs(items[i] - reference[version][i]) < 1e-3 for i in items), (version, items)
    swaps = client.get("/models").json()["swaps"]
    assert any(s["new"] == "v2" and s["load_seconds"] > 0 for s in swaps)


def test_metrics_are_exposed(served):
    client, *_ = served
    text = client.get("/metrics").text
    for name in ("gensar_serve_requests_total", "gensar_serve_latency_seconds_bucket", "gensar_serve_model_version_info",
                 "gensar_serve_swaps_total", "gensar_serve_batch_size_bucket"):
        assert name in text, name
    assert 'endpoint="/recommend",status="200"' in text


def test_an_unreachable_user_state_is_answered_as_no_history(served):
    client, _, tables = served
    tables.click("u-gone", "30")
    assert client.post("/recommend", json={"user_id": "u-gone", "k": 3}).json()["source"] == "model"
    tables.shutdown()
    tables.server_close()
    answer = client.post("/recommend", json={"user_id": "u-gone", "k": 3})
    assert answer.status_code == 200 and answer.json()["source"] == "popularity"
    errors = [line for line in client.get("/metrics").text.splitlines() if line.startswith("gensar_serve_user_state_errors_total")]
    assert errors and float(errors[0].split()[-1]) >= 1


# --- fuzzing every route as the published OpenAPI spec describes it ------------------------------

# Random in CI. The seed is printed (pytest shows it with a failure); FUZZ_SEED=<seed>
# replays that run.
FUZZ_SEED = int(os.environ.get("FUZZ_SEED") or secrets.randbelow(2**32))
# Per kind of case, 1,500 in all: ~25 s on 2 cores (8,000 took 140 s), decoding included.
FUZZ_EXAMPLES = {"positive": 600, "negative": 450, "raw": 450}

# Any value JSON can carry (no NaN, no infinity).
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)
# Printable, and no outer spaces: what an HTTP client lets through.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
AUTHORIZATION = st.one_of(
    st.none(), st.just(f"Bearer {TOKEN}"), HEADER_TEXT, HEADER_TEXT.map("Bearer {}".format),
    st.sampled_from(["Bearer", "Bearer ", f"bearer {TOKEN}", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                     f"Bearer  {TOKEN}  ", f"Token {TOKEN}"]))
CONTENT_TYPE = st.one_of(st.none(), HEADER_TEXT, st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/problem+json", "text/plain", "text/html",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/octet-stream", "*/*"]))
BODY = st.one_of(st.just(b""), st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 20_000).map(lambda depth: b"[" * depth), st.text(max_size=60).map(str.encode))
METHOD = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])


def test_fuzzing_every_route_as_the_spec_describes_it(served):
    client, *_ = served
    print(f"API fuzz seed {FUZZ_SEED}: replay with FUZZ_SEED={FUZZ_SEED}")
    spec = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == set(spec["paths"]) >= {"/search", "/recommend", "/admin/pin", "/admin/reload"}
    with_body = [op for op in operations if op.body]
    paths = st.sampled_from(sorted(spec["paths"]) + ["/openapi.json", "/docs", "/", "/admin", "/admin/", "/admin/pin/",
                                                     "/search/1", "/nope"])
    base, session, tally = str(client.base_url), requests.Session(), {}

    def judge(method: str, path: str, response) -> None:
        """No 5xx; every error says what is wrong; every answer is what the spec promises."""
        tally[response.status_code] = tally.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path, response.status_code, response.content[:300])
        if 300 <= response.status_code < 400:
            assert response.headers.get("location"), (method, path, response.status_code)
        elif response.status_code >= 400 and method != "HEAD":
            assert response.json()["detail"], (method, path, response.status_code, response.content[:300])
        elif response.status_code < 300 and path in spec["paths"] and method.lower() in spec["paths"][path]:
            schema[path][method].validate_response(response)

    def send(case, authorization) -> None:
        headers = {"Authorization": authorization} if authorization is not None else {}
        response = case.call(base_url=base, session=session, headers=headers, allow_redirects=False, timeout=30)
        # Every status documented, and every body (errors' too) and its content type as documented.
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance, response_schema_conformance,
                                                 content_type_conformance])
        judge(case.method, case.path, response)

    # database=None: a run is what its seed says, nothing replayed from an earlier one.
    fuzz = hsettings(deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @hsettings(fuzz, max_examples=FUZZ_EXAMPLES["positive"])
    @seed(FUZZ_SEED)
    @given(st.one_of([op.as_strategy(GenerationMode.POSITIVE) for op in operations]), AUTHORIZATION)
    def positive(case, authorization):
        send(case, authorization)

    @hsettings(fuzz, max_examples=FUZZ_EXAMPLES["negative"])
    @seed(FUZZ_SEED)
    @given(st.one_of([op.as_strategy(GenerationMode.NEGATIVE) for op in with_body]), AUTHORIZATION)
    def negative(case, authorization):
        send(case, authorization)

    @hsettings(fuzz, max_examples=FUZZ_EXAMPLES["raw"])
    @seed(FUZZ_SEED)
    @given(METHOD, paths, AUTHORIZATION, CONTENT_TYPE, BODY)
    def raw(method, path, authorization, content_type, body):
        headers = {name: value for name, value in (("Authorization", authorization), ("Content-Type", content_type))
                   if value is not None}
        response = session.request(method, base + path, headers=headers, data=body, allow_redirects=False, timeout=30)
        judge(method, path, response)

    started = time.perf_counter()
    try:
        positive()
        negative()
        raw()
    finally:
        print(f"API fuzz: {sum(tally.values())} requests in {time.perf_counter() - started:.1f}s, "
              f"by status {sorted(tally.items())}")
        for task in ("joint", "search", "rec"):  # the fuzz may have pinned something: the registry decides again
            admin(client, "/admin/pin", {"task": task, "version": None}).raise_for_status()
    assert sum(tally.values()) >= sum(FUZZ_EXAMPLES.values())
