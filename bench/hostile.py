"""A shared Space under attack: 8 hostile visitors and 2 honest ones on the real server.

Starts calibscope in shared mode (CALIBSCOPE_SHARED=1) on the loopback address, in its own process,
with a memory budget and a disk quota set here, its own Gradio upload folder, hub cache and working
folder, and an audit hook recording every file operation on a canary folder (server files no
visitor may read; every path attack names them). First the honest flow runs alone (build,
statistics, Hessians, GPTQ, downloads, a checkpoint); then 8 hostile visitors, one class of attack
each, while 2 honest visitors run the same flow again. Every hostile loop is bounded in count and
time, and the bench stops by itself.

It reports: every hostile request refused with a clear message (count; the slowest refusal's
seconds, goal <= 10 s), the honest visitors' results identical to the flow run alone, the server's
peak resident memory (goal: within the memory budget; the isolated parquet readers are capped
processes of their own) and the peak disk under the quota's folders (goal: within the quota),
nothing left afterwards outside the quota's folders and no staging left inside them, no canary file
ever touched, and no canary text in any answer.
Usage: python bench/hostile.py [--quick]  (--quick: the tiny model for the honest flow). Installs nothing.
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench._common import ROOT, report
from engine.guard import tree_bytes
from tests.browser import free_port

MB = 2**20
REFUSAL_GOAL_S = 10.0
REQUEST_TIMEOUT_S = 120.0
SECRET = "CANARY-7f3a9c: a server file no visitor may read"
UNCLEAR = ("Unexpected error", "Traceback", '"error": null')


def payloads(folder: Path) -> dict[str, Path]:
    """Files a hostile visitor uploads: each small on disk, each refused for what it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    bomb = pa.table({"text": pa.DictionaryArray.from_arrays(pa.array([0] * 1_000_000, pa.int32()), pa.array(["x" * 500]))})
    pq.write_table(bomb, folder / "bomb.parquet", compression="zstd")  # 500 MB of text
    files["parquet bomb"] = folder / "bomb.parquet"
    pq.write_table(pa.table({"input_ids": [[0] * 20_000_000]}), folder / "ids.parquet", compression="zstd")  # 160 MB of ids
    files["token-window bomb"] = folder / "ids.parquet"
    (folder / "wide.csv").write_text("," * 10_000_000 + "\n")  # ten million columns
    files["csv of commas"] = folder / "wide.csv"
    (folder / "many.json").write_text(json.dumps([{"text": "a record of text"}] * 600_000))
    files["json of 600k records"] = folder / "many.json"
    (folder / "lines.txt").write_text("a line of text\n" * 700_000)
    files["text of 700k lines"] = folder / "lines.txt"
    (folder / "loop.dat").write_bytes(struct.pack("<ii", 2**31 - 1, -16) + b"\0" * 8 + struct.pack("<ii", 1, 1))
    files["imatrix that loops"] = folder / "loop.dat"
    pq.write_table(pa.table({"text": ["some text long enough"] * 10}), folder / "damaged.parquet")
    damaged = bytearray((folder / "damaged.parquet").read_bytes())
    damaged[-371] ^= 0x7F  # pyarrow aborts the whole process reading this footer
    (folder / "damaged.parquet").write_bytes(bytes(damaged))
    files["parquet that aborts pyarrow"] = folder / "damaged.parquet"
    (folder / "huge.txt").write_bytes(b"a" * (25 * MB))
    files["upload over the size limit"] = folder / "huge.txt"
    return files


