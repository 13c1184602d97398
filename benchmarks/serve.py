"""Serving: ``medlens serve`` under load, against offline ``predict``, batching on and off.

A 2D classifier (PneumoniaMNIST, 28x28: the plan's network for it) and a 2D segmenter (HC18:
the plan's U-Net, whole 800x540 ultrasound images, mirrored as ``predict`` does by default)
are served by ``medlens serve`` in its own process on loopback. A bounded client (httpx,
asyncio; a fixed number of requests per setting, so it stops by itself) sends real images at
concurrency 1, 8 and 32 and records each answer's status and latency, and the server's
``Server-Timing`` (its time per request, and the networks' forward passes within it). Then:

- throughput (images/s) and p50/p95/p99 latency per model and concurrency, errors (any answer
  but 200);
- the same with dynamic batching off (``--max-batch 1``), and their ratio: both servers run
  side by side and are measured in alternation, ``--rounds`` times each, the faster round kept
  (this machine's noise only ever slows); segmenters are never batched (their predictor goes
  image by image), so their two columns measure the noise;
- offline ``predict`` throughput on the same images (``predictor.predict_path``, what
  ``medlens predict`` runs), and the served segmenter's share of it at concurrency 32;
- the server's own time per request beyond the network: its total time (receiving and reading
  the upload, preprocessing, queueing, encoding the answer) less the request's share of its
  batch's forward passes, median at concurrency 1;
- the classifier at concurrency 8 and 32 again from a minimal HTTP/1.1 client (keep-alive
  connections on asyncio streams), which costs the client almost nothing: httpx's client,
  sharing the 2 cores, limits what the server is seen to do under bursts (``_raw_client`` keys);
- the server's resident memory (RSS) after a warm-up and after 2,000 more classifier requests.

The runs: ``--classifier RUN`` and ``--segmenter RUN``, or trained here for one epoch with the
plan's defaults (the same networks as a full training; serving speed does not depend on the
weights).

    python benchmarks/serve.py
    python benchmarks/serve.py --classifier runs/pneumonia --segmenter runs/hc18
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_threads, emit_json, environment, log, print_table, require_data
from _dicom_node import measure_node

LEVELS = (1, 8, 32)
COUNTS = {"classifier": {1: 300, 8: 600, 32: 1200}, "segmenter": {1: 12, 8: 32, 32: 64}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, help="A PneumoniaMNIST run (default: train).")
    parser.add_argument("--segmenter", type=Path, help="An HC18 run (default: train).")
    parser.add_argument("--workdir", type=Path, help="Keep runs and images here.")
    parser.add_argument("--rss-requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds per setting.")
    parser.add_argument("--quick", action="store_true", help="A tenth of the requests (a check).")
    parser.add_argument("--dicom-segmenter", type=Path, help="A 3D MR run for the DICOM node.")
    parser.add_argument("--node-only", action="store_true", help="Measure the DICOM node only.")
    args = parser.parse_args(argv)
    if args.quick:
        for counts in COUNTS.values():
            counts.update({k: max(4, v // 10) for k, v in counts.items()})
        args.rss_requests //= 10
    root = require_data("serve", "medmnist/pneumoniamnist.npz", "hc18/images", "dicom/mr_t1_brain")
    threads = configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.node_only:
            node = measure_node(root, work, args.dicom_segmenter)
            print(
                f"DICOM node: SEG back in Orthanc {node['dicom_node_seconds']} s after the "
                f"last image ({node['dicom_node_status']})"
            )
            emit_json({"benchmark": "serve", **node, "threads": threads})
            return 0
        runs = {
            "classifier": args.classifier or _train(root / "medmnist" / "pneumoniamnist.npz",
                                                    work / "classifier", []),
            "segmenter": args.segmenter or _train(root / "hc18", work / "segmenter",
                                                  ["train.batches_per_epoch=2"]),
        }  # fmt: skip
        payloads = {"classifier": _pneumonia(root, work / "in-classifier", 256),
                    "segmenter": _hc18(root, work / "in-segmenter", 16)}  # fmt: skip
        figures = {"offline": {name: _offline(runs[name], work / f"in-{name}", work / name)
                               for name in runs}}  # fmt: skip
        measured = _serve_both(runs, payloads, args.rss_requests, args.rounds)
        figures["on"], figures["off"] = measured["on"], measured["off"]
        figures["on"]["rss"] = measured["rss"]
        figures["errors_all_rounds"] = measured["errors_all_rounds"]
        node = measure_node(root, work, args.dicom_segmenter)
    figures.update(_summary(figures))
    figures.update(node)
    report(figures)
    figures["threads"] = threads
    figures["environment"] = environment(["medlens", "torch", "fastapi", "uvicorn", "httpx"])
    emit_json({"benchmark": "serve", **figures})
    return 0


def _train(data: Path, run: Path, overrides: list[str]) -> Path:
    from medlens.data import open_dataset
    from medlens.tasks.registry import task_for_dataset

    if (run / "run.json").is_file():
        return run
    task = task_for_dataset(open_dataset(data).task)
    log(f"training {task.name} on {data.name} for one epoch into {run} ...")
    task.train(data, run, epochs=1, overrides=overrides, progress=False, log=lambda line: None)
    return run


def _pneumonia(root: Path, folder: Path, n: int) -> list[tuple[str, bytes]]:
    import numpy as np
    from PIL import Image as PILImage

    images = np.load(root / "medmnist" / "pneumoniamnist.npz")["val_images"][:n]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        PILImage.fromarray(image).save(buffer, format="PNG")
        (folder / f"p{i:03d}.png").write_bytes(buffer.getvalue())
        out.append((f"p{i:03d}.png", buffer.getvalue()))
    return out


def _hc18(root: Path, folder: Path, n: int) -> list[tuple[str, bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted((root / "hc18" / "images").glob("*_HC.png"))[:n]:
        target = folder / path.name
        if not target.exists():
            target.symlink_to(path)
        out.append((path.name, path.read_bytes()))
    return out


def _offline(run: Path, images: Path, work: Path) -> dict:
    """``medlens predict``'s code path over the folder, after one warm-up image."""
    from medlens.tasks.registry import load_predictor

    predictor = load_predictor(run)
    n = len(list(images.iterdir()))
    out = work / "offline"
    output = out / "predictions.csv" if predictor.task == "classification" else out / "masks"
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_path(images, output)  # warm-up
    start = time.perf_counter()
    predictor.predict_path(images, output)
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2)}


