"""The library against the CLI (issue 14): ``Embedder.encode_images`` over a folder's paths vs ``clipindex ingest``.

Both run as fresh processes timed from spawn to exit, so both count the interpreter start, the imports and the
model load; ingest also writes every vector into a fresh embedded store. Same inputs and model as ``bench.py``
(96 camera-like 12 MP JPEGs, the full-size random-weight ViT-B/32, cached in ``benchmarks/_work``), same settings
(batch 25, decode threads = the cores, draft decoding on). Contenders alternate for ``--rounds`` rounds with the
order rotated; the ratio library/ingest is taken within each round (the machine is shared and noisy), then the
median over rounds is reported.

    python benchmarks/library.py                 # 3 rounds, fp32 and int8, 12 MP; updates benchmarks/results.md
    python benchmarks/library.py --rounds 5 --precision fp32 --set 1080p --out /tmp/library.md

The figures go into their own section of ``results.md`` (between the ``<!-- library.py -->`` markers), which
this script replaces on each run and ``bench.py`` keeps when it rewrites the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # benchmarks/harness.py: inputs, model, timed children, machine facts

BEGIN = "<!-- library.py -->"
END = "<!-- /library.py -->"
GOAL = 0.9


def child_encode(folder: Path, model_dir: Path, precision: str, batch_size: int) -> None:
    """The library contender: what a user's script does, in a fresh process."""
    started = time.perf_counter()
    from clipindex.model.encode import Embedder

    paths = harness.image_files(folder)
    embedder = Embedder(model_dir, device="cpu", precision=precision)
    vectors = embedder.encode_images(paths, batch_size=batch_size)
    print(
        json.dumps(
            {
                "images": int(vectors.shape[0]),
                "dim": int(vectors.shape[1]),
                "in_process_s": time.perf_counter() - started,
            }
        )
    )


def run_ingest(folder: Path, model_dir: Path, precision: str, work: Path) -> harness.ChildResult:
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="library-ingest-", dir=runs))
    try:
        cmd = [
            *harness.clipindex_cmd(),
            "ingest",
            str(folder),
            "--model-dir",
            str(model_dir),
            "--data-dir",
            str(data_dir),
        ]
        cmd += ["--precision", precision, "--device", "cpu", "--draft", "--quiet", "--json"]
        result = harness.run_child(cmd).check()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report = result.json()
    if report.get("indexed") != len(harness.image_files(folder)) or report.get("failed"):
        raise RuntimeError(f"ingest indexed {report.get('indexed')}, failed {report.get('failed')}")
    return result


