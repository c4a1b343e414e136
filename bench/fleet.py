#!/usr/bin/env python3
"""bench/fleet.py - the cost of fleet coordination, on loopback, in one run.

    CARGO_TARGET_DIR=/work/bench-target cargo build --release
    python3 bench/fleet.py [--agents 50] [--max-parallel 5] [--hook-sleep 1.0] [--idle 60]

What it measures (docs/BENCHMARKS.md, "Fleet rollouts"):
 1. one host's deploy time, alone (no fleet): `-f` from v1 to v2 of the 1,000-file bundle
    (make-bundle.py --preset small), with the same hooks, median of 5 (the "ideal" wave);
 2. a rollout of v2 to N agents (daemons, each its own deploy directory, one local ZIP remote,
    one real etcd member), `max-parallel = P`, started by `fleet notify`: the wall time from
    the notify to the end of the last host's post-update hook, against the ideal
    ceil(N / P) x the one-host time measured in step 1;
 3. etcd requests per idle agent per minute, by gRPC method (etcd's own
    grpc_server_handled_total counters, before and after IDLE seconds with all agents idle);
 4. idle RSS of a daemon with fleet mode on against off (same remote, same schedule).

The hook: a post-update hook that sleeps HOOK_SLEEP seconds stands for the application's
restart (`--hook-sleep 0` gives the bare agent; then 50 agents unpacking at once on a 2-core
machine measure CPU contention more than coordination, and the report says so).

Bundles go to $BENCH_DATA (default /tmp/bench-data), never into the repository.
"""

import argparse
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared" / "bench"))
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/bench-data"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
BIN = TARGET / "release" / "repo-deploy"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundles():
    v1, v2 = DATA / "small.zip", DATA / "small-v2-1pct.zip"
    if not (v1.exists() and v2.exists()):
        subprocess.run([sys.executable, str(SHARED / "make-bundle.py"), "--preset", "small",
                        "--out", str(DATA)], check=True)
    return v1, v2