def _serve_both(runs: dict, payloads: dict, rss_requests: int, rounds: int) -> dict:
    """Two servers, batching on and off, measured in alternation (``rounds`` times each,
    the faster round kept: this machine's noise only slows), then the RSS run on the first."""
    servers = {}
    try:
        for mode in ("on", "off"):
            port = _free_port()
            command = [
                sys.executable,
                "-m",
                "medlens.cli.main",
                "serve",
                *map(str, runs.values()),
                *[x for name in runs for x in ("--name", name)],
                "--port",
                str(port),
                "--max-batch",
                "32" if mode == "on" else "1",
                "--max-queue",
                "1024",
            ]
            servers[mode] = (
                subprocess.Popen(command, stderr=subprocess.PIPE, text=True),
                f"http://127.0.0.1:{port}",
            )
        result: dict = {mode: {} for mode in servers}
        errors = 0
        for name in runs:
            for mode, (server, url) in servers.items():
                _wait_ready(url, server)
                asyncio.run(_load(url, name, payloads[name], 8, 8))  # warm-up
                result[mode][name] = {}
            for level in LEVELS:
                for _ in range(rounds):
                    for mode, (_, url) in servers.items():
                        n = COUNTS[name][level]
                        stats = asyncio.run(_load(url, name, payloads[name], n, level))
                        errors += stats["errors"]
                        kept = result[mode][name].get(str(level))
                        if kept is None or stats["images_per_s"] > kept["images_per_s"]:
                            result[mode][name][str(level)] = stats
                        log(
                            f"batching {mode}: {name} at concurrency {level}: "
                            f"{stats['images_per_s']:.1f} images/s, p99 {stats['p99_ms']:.0f} ms"
                        )
        for level in (8, 32):  # the classifier again, from the minimal client
            for _ in range(rounds):
                for mode, (_, url) in servers.items():
                    n = COUNTS["classifier"][level]
                    stats = asyncio.run(_load_raw(url, "classifier", payloads["classifier"], n,
                                                  level))  # fmt: skip
                    errors += stats["errors"]
                    kept = result[mode].setdefault("classifier_raw_client", {}).get(str(level))
                    if kept is None or stats["images_per_s"] > kept["images_per_s"]:
                        result[mode]["classifier_raw_client"][str(level)] = stats
                    log(
                        f"batching {mode}: classifier (minimal client) at concurrency {level}: "
                        f"{stats['images_per_s']:.1f} images/s, p99 {stats['p99_ms']:.0f} ms"
                    )
        server, url = servers["on"]
        before = _rss_mb(server.pid)
        stats = asyncio.run(_load(url, "classifier", payloads["classifier"], rss_requests, 32))
        after = _rss_mb(server.pid)
        result["rss"] = {
            "requests": rss_requests,
            "before_mb": before,
            "after_mb": after,
            "growth": round((after - before) / before, 4),
            "errors": stats["errors"],
        }
        result["errors_all_rounds"] = errors + stats["errors"]
        return result
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(60)


