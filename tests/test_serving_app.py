"""The Ray Serve application on loopback: one Serve app for the module (Ray start-up is slow
on two cores). Both endpoints answer with valid items and versions; a version promoted while
requests stream in swaps with no failed and no mixed-version answer; the user's current
history is read per request; admin needs the token; bad bodies are 422; a property-based run
over the published OpenAPI spec yields no 5xx."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from gensar.events import HistoryEntry
from infra.ports import free_port
from learner.registry import LocalArtifactStore, Registry
from serving.schemas import Answer
from streams.views import UserHistory
from test_serving_engine import NEW_ITEM, build_world

TOKEN = "test-admin-token"


class UserTables(ThreadingHTTPServer):
    """The stream workers' read contract (streams.views: GET /users/{id}/history, 404 for a
    user never seen), served from a dict the test updates as the workers update their table."""

    def __init__(self):
        self.histories: dict[str, dict] = {}
        tables = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = self.path.strip("/").split("/")
                found = tables.histories.get(parts[1]) if len(parts) == 3 and parts[0] == "users" else None
                body = json.dumps(found or {"error": "not found"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def click(self, user_id: str, item_id: str) -> None:
        h = UserHistory.model_validate(self.histories.get(user_id) or dict(
            user_id=user_id, history=[], search_history=[], events=[], interactions=0, searches=0))
        clicked = h.model_copy(update=dict(history=h.history + [item_id], interactions=h.interactions + 1,
                                           events=h.events + [HistoryEntry(item_id=item_id, timestamp=time.time())]))
        self.histories[user_id] = clicked.model_dump(mode="json")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    world = build_world(root)
    tables = UserTables()
    threading.Thread(target=tables.serve_forever, daemon=True).start()
    env = pytest.MonkeyPatch()  # Ray's workers inherit this process' environment at ray.init
    for key, value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "GENSAR_CACHE_DIR": str(root / "cache")}.items():
        env.setenv(key, value)
    import ray
    from ray import serve

    from infra.ray_local import ensure_ray
    from serving.app import build

    ensure_ray(num_cpus=2)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    overrides = {"state_dir": str(world.root()), "catalogue": str(world.catalogue_dir()), "poll_s": 0.5, "beam_size": 10,
                 "max_batch_size": 8, "admin_token": TOKEN, "follow_items": False, "streams_url": f"http://127.0.0.1:{tables.server_address[1]}"}
    serve.run(build(overrides), name="gensar", route_prefix="/")
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


def state_reads(client) -> float:
    line = next(l for l in client.get("/metrics").text.splitlines() if l.startswith("gensar_serve_user_state_seconds_count"))
    return float(line.split()[-1])


def test_bad_bodies_are_422_with_a_message(served):
    client, *_ = served
    for path, body in (("/search", {"query": "", "k": 5}), ("/search", {"query": "a", "k": 101}),
                       ("/search", {"query": "a" * 513}), ("/search", {"query": "a", "filters": {"genre": "opera"}}),
                       ("/search", {"query": "a", "surprise": 1}), ("/recommend", {"k": 5}),
                       ("/recommend", {"user_id": "u", "history": [str(i) for i in range(201)]}),
                       ("/recommend", {"user_id": "u", "k": 0})):
        response = client.post(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["detail"], response.text
    assert client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422


def test_admin_needs_the_token(served):
    client, *_ = served
    assert admin(client, "/admin/reload", token=None).status_code == 401
    assert admin(client, "/admin/reload", token="guess").status_code == 403
    assert admin(client, "/admin/pin", {"task": "rec", "version": "v404"}).status_code == 404
    assert admin(client, "/admin/reload").status_code == 200


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
    Registry(LocalArtifactStore(world.registry_dir())).promote("v2")
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


# --- property-based fuzzing over the published spec ------------------------------------------


def from_schema(schema: dict, components: dict) -> st.SearchStrategy:
    """Values for a JSON schema (the OpenAPI subset FastAPI emits), stretched past its limits
    so both valid and invalid bodies are drawn."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].split("/")[-1]], components)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = {k: from_schema(v, components) for k, v in props.items() if k in schema.get("required", [])}
        optional = {k: from_schema(v, components) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "string":
        return st.text(min_size=max(0, schema.get("minLength", 0) - 1), max_size=schema.get("maxLength", 40) + 2)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -5) - 2, max_value=schema.get("maximum", 200) + 2)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), components), max_size=min(schema.get("maxItems", 10) + 1, 12))
    if kind == "null":
        return st.none()
    return JSON


# Any value JSON can carry (no NaN, no infinity).
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)


def test_fuzzing_the_openapi_spec_yields_no_5xx(served):
    client, *_ = served
    spec = client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    bodies = []
    for path in ("/search", "/recommend"):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        bodies.append(st.tuples(st.just(path), st.one_of(from_schema(schema, components), JSON)))

    @hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.one_of(bodies))
    def check(case):
        path, body = case
        response = client.post(path, json=body)
        assert response.status_code < 500, (path, body, response.text)
        if response.status_code == 200:
            answer = Answer.model_validate(response.json())
            assert len(answer.items) <= body["k"] if "k" in body else len(answer.items) <= 10
        else:
            assert response.status_code == 422, (path, body, response.text)

    check()