class Etcd:
    def __init__(self, work):
        self.client, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.log = open(work / "etcd.log", "w")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "b", "--data-dir", str(work / "etcd"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-cluster", f"b=http://127.0.0.1:{self.peer}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if b'"true"' in urllib.request.urlopen(self.url + "/health", timeout=1).read():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("etcd did not become healthy")

    def grpc_counts(self):
        text = urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()
        counts = {}
        for m in re.finditer(r'^grpc_server_handled_total\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = labels.get("grpc_method", "?")
            counts[key] = counts.get(key, 0) + float(m.group(2))
        # Stream messages (keep-alives travel on one LeaseKeepAlive stream).
        for m in re.finditer(r'^grpc_server_msg_received_total\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = "msg:" + labels.get("grpc_method", "?")
            counts[key] = counts.get(key, 0) + float(m.group(2))
        return counts

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def write_hooks(work, sleep):
    pre, post = work / "pre.d", work / "post.d"
    for d in (pre, post):
        d.mkdir(exist_ok=True)
    log = work / "events.log"
    (pre / "10-log").write_text(f'#!/bin/sh\necho "pre $HOSTN $(date +%s.%N)" >> {log}\n')
    (post / "10-restart").write_text(
        f'#!/bin/sh\nsleep {sleep}\necho "post $HOSTN $(date +%s.%N)" >> {log}\n')
    for f in (pre / "10-log", post / "10-restart"):
        f.chmod(0o755)
    return pre, post, log


def config(work, name, remote, pre, post, etcd=None, max_parallel=5):
    d = work / name
    d.mkdir(exist_ok=True)
    lines = [f"remote = {remote}", f"directory = {d}", f"pre-hooks = {pre}",
             f"post-hooks = {post}", "schedule = @hourly", "keep = 2"]
    if etcd:
        lines += [f"etcd = {etcd}", "fleet = bench", f"host = {name}",
                  f"max-parallel = {max_parallel}"]
    cfg = work / f"{name}.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def one_host_time(work, v1, v2, pre, post, runs=5):
    times = []
    for i in range(runs):
        remote = work / f"alone-{i}.zip"
        shutil.copyfile(v1, remote)
        cfg = config(work, f"alone-{i}", remote, pre, post)
        env = dict(os.environ, HOSTN=f"alone-{i}")
        subprocess.run([str(BIN), "-c", str(cfg), "-f"], check=True, env=env,
                       stderr=subprocess.DEVNULL)
        shutil.copyfile(v2, str(remote) + ".tmp")
        os.replace(str(remote) + ".tmp", remote)
        subprocess.run(["sync"], check=True)
        t = time.monotonic()
        subprocess.run([str(BIN), "-c", str(cfg), "-f"], check=True, env=env,
                       stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t)
    return statistics.median(times)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fleet_status(cfg):
    out = subprocess.run([str(BIN), "-c", str(cfg), "fleet", "status", "--json"],
                         capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"hosts": []}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--max-parallel", type=int, default=5)
    ap.add_argument("--hook-sleep", type=float, default=1.0)
    ap.add_argument("--idle", type=int, default=60)
    args = ap.parse_args()
    if not BIN.exists():
        raise SystemExit(f"{BIN} missing: CARGO_TARGET_DIR={TARGET} cargo build --release")
    v1, v2 = bundles()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    pre, post, log = write_hooks(work, args.hook_sleep)
    print(f"work directory {work}; {args.agents} agents, max-parallel {args.max_parallel}, "
          f"post-update hook sleeps {args.hook_sleep}s", flush=True)

    alone = one_host_time(work, v1, v2, pre, post)
    print(f"one host alone, v1 -> v2 (median of 5): {alone:.3f}s", flush=True)

    etcd = Etcd(work)
    remote = work / "remote.zip"
    shutil.copyfile(v1, remote)
    daemons, cfgs = [], []
    try:
        for i in range(args.agents):
            name = f"h{i:02d}"
            cfg = config(work, name, remote, pre, post)  # v1 without the fleet: fast set-up
            subprocess.run([str(BIN), "-c", str(cfg), "-f"], check=True,
                           env=dict(os.environ, HOSTN=name), stderr=subprocess.DEVNULL)
            cfg = config(work, name, remote, pre, post, etcd.url, args.max_parallel)
            cfgs.append(cfg)
        # A daemon without the fleet, for the RSS comparison.
        solo_cfg = config(work, "solo", remote, pre, post)
        subprocess.run([str(BIN), "-c", str(solo_cfg), "-f"], check=True,
                       env=dict(os.environ, HOSTN="solo"), stderr=subprocess.DEVNULL)
        for i, cfg in enumerate(cfgs):
            daemons.append(subprocess.Popen(
                [str(BIN), "-c", str(cfg)], env=dict(os.environ, HOSTN=f"h{i:02d}"),
                stdout=subprocess.DEVNULL, stderr=open(work / f"h{i:02d}.log", "w")))
        solo = subprocess.Popen([str(BIN), "-c", str(solo_cfg)], stdout=subprocess.DEVNULL,
                                stderr=open(work / "solo.log", "w"))
        deadline = time.time() + 60
        while len(fleet_status(cfgs[0])["hosts"]) < args.agents:
            if time.time() > deadline:
                raise SystemExit("not every agent joined within 60 s")
            time.sleep(0.5)
        time.sleep(3)  # every first check done and published

        before = etcd.grpc_counts()
        time.sleep(args.idle)
        after = etcd.grpc_counts()
        per = {k: (after.get(k, 0) - before.get(k, 0)) * 60 / args.idle / args.agents
               for k in after if after.get(k, 0) != before.get(k, 0)}
        print(f"etcd requests per idle agent per minute ({args.idle}s idle):")
        for k, v in sorted(per.items()):
            print(f"  {k:45s} {v:8.2f}")
        fleet_rss = statistics.median(rss_kib(d.pid) for d in daemons)
        solo_rss = rss_kib(solo.pid)
        print(f"idle RSS: fleet mode {fleet_rss / 1024:.1f} MiB (median of {args.agents}), "
              f"without {solo_rss / 1024:.1f} MiB, +{(fleet_rss - solo_rss) / 1024:.1f} MiB")

        log.write_text("")
        tmp = str(remote) + ".tmp"
        shutil.copyfile(v2, tmp)
        os.replace(tmp, remote)
        subprocess.run(["sync"], check=True)
        t0 = time.time()
        subprocess.run([str(BIN), "-c", str(cfgs[0]), "fleet", "notify"], check=True,
                       stdout=subprocess.DEVNULL)
        deadline = time.time() + 600
        while True:
            ends = [l.split() for l in log.read_text().splitlines() if l.startswith("post ")]
            if len({e[1] for e in ends}) >= args.agents:
                break
            if time.time() > deadline:
                raise SystemExit(f"only {len(ends)} of {args.agents} hosts deployed in 600 s")
            time.sleep(0.2)
        wall = max(float(e[2]) for e in ends) - t0
        waves = math.ceil(args.agents / args.max_parallel)
        ideal = waves * alone
        # The most hosts ever between a pre-update start and a post-update end.
        events = []
        for line in log.read_text().splitlines():
            kind, _, ts = line.split()
            events.append((float(ts), 1 if kind == "pre" else -1))
        events.sort(key=lambda e: (e[0], e[1]))
        most = cur = 0
        for _, step in events:
            cur += step
            most = max(most, cur)
        # Where the time went: before the first place every agent downloads and unpacks at
        # once (on one machine, 50 agents share its CPUs and disk; a real fleet does not), then
        # the waves; the handover is the gap from a post-update end to the next pre-update start.
        pres = sorted(float(l.split()[2]) for l in log.read_text().splitlines()
                      if l.startswith("pre "))
        posts = sorted(float(e[2]) for e in ends)
        before_first = pres[0] - t0
        waves_s = posts[-1] - pres[0]
        gaps = [p - max(e for e in posts if e <= p) for p in pres[args.max_parallel:]
                if any(e <= p for e in posts)]
        handover = statistics.median(gaps) if gaps else 0.0
        print(f"rollout of {args.agents} agents, max-parallel {args.max_parallel}: "
              f"{wall:.2f}s; ideal {waves} waves x {alone:.3f}s = {ideal:.2f}s; "
              f"overhead {100 * (wall / ideal - 1):+.1f}%; most updating at once: {most}")
        print(f"  notify to the first place (all agents download and unpack at once): "
              f"{before_first:.2f}s; first pre-update to last post-update: {waves_s:.2f}s "
              f"({waves_s / ideal:.2f}x the ideal); median handover {handover * 1000:.0f} ms")
        result = {"agents": args.agents, "max_parallel": args.max_parallel,
                  "hook_sleep": args.hook_sleep, "one_host_s": alone, "rollout_s": wall,
                  "ideal_s": ideal, "overhead_pct": 100 * (wall / ideal - 1),
                  "most_at_once": most, "idle_requests_per_agent_minute": per,
                  "before_first_place_s": before_first, "waves_s": waves_s,
                  "median_handover_s": handover,
                  "rss_fleet_kib": fleet_rss, "rss_solo_kib": solo_rss}
        out = Path(os.environ.get("BENCH_RESULTS", "/tmp/bench-results"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "fleet.json").write_text(json.dumps(result, indent=2))
        print(f"written to {out / 'fleet.json'}")
    finally:
        for d in daemons:
            d.kill()
        if "solo" in locals():
            solo.kill()
        etcd.stop()


if __name__ == "__main__":
    main()