async def _load(url: str, name: str, payloads: list, n: int, concurrency: int) -> dict:
    """``n`` requests, at most ``concurrency`` in flight, cycling over ``payloads``."""
    import httpx

    latencies, own, statuses = [], [], []
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client, i: int) -> None:
        filename, data = payloads[i % len(payloads)]
        async with gate:
            start = time.perf_counter()
            answer = await client.post(f"{url}/v1/models/{name}/predict",
                                       files={"file": (filename, data, "image/png")})  # fmt: skip
            latencies.append(time.perf_counter() - start)
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                own.append(_own_ms(answer.headers.get("server-timing", "")))

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*[one(client, i) for i in range(n)])
        wall = time.perf_counter() - start
    return _stats(latencies, statuses, own, n, wall)


def _stats(latencies: list, statuses: list, own: list, n: int, wall: float) -> dict:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests": n,
        "images_per_s": round(n / wall, 2),
        "p50_ms": round(_pct(ms, 50), 2),
        "p95_ms": round(_pct(ms, 95), 2),
        "p99_ms": round(_pct(ms, 99), 2),
        "errors": sum(s != 200 for s in statuses),
        "server_ms_p50": round(statistics.median(own), 3) if own else None,
    }


async def _load_raw(url: str, name: str, payloads: list, n: int, concurrency: int) -> dict:
    """The same load from a minimal HTTP/1.1 client: ``concurrency`` keep-alive connections on
    asyncio streams, each sending its next request when its answer is read. It costs the
    client almost nothing, so it shows what the server itself sustains."""
    host, port = url.removeprefix("http://").split(":")
    jobs, latencies, own, statuses = list(range(n)), [], [], []
    boundary = b"medlensbenchboundary"

    def request(filename: str, data: bytes) -> bytes:
        body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="'
                + filename.encode() + b'"\r\nContent-Type: image/png\r\n\r\n' + data
                + b"\r\n--" + boundary + b"--\r\n")  # fmt: skip
        head = (f"POST /v1/models/{name}/predict HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        return head.encode() + body

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while jobs:
            filename, data = payloads[jobs.pop() % len(payloads)]
            start = time.perf_counter()
            writer.write(request(filename, data))
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, value = line.decode().split(":", 1)
                headers[key.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", 0)))
            latencies.append(time.perf_counter() - start)
            statuses.append(status)
            if status == 200:
                own.append(_own_ms(headers.get("server-timing", "")))
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*[connection() for _ in range(concurrency)])
    return _stats(latencies, statuses, own, n, time.perf_counter() - start)


def _own_ms(header: str) -> float:
    """The server's time for the request less its share of its batch's forward passes."""
    parts = dict(p.strip().split(";", 1) for p in header.split(",") if ";" in p)
    value = {k: float(v.split("=")[1]) for k, v in parts.items()}
    return value["total"] - value["network"] / max(value.get("batch", 1), 1)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def _summary(f: dict) -> dict:
    on, off = f["on"], f["off"]
    seg32 = on["segmenter"]["32"]["images_per_s"]
    return {
        "ratio_vs_unbatched": round(on["classifier"]["32"]["images_per_s"]
                                    / off["classifier"]["32"]["images_per_s"], 3),
        "ratio_vs_unbatched_segmenter": round(seg32 / off["segmenter"]["32"]["images_per_s"], 3),
        "fraction_of_offline_segmenter": round(seg32 / f["offline"]["segmenter"]["images_per_s"],
                                               3),
        "fraction_of_offline_classifier": round(on["classifier"]["32"]["images_per_s"]
                                                / f["offline"]["classifier"]["images_per_s"], 3),
        "server_ms_p50_classifier": on["classifier"]["1"]["server_ms_p50"],
        "server_ms_p50_segmenter": on["segmenter"]["1"]["server_ms_p50"],
        "p99_ms_classifier": on["classifier"]["32"]["p99_ms"],
        "errors": f["errors_all_rounds"],
        "rss_growth": on["rss"]["growth"],
        "ratio_vs_unbatched_raw_client": round(
            on["classifier_raw_client"]["32"]["images_per_s"]
            / off["classifier_raw_client"]["32"]["images_per_s"], 3),
        "p99_ms_classifier_raw_client": on["classifier_raw_client"]["32"]["p99_ms"],
        "p99_ms_classifier_raw_client_unbatched": off["classifier_raw_client"]["32"]["p99_ms"],
    }  # fmt: skip


def report(f: dict) -> None:
    rows = []
    for model in ("classifier", "segmenter"):
        for level in LEVELS:
            a, b = f["on"][model][str(level)], f["off"][model][str(level)]
            rows.append([model, level, f"{a['images_per_s']:.1f}", f"{b['images_per_s']:.1f}",
                         f"{a['p50_ms']:.1f}", f"{a['p95_ms']:.1f}", f"{a['p99_ms']:.1f}",
                         a["server_ms_p50"], a["errors"] + b["errors"]])  # fmt: skip
        rows.append([model, "offline", f"{f['offline'][model]['images_per_s']:.1f}", "", "", "",
                     "", "", ""])  # fmt: skip
    print_table(
        "medlens serve on loopback (images/s; latency in ms; batching on unless stated)",
        ["model", "concurrency", "img/s", "img/s unbatched", "p50", "p95", "p99",
         "server ms p50", "errors"],
        rows,
    )  # fmt: skip
    rss = f["on"]["rss"]
    print(f"RSS {rss['before_mb']:.0f} MB -> {rss['after_mb']:.0f} MB after {rss['requests']} "
          f"requests ({rss['growth']:+.1%}); batched/unbatched classifier at 32: "
          f"{f['ratio_vs_unbatched']:.2f}x; segmenter at 32 = "
          f"{f['fraction_of_offline_segmenter']:.0%} of offline predict")  # fmt: skip
    print(
        f"DICOM node: SEG back in Orthanc {f.get('dicom_node_seconds')} s after the last image "
        f"of the MR series ({f.get('dicom_node_status')})"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"medlens serve exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("medlens serve did not become ready in 300 s")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
