"""The status page: a small FastAPI companion on loopback, run by the demo beside the Serve
app. One HTML page (no CDN: the page and its charts come from this server) that polls
/api/state: what serves and since when, the version history with gate decisions,
prequential HR@10 so far per system (live, frozen, each streaming baseline: a table, and
over time as PNG charts), the stream worker's consumer lag and dead letters; a search box and a per-user recommendation view that ask the live endpoint.
`/?q=...&user=...` runs both on load."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from demo.plots import prequential_charts
from demo.prequential import Record, by_system
from gensar.layout import Layout


def prometheus_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of every sample of each named metric in a Prometheus exposition."""
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for wanted in names:
            if name in (wanted, wanted + "_total"):
                sums[wanted] += float(line.rsplit(" ", 1)[1])
    return sums


def create_app(root: Path, layout: Layout, serve_url: str, streams_metrics_url: str) -> FastAPI:
    from learner.registry import LocalArtifactStore, Registry

    app = FastAPI(title="GenSAR Stream demo status")
    registry = Registry(LocalArtifactStore(layout.registry))
    client = httpx.Client(base_url=serve_url, timeout=30)

    def records() -> list[Record]:
        path = root / "demo" / "prequential.jsonl"
        return [Record(**json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/state")
    def state() -> dict:
        now = time.time()
        models = client.get("/models").json()
        serving = {task: {"version": m["version"], "idmap_version": m["idmap_version"], "age_s": now - m["loaded_at"]}
                   for task, m in models["tasks"].items()}
        history = [{"version": m.version, "task": m.task, "status": d.status, "reason": d.reason,
                    "gate": m.gate.outcome if m.gate else None, "samples": m.window.samples, "decided": d.timestamp}
                   for m, d in registry.versions()]
        try:
            streams = prometheus_sums(httpx.get(streams_metrics_url, timeout=2).text,
                                      ("gensar_stream_consumer_lag", "gensar_stream_dead_letters"))
        except httpx.HTTPError:
            streams = {}
        rows = records()
        return {"serving": serving, "history": history, "streams": streams, "predictions": len(rows),
                "systems": by_system(rows)}

    drawn: dict[str, object] = {"n": None, "charts": {}}  # the charts of the last record and decision counts (the page polls)
    drawing = threading.Lock()

    @app.get("/charts/{task}.png")
    def chart(task: str) -> Response:
        with drawing:
            rows, decided = records(), [(d.timestamp, d.status) for d in registry.decisions()]
            if drawn["n"] != (len(rows), len(decided)):
                drawn.update(n=(len(rows), len(decided)), charts=prequential_charts(rows, decided=decided))
        if task not in drawn["charts"]:
            raise HTTPException(404, f"no chart for task {task!r}: search or rec")
        return Response(drawn["charts"][task], media_type="image/png")

    @app.get("/api/search")
    def search(q: str) -> dict:
        return client.post("/search", json={"query": q, "k": 10}).json()

    @app.get("/api/recommend")
    def recommend(user: str) -> dict:
        return client.post("/recommend", json={"user_id": user, "k": 10}).json()

    return app


class StatusServer:
    """uvicorn in a daemon thread; `stop()` ends it."""

    def __init__(self, app: FastAPI, port: int):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="gensar-demo-status", daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> "StatusServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>GenSAR Stream demo</title>
<style>
body{font-family:sans-serif;margin:1.5em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
.charts{display:flex;gap:1em;flex-wrap:wrap}.box{display:inline-block;vertical-align:top;margin-right:2em}
input{padding:4px}ol{font-size:13px}
</style></head><body>
<h1>GenSAR Stream: live status</h1>
<div class="box"><h2>Serving</h2><table id="serving"><tr><th>task</th><th>version</th><th>identifier map</th><th>age</th></tr></table></div>
<div class="box"><h2>Streams</h2><table id="streams"></table></div>
<h2>Prequential HR@10: live vs frozen bootstrap copy and streaming baselines (<span id="predictions">0</span> predictions)</h2>
<table id="systems"><tr><th>task</th><th>system</th><th>n</th><th>HR@10</th><th>NDCG@10</th></tr></table>
<div class="charts"><img class="chart" id="chart-search" alt="search: prequential HR@10"><img class="chart" id="chart-rec" alt="rec: prequential HR@10"></div>
<h2>Versions and gate decisions</h2>
<table id="history"><tr><th>version</th><th>task</th><th>status</th><th>gate</th><th>samples</th><th>reason</th></tr></table>
<div class="box"><h2>Search</h2><form id="search-form"><input id="q" placeholder="a query, e.g. comedy"> <button>search</button></form>
<ol id="search-results"></ol><div id="search-version"></div></div>
<div class="box"><h2>Recommendations</h2><form id="rec-form"><input id="user" placeholder="user id"> <button>recommend</button></form>
<ol id="rec-results"></ol><div id="rec-version"></div></div>
<script>
function cell(row, text){const td=document.createElement('td');td.textContent=text;row.appendChild(td);}
function rows(id, header, items){const t=document.getElementById(id);while(t.rows.length>header)t.deleteRow(header);
  for(const values of items){const r=t.insertRow();values.forEach(v=>cell(r,v));}}
async function refresh(){
  const s=await (await fetch('/api/state')).json();
  rows('serving',1,Object.entries(s.serving).map(([t,m])=>[t,m.version,m.idmap_version,Math.round(m.age_s)+' s']));
  rows('streams',0,[['consumer lag',s.streams.gensar_stream_consumer_lag ?? 'n/a'],['dead letters',s.streams.gensar_stream_dead_letters ?? 'n/a']]);
  rows('history',1,s.history.slice().reverse().map(h=>[h.version,h.task,h.status,h.gate ?? '-',h.samples,h.reason]));
  rows('systems',1,Object.entries(s.systems).flatMap(([t,sys])=>Object.entries(sys).map(([n,m])=>[t,n,m.n,m['HR@10'].toFixed(4),m['NDCG@10'].toFixed(4)])));
  document.getElementById('predictions').textContent=s.predictions;
  for(const task of ['search','rec']){const img=document.getElementById('chart-'+task);
    if(img.dataset.n!=String(s.predictions)){img.dataset.n=s.predictions;img.src='/charts/'+task+'.png?n='+s.predictions;}}
}
for(const img of document.querySelectorAll('img.chart'))img.onload=()=>{img.dataset.width=img.naturalWidth;};
async function show(url, list, label){
  const a=await (await fetch(url)).json();const ol=document.getElementById(list);ol.innerHTML='';
  for(const it of a.items){const li=document.createElement('li');li.className='result';li.textContent=it.title+' ('+it.id+')';ol.appendChild(li);}
  document.getElementById(label).textContent='answered by '+a.model_version+' ('+a.source+')';
}
document.getElementById('search-form').onsubmit=e=>{e.preventDefault();show('/api/search?q='+encodeURIComponent(document.getElementById('q').value),'search-results','search-version');};
document.getElementById('rec-form').onsubmit=e=>{e.preventDefault();show('/api/recommend?user='+encodeURIComponent(document.getElementById('user').value),'rec-results','rec-version');};
const params=new URLSearchParams(location.search);
if(params.get('q')){document.getElementById('q').value=params.get('q');show('/api/search?q='+encodeURIComponent(params.get('q')),'search-results','search-version');}
if(params.get('user')){document.getElementById('user').value=params.get('user');show('/api/recommend?user='+encodeURIComponent(params.get('user')),'rec-results','rec-version');}
refresh();setInterval(refresh,3000);
</script></body></html>
"""