class Visitor:
    """One browser session: named endpoint calls through gradio_client, raw REST calls for what a
    client library would not send (a server path in place of an upload)."""

    def __init__(self, url: str) -> None:
        from gradio_client import Client

        self.url = url
        self.client = Client(url, verbose=False, download_files=False)
        self.api = self.client.view_api(return_format="dict", print_info=False)["named_endpoints"]

    def _filled(self, api: str, values: dict) -> dict:
        """Every parameter: the value given, else its widget's default (an empty text box: "")."""
        filled = {}
        for parameter in self.api[f"/{api}"]["parameters"]:
            name = parameter["parameter_name"]
            empty = "" if parameter.get("python_type", {}).get("type") == "str" else None
            filled[name] = values.get(name, parameter.get("parameter_default", empty) if parameter.get(
                "parameter_has_default") else empty)
        return filled

    def call(self, api: str, **values):
        """The endpoint's outputs (every parameter not given takes its widget's default)."""
        job = self.client.submit(**self._filled(api, values), api_name=f"/{api}")
        return job.result(timeout=REQUEST_TIMEOUT_S)

    def raw(self, api: str, **values) -> str:
        """A REST call with the values as given (FileData dicts naming server paths included);
        returns the server's error text or the status it answered."""
        data = list(self._filled(api, values).values())
        request = urllib.request.Request(f"{self.url}/gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            event = json.loads(answer.read())["event_id"]
        with urllib.request.urlopen(f"{self.url}/gradio_api/call/{api}/{event}", timeout=REQUEST_TIMEOUT_S) as stream:
            text = stream.read().decode()
        return text


def server_path(path: Path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


class Ledger:
    """Every hostile request: what it tried, how long the answer took, and whether it was a clear refusal."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.lock = threading.Lock()

    def attempt(self, visitor: str, what: str, run, must_refuse: bool = True) -> None:
        """``run`` one request; ``must_refuse``: an attack (else legitimate work the Space may serve or
        refuse, as loading a model or filling the disk up to its quota: only an unclear answer fails)."""
        started = time.perf_counter()
        try:
            answer = run()
            text = json.dumps(answer, default=str) if not isinstance(answer, str) else answer
            status = answer[0] if isinstance(answer, (list, tuple)) and answer and isinstance(answer[0], str) else text
            refused = "**Not done:**" in status or "event: error" in text or "calibscope: " in text
        except Exception as error:  # noqa: BLE001 - gradio_client raises the server's refusal as an AppError
            text = f"{type(error).__name__}: {error}"
            refused = True
        seconds = time.perf_counter() - started
        clear = not any(word in text for word in UNCLEAR) and (not refused or len(text.strip()) > 20)
        with self.lock:
            self.rows.append({"visitor": visitor, "what": what, "seconds": round(seconds, 2), "must_refuse": must_refuse,
                              "refused": refused, "clear": clear, "canary_leaked": SECRET in text, "answer": text[-300:]})


def honest_flow(url: str, model: str) -> dict:
    """Build, statistics, Hessians, GPTQ, downloads and a checkpoint; what each step answered."""
    visitor = Visitor(url)
    found = {}
    found["load"] = visitor.call("load_model_and_corpus", model=model, builtin_name="mixed")[0].split(" · ")[-1]
    built = visitor.call("build_calibration_set", strategy="random", nsamples=12, length=192, seed=3)
    found["built"] = built[0].split(" · ")[0]
    stats = visitor.call("collect_statistics", batch_size=4)
    table = stats[2]["value"]["data"] if isinstance(stats[2], dict) and "value" in stats[2] else stats[2]
    found["statistics"] = f"{len(table)} layers, sha256 {hashlib.sha256(json.dumps(table).encode()).hexdigest()[:16]}"
    hessians = visitor.call("compute_hessians", batch_size=4)
    found["hessians"] = hessians[0].split(" · ")[0]
    quantized = visitor.call("quantize", preset="W4 g128 GPTQ", sensitivity="none", windows=4, length=128)
    found["quantize"] = quantized[0].split(" · ")[0].removeprefix("Reused: ")  # the same numbers, remembered
    downloads = visitor.call("prepare_downloads")
    found["downloads"] = sorted(Path(str(f.get("path", f)) if isinstance(f, dict) else str(f)).name
                                for f in (downloads[1] or []))
    checkpoint = visitor.call("write_checkpoint", run=None, check=False)
    found["checkpoint"] = checkpoint[0].split(" in ")[0]
    return found


def attack_paths(url: str, canary: Path, ledger: Ledger, deadline: float) -> None:
    """Server paths in every field that names something."""
    visitor, secret = Visitor(url), canary / "secret.txt"
    visitor.call("load_model_and_corpus", model="tiny-random-llama", builtin_name="python-docs")
    visitor.call("build_calibration_set", strategy="random", nsamples=4, length=64)
    attempts = [
        ("model = a server folder", lambda: visitor.call("load_model_and_corpus", model=str(canary))),
        ("model = a folder of the app", lambda: visitor.call("load_model_and_corpus", model="engine")),
        ("model = file URL", lambda: visitor.call("load_model_and_corpus", model=f"file://{secret}")),
        ("model = ../", lambda: visitor.call("load_model_and_corpus", model="../" + canary.name)),
        ("hub dataset = a server folder", lambda: visitor.call("load_model_and_corpus", model="tiny-random-llama",
                                                               kind="hub", hub_name=str(canary))),
        ("hub dataset = json reader", lambda: visitor.call("load_model_and_corpus", model="tiny-random-llama", kind="hub",
                                                           hub_name="json")),
        ("hub config = ../", lambda: visitor.call("load_model_and_corpus", model="tiny-random-llama", kind="hub",
                                                  hub_name="org/data", hub_config="../../etc")),
        ("corpus upload = a server file", lambda: visitor.raw("load_model_and_corpus", model="tiny-random-llama",
                                                              kind="file", upload=server_path(secret))),
        ("token windows = a server file", lambda: visitor.raw("load_token_windows", windows_file=server_path(secret))),
        ("imatrix = a server file", lambda: visitor.raw("load_imatrix", imatrix_file=server_path(secret))),
        ("held-out text = a server file", lambda: visitor.raw("quantize", preset="W4 g128 RTN", source="Uploaded file",
                                                              upload=server_path(secret))),
        ("checkpoint folder = a server folder", lambda: visitor.call("write_checkpoint", folder=str(canary / "out"))),
    ]
    for what, run in attempts:
        if time.monotonic() < deadline:
            ledger.attempt("paths", what, run)


def attack_uploads(url: str, files: dict[str, Path], ledger: Ledger, deadline: float) -> None:
    """Small files that expand, or loop, or abort a parser."""
    from gradio_client import handle_file

    visitor = Visitor(url)
    visitor.call("load_model_and_corpus", model="tiny-random-llama", builtin_name="python-docs")
    for what in ("parquet bomb", "csv of commas", "json of 600k records", "text of 700k lines", "parquet that aborts pyarrow",
                 "upload over the size limit"):
        if time.monotonic() < deadline:
            ledger.attempt("uploads", what, lambda f=files[what]: visitor.call(
                "load_model_and_corpus", model="tiny-random-llama", kind="file", upload=handle_file(str(f))))
    for what, api, field in (("token-window bomb", "load_token_windows", "windows_file"),
                             ("imatrix that loops", "load_imatrix", "imatrix_file")):
        if time.monotonic() < deadline:
            ledger.attempt("uploads", what, lambda f=files[what], a=api, k=field: visitor.call(a, **{k: handle_file(str(f))}))


def attack_sizes(url: str, ledger: Ledger, deadline: float) -> None:
    """Work sized by the visitor: sets, sequences and batches beyond the Space's caps."""
    visitor = Visitor(url)
    visitor.call("load_model_and_corpus", model="tiny-random-llama", builtin_name="python-docs")
    visitor.call("build_calibration_set", strategy="random", nsamples=8, length=64)
    for what, api, values in (("100,000 samples", "build_calibration_set", {"nsamples": 100_000}),
                              ("a million tokens a sample", "build_calibration_set", {"strategy": "random", "length": 1_000_000}),
                              ("statistics in batches of 100,000", "collect_statistics", {"batch_size": 100_000}),
                              ("Hessians in batches of 100,000", "compute_hessians", {"batch_size": 100_000}),
                              ("imatrix in batches of 100,000", "collect_imatrix", {"batch_size": 100_000}),
                              ("a sweep in batches of 100,000", "sweep", {"batch_size": 100_000}),
                              ("a comparison of 1,000 sets", "compare",
                               {"seeds": 100, "counts": "1, 2, 4, 8, 16, 32, 64, 128, 256, 512"}),
                              ("evaluation of 100,000 windows", "quantize", {"windows": 100_000, "preset": "W4 g128 RTN"})):
        if time.monotonic() < deadline:
            ledger.attempt("sizes", what, lambda a=api, v=values: visitor.call(a, **v))


def attack_configs(canary: Path, ledger: Ledger, deadline: float, work: Path) -> None:
    """Malformed run configs through `calibscope run` (the headless door)."""
    configs = {
        "typo in a key": '[[quantize]]\nwieghts = { bits = 3 }',
        "unknown section": '[modle]\nname = "x"',
        "wrong type": '[model]\nname = 5',
        "a section as a value": 'model = "builtin:gemma-3-270m"',
        "[quantize] as a table": '[quantize]\nscheme = "W4 g128 GPTQ"',
        "not TOML at all": "\x00\x01 [[[",
        "windows from a server file": (f'[sampling]\nstrategy = "supplied"\npath = "{canary / "secret.txt"}"\n'
                                       '[model]\nname = "nope/nope"'),
    }
    for what, body in configs.items():
        if time.monotonic() >= deadline:
            break
        path = work / f"config-{len(ledger.rows)}.toml"
        path.write_text(f'output = "{work / "runs" / path.stem}"\n{body}\n')

        def run(path=path):
            done = subprocess.run([sys.executable, "-m", "ui.cli", "run", str(path)], capture_output=True, text=True,
                                  timeout=REQUEST_TIMEOUT_S, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
            return f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}" + (
                "" if done.returncode == 2 else " (NOT REFUSED)")

        ledger.attempt("configs", what, run)


def attack_disk(url: str, ledger: Ledger, deadline: float, model: str) -> None:
    """Fresh sessions preparing every download, Hessians and a checkpoint each, until the quota says no."""
    for number in range(6):
        if time.monotonic() >= deadline:
            break
        visitor = Visitor(url)

        def prepare(v: Visitor = visitor, seed: int = number) -> object:  # a slow answer is a finding, not a crash
            v.call("load_model_and_corpus", model=model, builtin_name="python-docs")
            v.call("build_calibration_set", strategy="random", nsamples=8, length=128, seed=seed)
            v.call("compute_hessians", batch_size=4)
            return v.call("quantize", preset="W4 g128 RTN", sensitivity="none", windows=2, length=64)

        ledger.attempt("disk", f"session {number}: load, set, Hessians, quantize", prepare, must_refuse=False)
        artifacts = ["calibration set + manifest", "Hessians", "HTML report"]
        ledger.attempt("disk", f"session {number}: downloads",
                       lambda v=visitor, a=artifacts: v.call("prepare_downloads", artifacts=a), must_refuse=False)
        ledger.attempt("disk", f"session {number}: checkpoint",
                       lambda v=visitor: v.call("write_checkpoint", run=None, check=False),
                       must_refuse=False)


def attack_models(url: str, ledger: Ledger, deadline: float) -> None:
    """Concurrent loads of many models (and ids the hub cannot give offline)."""
    names = ["tiny-random-gpt2", "tiny-random-gemma3", "tiny-random-mixtral", "tiny-random-qwen3-moe", "someorg/no-such-model",
             "builtin:no-such-model", "tiny-random-llama4"]

    def load(name: str) -> None:
        visitor = Visitor(url)
        ledger.attempt("models", f"load {name}", lambda: visitor.call("load_model_and_corpus", model=name,
                                                                     builtin_name="python-docs"),
                       must_refuse=name.startswith(("someorg/", "builtin:no-")))

    with ThreadPoolExecutor(4) as pool:
        for name in names:
            if time.monotonic() < deadline:
                pool.submit(load, name)


def attack_names(url: str, ledger: Ledger, deadline: float) -> None:
    """Hub names that are paths or readers of local files, and splits and configs that carry a path."""
    visitor = Visitor(url)
    for what, values in (("dataset 'bench' (a folder of the app)", {"hub_name": "bench"}),
                         ("dataset '/tmp'", {"hub_name": "/tmp"}), ("dataset 'csv'", {"hub_name": "csv"}),
                         ("dataset 'text'", {"hub_name": "text"}),
                         ("split with a slash", {"hub_name": "org/x", "hub_split": "a/../b"}),
                         ("dataset 'hf://datasets/x'", {"hub_name": "hf://datasets/x"}),
                         ("model 'tests' (a folder of the app)", {"model": "tests", "kind": "builtin"})):
        if time.monotonic() < deadline:
            ledger.attempt("names", what, lambda v=values: visitor.call(
                "load_model_and_corpus", **{"model": "tiny-random-llama", "kind": "hub", **v}))


def peak_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="calibscope-hostile-"))
    try:
        bench(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model for the honest flow")
    parser.add_argument("--memory-mb", type=float, default=12288,
                        help="the Space's memory budget (CALIBSCOPE_MEMORY_MB; a free CPU Space has 16 GB)")
    parser.add_argument("--disk-mb", type=float, default=None,
                        help="the disk quota (default: what the caches hold + 6 GB: room for the honest flows, not for filling)")
    parser.add_argument("--minutes", type=float, default=15, help="the hostile visitors stop after this")
    args = parser.parse_args()
    honest_model = "tiny-random-llama" if args.quick else "builtin:gemma-3-270m"
    canary = work / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text((SECRET + "\n\n") * 200)
    files = payloads(work / "payloads")
    folders = {"space": work / "space", "gradio": work / "gradio", "hf": work / "hf"}
    from engine.models import cache_root

    roots = [folders["space"], folders["gradio"], folders["hf"], cache_root()]
    cached = sum(tree_bytes(root) for root in roots if root.exists())
    disk_mb = args.disk_mb or cached / MB + 6144
    audit_log = work / "audit.log"
    env = {**os.environ, "CALIBSCOPE_SHARED": "1", "CALIBSCOPE_MEMORY_MB": str(args.memory_mb),
           "CALIBSCOPE_DISK_MB": str(disk_mb),
           "CALIBSCOPE_SPACE_DIR": str(folders["space"]), "GRADIO_TEMP_DIR": str(folders["gradio"]),
           "HF_HOME": str(folders["hf"]), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "CALIBSCOPE_BENCH_CANARY": str(canary), "CALIBSCOPE_BENCH_AUDIT": str(audit_log),
           "CALIBSCOPE_BENCH_LEDGER": str(work / "ledger.jsonl")}
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench._space_server", str(port)], cwd=ROOT, env=env,
                              stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    disk_peak, stop = [0], threading.Event()

    def watch_disk() -> None:
        while not stop.is_set():
            disk_peak[0] = max(disk_peak[0], sum(tree_bytes(root) for root in roots if root.exists()))
            stop.wait(0.5)

    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"the server did not start:\n{(work / 'server.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        watcher = threading.Thread(target=watch_disk, daemon=True)
        watcher.start()
        started = time.perf_counter()
        alone = honest_flow(url, honest_model)
        alone_seconds = time.perf_counter() - started
        ledger, deadline = Ledger(), time.monotonic() + args.minutes * 60
        attacks = [lambda: attack_paths(url, canary, ledger, deadline), lambda: attack_uploads(url, files, ledger, deadline),
                   lambda: attack_sizes(url, ledger, deadline), lambda: attack_configs(canary, ledger, deadline, work),
                   lambda: attack_disk(url, ledger, deadline, honest_model), lambda: attack_models(url, ledger, deadline),
                   lambda: attack_names(url, ledger, deadline), lambda: attack_paths(url, canary, ledger, deadline)]
        with ThreadPoolExecutor(len(attacks) + 2) as pool:
            hostile = [pool.submit(attack) for attack in attacks]
            honest = [pool.submit(honest_flow, url, honest_model) for _ in range(2)]
            together = [future.result(timeout=args.minutes * 60 + 600) for future in honest]
            for future in hostile:
                future.result(timeout=args.minutes * 60 + 600)
        peak_rss = peak_of(server.pid)
        alive = server.poll() is None
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    outside = sorted(set(os.listdir(tempfile.gettempdir())) - tmp_before - {work.name})
    staging = [str(p) for root in roots if root.exists() for p in root.rglob("*")
               if any(marker in p.name for marker in (".partial", ".tmp-", ".incomplete"))]
    touched = audit_log.read_text().splitlines() if audit_log.exists() else []
    rows = ledger.rows
    attacks = [row for row in rows if row["must_refuse"]]
    refusals = [row for row in attacks if row["refused"]]
    on_the_space = [row for row in refusals if row["visitor"] != "configs"]  # configs: `calibscope run`, a process each
    slowest = max((row["seconds"] for row in on_the_space), default=0.0)
    identical = all(result == alone for result in together)
    met = (len(refusals) == len(attacks) and all(row["clear"] for row in rows) and slowest <= REFUSAL_GOAL_S and identical
           and peak_rss <= args.memory_mb and disk_peak[0] / MB <= disk_mb and not outside and not staging and not touched
           and not any(row["canary_leaked"] for row in rows) and alive)
    report("hostile", "hostile_requests_refused", len(refusals),
           f"all {len(attacks)} attacks refused with a clear message (the slowest on the Space <= {REFUSAL_GOAL_S:g} s), "
           "every other "
           "answer clear; honest results identical; "
           "peak RSS <= the memory budget; peak disk <= the quota; nothing left outside it; no canary touched",
           met, dtype="auto (the dashboard's default)", device="cpu", quick=args.quick, model=honest_model,
           reused={"builtin weight cache": "the builtin Gemma's converted weights were read from the cache (load time only)"},
           attacks=len(attacks), refused=len(refusals), not_refused=[row for row in attacks if not row["refused"]],
           other_requests={"served": sum(1 for row in rows if not row["must_refuse"] and not row["refused"]),
                           "refused": sum(1 for row in rows if not row["must_refuse"] and row["refused"])},
           unclear=[row for row in rows if not row["clear"]],
           slowest_refusal_seconds=slowest, slowest_refusal=max(on_the_space, key=lambda r: r["seconds"], default=None),
           slowest_config_refusal_seconds=max((r["seconds"] for r in refusals if r["visitor"] == "configs"), default=0.0),
           honest_identical=identical, honest_alone=alone, honest_together=together, honest_alone_seconds=round(alone_seconds, 1),
           peak_rss_mb=round(peak_rss, 1), memory_budget_mb=args.memory_mb, peak_disk_mb=round(disk_peak[0] / MB, 1),
           disk_quota_mb=round(disk_mb, 1), disk_before_mb=round(cached / MB, 1), left_outside_the_quota=outside,
           staging_left=staging, canary_touched=touched, server_alive_until_the_end=alive,
           by_visitor={name: sum(1 for row in rows if row["visitor"] == name) for name in {row["visitor"] for row in rows}},
           requests_seen=[{**row, "answer": row["answer"][-160:]} for row in rows])


if __name__ == "__main__":
    main()