def run_library(folder: Path, model_dir: Path, precision: str) -> harness.ChildResult:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_encode", "--images", str(folder)]
    cmd += ["--model-dir", str(model_dir), "--precision", precision]
    result = harness.run_child(cmd).check()
    if result.json()["images"] != len(harness.image_files(folder)):
        raise RuntimeError(f"the library embedded {result.json()['images']} images")
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    folders = harness.make_inputs(work, args.images)
    _, model_dir = harness.make_model(work)
    folder = folders[args.set]
    files = len(harness.image_files(folder))
    contenders = [(kind, precision) for precision in args.precision for kind in ("ingest", "library")]
    harness.log("warm-up (page cache, ONNX Runtime's optimised-model cache; not timed)")
    for kind, precision in contenders:
        run_ingest(folder, model_dir, precision, work) if kind == "ingest" else run_library(
            folder, model_dir, precision
        )
    samples: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    for round_no in range(args.rounds):
        shift = round_no % len(contenders)
        for kind, precision in contenders[shift:] + contenders[:shift]:
            harness.wait_for_quiet(args.quiet_wait)
            if kind == "ingest":
                result = run_ingest(folder, model_dir, precision, work)
            else:
                result = run_library(folder, model_dir, precision)
            sample = {
                "round": round_no,
                "kind": kind,
                "precision": precision,
                "wall_s": result.wall_s,
                "img_per_s": files / result.wall_s,
                "maxrss_mb": result.maxrss_mb,
                "cpu_ms_per_image": 1000 * result.cpu_s / files,
                "background": result.background,
            }
            samples.append(sample)
            harness.log(
                f"round {round_no + 1} {kind} {precision}: {sample['img_per_s']:.2f} img/s ({result.wall_s:.1f} s)"
            )
    return {
        "set": args.set,
        "files": files,
        "inputs": harness.describe_inputs(folder),
        "rounds": args.rounds,
        "samples": samples,
        "machine": harness.machine(),
        "flags": harness.machine()["simd"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "argv": " ".join(sys.argv[1:]),
    }


def summarise(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for precision in sorted({s["precision"] for s in data["samples"]}):
        by = {
            kind: [s for s in data["samples"] if s["kind"] == kind and s["precision"] == precision]
            for kind in ("ingest", "library")
        }
        ratios = [
            lib["img_per_s"] / ing["img_per_s"]
            for ing in by["ingest"]
            for lib in by["library"]
            if lib["round"] == ing["round"]
        ]
        rows.append(
            {
                "precision": precision,
                "ingest": statistics.median(s["img_per_s"] for s in by["ingest"]),
                "library": statistics.median(s["img_per_s"] for s in by["library"]),
                "ingest_cpu": statistics.median(s["cpu_ms_per_image"] for s in by["ingest"]),
                "library_cpu": statistics.median(s["cpu_ms_per_image"] for s in by["library"]),
                "ingest_rss": statistics.median(s["maxrss_mb"] for s in by["ingest"]),
                "library_rss": statistics.median(s["maxrss_mb"] for s in by["library"]),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "background": statistics.median(
                    s["background"] for s in data["samples"] if s["precision"] == precision
                ),
            }
        )
    return rows


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    label = harness.SETS[data["set"]]["label"]
    lines = [
        BEGIN,
        "## Library vs CLI (issue 14)",
        "",
        f"Written by `python benchmarks/library.py{' ' + data['argv'] if data['argv'] else ''}` on "
        f"{data['finished_at']}: `Embedder.encode_images(paths)` against `clipindex ingest` over the same {label} set "
        f"({data['files']} JPEGs), each a fresh process timed from spawn to exit (interpreter, imports and model load "
        f"counted; ingest also writes the store), {data['rounds']} rounds alternated with the order rotated. Ratio = "
        "library img/s / ingest img/s within each round; median, with the range over rounds in brackets. CPU ms per "
        "image = the process's user + system CPU time / images (less sensitive than wall time to others' load). "
        "Others' load = the CPU the rest of this shared machine used meanwhile, as a share of all cores: with a "
        "high share, the ranges are wide and the ratios noisy.",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores (shared), CPU flags: {', '.join(data['flags']) or 'no AVX2'}; "
        f"load average {data['load_before']:.1f} before, {data['load_after']:.1f} after; clipindex at "
        f"`{m['git'].get('head', '?')}`.",
        "",
        "| Set | Precision | `clipindex ingest` img/s | `Embedder.encode_images` img/s | library / ingest "
        "| CPU ms per image ingest · library | peak RSS MB ingest · library | others' load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summarise(data):
        verdict = "✅" if row["ratio"] >= GOAL else "❌"
        lines.append(
            f"| {label} | {row['precision']} | {row['ingest']:.2f} | {row['library']:.2f} | **{row['ratio']:.2f}** "
            f"({row['ratio_min']:.2f}–{row['ratio_max']:.2f}) {verdict} goal ≥ {GOAL} | {row['ingest_cpu']:.0f} · "
            f"{row['library_cpu']:.0f} | {row['ingest_rss']:.0f} · "
            f"{row['library_rss']:.0f} | {row['background']:.0%} |"
        )
    lines += [END, ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_encode":
        parser = argparse.ArgumentParser(prog="library.py _encode")
        parser.add_argument("--images", type=Path, required=True)
        parser.add_argument("--model-dir", type=Path, required=True)
        parser.add_argument("--precision", default="fp32")
        parser.add_argument("--batch-size", type=int, default=harness.BATCH_SIZE)
        args = parser.parse_args(argv[1:])
        child_encode(args.images, args.model_dir, args.precision, args.batch_size)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="alternation rounds (default 3)")
    parser.add_argument("--images", type=int, default=96, help="images in the set (default 96, as bench.py)")
    parser.add_argument("--set", choices=sorted(harness.SETS), default="12mp", help="input set (default 12mp)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    parser.add_argument(
        "--work", type=Path, default=harness.DEFAULT_WORK, help="cache folder (default benchmarks/_work)"
    )
    parser.add_argument(
        "--out", type=Path, default=harness.DEFAULT_RESULTS, help="markdown (default benchmarks/results.md)"
    )
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="max seconds to wait for an idle machine")
    args = parser.parse_args(argv)
    data = measure(args)
    raw = args.work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"library-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(data, indent=1))
    section = markdown(data)
    harness.write_section(args.out, section, BEGIN, END)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
