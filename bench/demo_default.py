"""The default demo's prequential results, per seed, as committed benchmark results.

    python -m bench.demo_default --seed 0 --state-dir /tmp/demo-s0   # runs `gensar demo` there
                                                                    # unless it has a report

Writes bench/results/demo_default_seed<N>.json and .md (and the report's two charts as
demo_default_seed<N>_<task>.png): per task n, HR@10 and NDCG@10 of
`live`, `frozen` and every streaming baseline, and live minus each other system with its
paired 95% bootstrap interval (all from the demo's report/summary.json); the new-item
table; the versions the gate decided; freshness; wall time and the machine. The state
directory must be the demo's default profile with that seed (its settings.json says).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.output import RESULTS, write_results
from demo.settings import FULL, DemoSettings
from gensar.artifacts import write_file
from gensar.machine import machine


def results(state_dir: Path, seed: int) -> dict:
    demo = state_dir / "demo"
    made_with = DemoSettings.model_validate_json((demo / "settings.json").read_text())
    if changed := made_with.changes_to(FULL.model_copy(update={"seed": seed})):
        listed = ", ".join(f"{k} {ran!r} (default {default!r})" for k, (ran, default) in changed.items())
        raise SystemExit(f"{demo / 'settings.json'} is not the default profile with seed {seed}: {listed}")
    summary = json.loads((demo / "report" / "summary.json").read_text())
    versions = summary["versions"]
    return {"seed": seed, "date": summary["date"], "wall_seconds": summary["wall_seconds"], "machine": machine(),
            "systems": summary["systems"], "versus_live": summary["versus_live"], "new_items": summary["new_items"],
            "versions_decided": len(versions), "versions_promoted": sum(v["status"] == "promoted" for v in versions),
            "gate_outcomes": [v.get("gate_outcome") for v in versions],
            "freshness_p50_s": summary["freshness_p50_s"], "popularity_window": summary["baselines"]}


def markdown(r: dict) -> list[str]:
    m = r["machine"]
    where = f"{m['cores']}-core {m['cpu']}, {'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}"
    lines = [f"# Default demo, seed {r['seed']} ({r['date']}, {r['wall_seconds'] / 60:.1f} min, {where})", "",
             "| task | system | n | HR@10 | NDCG@10 | live - system HR@10 [95% CI] | live - system NDCG@10 [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for task, systems in r["systems"].items():
        for name, m in systems.items():
            d = r["versus_live"][task].get(name)
            vs = ("- | -" if d is None else
                  f"{d['HR@10']:+.4f} [{d['HR@10 ci95'][0]:+.4f}, {d['HR@10 ci95'][1]:+.4f}] | "
                  f"{d['NDCG@10']:+.4f} [{d['NDCG@10 ci95'][0]:+.4f}, {d['NDCG@10 ci95'][1]:+.4f}]")
            lines.append(f"| {task} | {name} | {m['n']} | {m['HR@10']:.4f} | {m['NDCG@10']:.4f} | {vs} |")
    lines += ["", f"{r['versions_decided']} versions decided, {r['versions_promoted']} promoted; "
                  f"freshness p50 {r['freshness_p50_s']:.1f} s."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args()
    if not (args.state_dir / "demo" / "report" / "summary.json").exists():
        subprocess.run([sys.executable, "-m", "cli.main", "demo", "--state-dir", str(args.state_dir),
                        "--seed", str(args.seed)], check=True)
    r = results(args.state_dir, args.seed)
    write_results(f"demo_default_seed{args.seed}", r, markdown(r))
    for task in ("search", "rec"):  # the report's prequential charts, for the README
        write_file(RESULTS / f"demo_default_seed{args.seed}_{task}.png",
                   (args.state_dir / "demo" / "report" / f"{task}.png").read_bytes())
    print("\n".join(markdown(r)))


if __name__ == "__main__":
    main()
