"""``GET /api/v1/duplicates`` through ``clipindex serve`` on duplicates.py's 1M store, beside the CLI's scan.

    python benchmarks/duplicates.py --points 1000000   # builds the store (and measures the CLI's scan)
    python benchmarks/serve_duplicates.py              # this: serve's scan, status latency idle and during it

It starts ``clipindex serve`` on the store (the benchmark model for the text tower), times ten ``/api/v1/status``
calls idle, then one ``/api/v1/duplicates`` while a client calls ``/api/v1/status`` every 0.5 s, and times
``clipindex duplicates --json`` on the same store right after (serve stopped). Peak RSS is each process's VmHWM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import cpu_description, write_section  # noqa: E402

DATA = WORK / "duplicates-1000000" / "data"
MODEL = WORK / "models" / "clip-vit-base-patch32"
BEGIN, END = "<!-- serve-duplicates:begin -->", "<!-- serve-duplicates:end -->"


def peak_mb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) // 1024


def run() -> dict[str, Any]:
    env = {**os.environ, "CLIPINDEX_DATA_DIR": str(DATA), "CLIPINDEX_CACHE_DIR": str(WORK / "serve-dup-cache")}
    cmd = [sys.executable, "-m", "clipindex", "serve", "--port", "0", "--model-dir", str(MODEL)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:
        found = re.search(r"at (http://\S+/)", line)
        if found:
            url = found.group(1)
            break
    out = proc.stdout
    threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
    with httpx.Client(base_url=url, timeout=1200) as http:
        idle = []
        for _ in range(10):
            started = time.perf_counter()
            http.get("/api/v1/status").raise_for_status()
            idle.append(time.perf_counter() - started)
        during: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=url, timeout=1200) as other:
                while not stop.is_set():
                    started = time.perf_counter()
                    other.get("/api/v1/status").raise_for_status()
                    during.append(time.perf_counter() - started)
                    stop.wait(0.5)

        prober = threading.Thread(target=probe)
        prober.start()
        started = time.perf_counter()
        answer = http.get("/api/v1/duplicates")
        serve_s = time.perf_counter() - started
        stop.set()
        prober.join()
    answer.raise_for_status()
    body = answer.json()
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    server_mb, store_mb = peak_mb(proc.pid), max((peak_mb(int(c)) for c in children), default=0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    started = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "clipindex", "duplicates", "--json"], env=env, capture_output=True, text=True, check=True
    )
    cli_s = time.perf_counter() - started
    same = [[m["path"] for m in g["members"]] for g in json.loads(cli.stdout)["groups"]] == [
        [f["path"] for f in g["files"]] for g in body["groups"]
    ]
    idle.sort()
    during.sort()
    return {
        "points": body["scanned"],
        "groups": len(body["groups"]),
        "same_groups": same,
        "serve_s": serve_s,
        "cli_s": cli_s,
        "status_idle_p50_ms": idle[len(idle) // 2] * 1000,
        "status_during_p50_ms": during[len(during) // 2] * 1000,
        "status_during_max_ms": during[-1] * 1000,
        "status_calls_during": len(during),
        "server_peak_mb": server_mb,
        "store_process_peak_mb": store_mb,
        "cpu": cpu_description(),
        "load_average": os.getloadavg()[0],
    }


def markdown(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            BEGIN,
            "## Duplicates through `clipindex serve` (benchmarks/serve_duplicates.py)",
            "",
            f"duplicates.py's {r['points']:,}-point store, one run; CPU: {r['cpu']}; load average after: "
            f"{r['load_average']:.1f}.",
            "",
            "| measure | result |",
            "| --- | --- |",
            f"| `GET /api/v1/duplicates` ÷ `clipindex duplicates` (wall) | {r['serve_s'] / r['cli_s']:.2f} "
            f"({r['serve_s']:.0f} s ÷ {r['cli_s']:.0f} s) |",
            f"| same groups as the CLI | {'yes' if r['same_groups'] else 'NO'} ({r['groups']:,} groups) |",
            "| `/api/v1/status` during the scan ÷ idle, p50 | "
            f"{r['status_during_p50_ms'] / r['status_idle_p50_ms']:.1f} ({r['status_during_p50_ms']:.0f} ms ÷ "
            f"{r['status_idle_p50_ms']:.0f} ms; max {r['status_during_max_ms']:.0f} ms, "
            f"{r['status_calls_during']} calls, none failed) |",
            f"| peak RSS: server, store process | {r['server_peak_mb']:,} MB, {r['store_process_peak_mb']:,} MB |",
            "",
            "The scan reads the store a page per call to the store process (pickled over its pipe): that costs the "
            "extra time, and it is what lets other requests in between pages.",
            END,
        ]
    )


def main() -> int:
    r = run()
    print(json.dumps(r, indent=2))
    write_section(ROOT / "benchmarks" / "results.md", markdown(r), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
