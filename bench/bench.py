#!/usr/bin/env python3
"""The measurements behind docs/BENCHMARKS.md. Run through bench/run.sh, which prepares the
bundles, the binary and the scratch filesystem; this script only measures and reports.

Every figure is a median over RUNS alternating rounds (the order of the contenders rotates
each round) and is reported as a ratio against a peer measured in the same session. Each
extraction goes into a fresh directory; outputs are deleted between runs, outside the timing.
"""

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MB = 1 << 20
SWITCHED = re.compile(r"switched .* in (\d+)µs \(durable after (\d+)µs\)")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


TIME = "/usr/bin/time"


class Run:
    """One timed process: wall seconds, peak RSS (KiB, GNU time's %M), CPU seconds, stderr."""

    def __init__(self, wall, rss_kib, cpu, stderr, code):
        self.wall, self.rss_kib, self.cpu, self.stderr, self.code = wall, rss_kib, cpu, stderr, code


def timed(argv, env=None, cwd=None):
    """Run argv to completion under GNU time (its peak RSS: the rusage of a process forked
    from Python would count Python's own pages from before the exec); wall time around it."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss:
        t0 = time.perf_counter()
        p = subprocess.Popen([TIME, "-f", "%M", "-o", rss.name, *argv], env=env, cwd=cwd,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        err = p.stderr.read()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        p.stderr.close()
        lines = rss.read().split()
        peak = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return Run(wall, peak, ru.ru_utime + ru.ru_stime, err.decode(errors="replace"), p.returncode)


def must(run, what):
    if run.code != 0:
        sys.exit(f"bench: {what} failed with exit {run.code}:\n{run.stderr[-4000:]}")
    return run


def sync_fs(path):
    subprocess.run(["sync", "-f", path], check=True)


def rmtree(path):
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", path], check=True)


class Bench:
    def __init__(self, a, size):
        self.a, self.size = a, size
        self.data = a.data
        self.zip = {v: os.path.join(a.data, f"{size}{s}.zip")
                    for v, s in (("v1", ""), ("1file", "-v2-1file"), ("1pct", "-v2-1pct"))}
        self.tree = os.path.join(a.data, f"{size}.tree")
        with open(os.path.join(a.data, f"{size}.manifest.json")) as f:
            self.manifest = json.load(f)
        self.work = os.path.join(a.work, size)
        rmtree(self.work)
        os.makedirs(self.work)
        self.runs = a.runs or (3 if size == "large" else 5)
        self.counter = 0
        self.hooks = os.path.join(self.work, "hooks")
        os.makedirs(self.hooks)
        self.cfg = os.path.join(self.work, "empty.cfg")
        open(self.cfg, "w").close()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REPO_DEPLOY_")}
        self.results = dict(size=size, runs=self.runs, zip_bytes=os.path.getsize(self.zip["v1"]),
                            files=self.manifest["archives"]["v1"]["files"],
                            bytes=self.manifest["archives"]["v1"]["bytes"])
        self.switch_us = []
        self.durable_us = []

    def fresh(self, label):
        self.counter += 1
        path = os.path.join(self.work, f"{self.counter:04d}-{label}")
        os.makedirs(path)
        return path

    def agent(self, deploy, remote, reuse=None, extra=()):
        env = dict(self.env)
        if reuse:
            env["REPO_DEPLOY_REUSE"] = reuse
        argv = [self.a.bin, "-c", self.cfg, "-d", deploy, "--pre-hooks", self.hooks,
                "--post-hooks", self.hooks, *extra, "-f", "-r", remote]
        return argv, env

    def deploy(self, deploy, remote, reuse=None, what="repo-deploy"):
        argv, env = self.agent(deploy, remote, reuse)
        run = must(timed(argv, env), what)
        for visible, durable in SWITCHED.findall(run.stderr):
            self.switch_us.append(int(visible))
            self.durable_us.append(int(durable))
        return run

    # ------------------------------------------------------------------ full deploy
    def full(self):
        z, tree = self.zip["v1"], self.tree
        sh = lambda script: ["bash", "-c", script, "_", z, tree]  # noqa: E731
        peers = {
            "repo-deploy -f": None,
            "unzip -q + sync": sh('unzip -q "$1" -d "$3" && sync -f "$3"'),
            "bsdtar -xf + sync": sh('bsdtar -xf "$1" -C "$3" && sync -f "$3"'),
            "python zipfile + sync": sh('python3 -c "import sys, zipfile; '
                                        'zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" '
                                        '"$1" "$3" && sync -f "$3"'),
            "raw limit: tar | tar + sync": sh('tar -cf - -C "$2" . | tar -xf - -C "$3" '
                                              '&& sync -f "$3"'),
        }
        names = list(peers)
        times = {n: [] for n in names}
        rss = {n: [] for n in names}
        for rnd in range(self.runs + 1):  # round 0 warms the page cache and is not kept
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                dest = self.fresh("full")
                sync_fs(self.work)
                if peers[name] is None:
                    run = self.deploy(dest, z)
                else:
                    run = must(timed(peers[name] + [dest]), name)
                if rnd:
                    times[name].append(run.wall)
                    rss[name].append(run.rss_kib)
                rmtree(dest)
            log(f"{self.size} full deploy round {rnd}/{self.runs} done (load {loadavg()})")
        self.results["full"] = {n: dict(median=median(times[n]), min=min(times[n]),
                                        max=max(times[n]), runs=times[n],
                                        peak_rss_mib=max(rss[n]) / 1024) for n in names}

    # ------------------------------------------------------------------ incremental, local
    def incremental(self):
        out = {}
        modes = ["copy", "hardlink", "off"]
        for variant in ("1file", "1pct"):
            times = {m: [] for m in modes}
            verified = {}
            for rnd in range(self.runs + 1):
                order = modes[rnd % 3:] + modes[:rnd % 3]
                for mode in order:
                    d = self.fresh(f"inc-{mode}")
                    self.deploy(d, self.zip["v1"], mode)
                    sync_fs(self.work)
                    run = self.deploy(d, self.zip[variant], mode)
                    if rnd:
                        times[mode].append(run.wall)
                    if mode not in verified:
                        verified[mode] = self.verify(os.path.join(d, "current"), variant)
                    rmtree(d)
                log(f"{self.size} incremental {variant} round {rnd}/{self.runs} (load {loadavg()})")
            out[variant] = {m: dict(median=median(times[m]), runs=times[m], verified=verified[m])
                            for m in modes}
        self.results["incremental"] = out

    def verify(self, release, variant):
        """The release matches make-bundle's listing: types, modes, sizes, mtimes, SHA-256."""
        name = f"{self.size}.listing.tsv" if variant == "v1" else f"{self.size}-v2-{variant}.listing.tsv"
        bad = []
        with open(os.path.join(self.data, name)) as f:
            for line in f:
                if line.startswith("#"):
                    continue
                kind, mode, size, mtime, digest, path = line.rstrip("\n").split("\t", 5)
                p = os.path.join(release, path)
                st = os.lstat(p)
                if kind == "f":
                    with open(p, "rb") as g:
                        ok = (hashlib.sha256(g.read()).hexdigest() == digest
                              and st.st_size == int(size) and int(st.st_mtime) == int(mtime)
                              and st.st_mode & 0o7777 == int(mode, 8))
                elif kind == "l":
                    ok = os.readlink(p) == digest
                else:
                    ok = os.path.isdir(p) and not os.path.islink(p)
                if not ok:
                    bad.append(path)
        if bad:
            sys.exit(f"bench: {release} differs from {name}: {bad[:5]}")
        return True

    # ------------------------------------------------------------------ HTTP (nginx)
    def start_nginx(self):
        self.ngx = tempfile.mkdtemp(prefix="bench-nginx-")
        self.www = os.path.join(self.ngx, "www")
        os.makedirs(self.www)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        d = self.ngx
        conf = f"""daemon off; master_process off; worker_processes 1;
pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  default_type application/zip;
  log_format bench '$status $bytes_sent $body_bytes_sent $request_method $uri "$http_range"';
  access_log {d}/access.log bench;
  client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc;
  uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;
  server {{
    listen 127.0.0.1:{self.port};
    root {self.www};
    location /norange/ {{ alias {self.www}/; max_ranges 0; }}
  }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen([nginx, "-p", d, "-c", os.path.join(d, "nginx.conf"),
                                       "-e", os.path.join(d, "error.log")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("bench: nginx did not start: " + open(os.path.join(d, "error.log")).read())

    def stop_nginx(self):
        self.nginx.terminate()
        self.nginx.wait()
        shutil.rmtree(self.ngx, ignore_errors=True)

    def serve(self, version):
        """Point /app.zip at a bundle (atomic symlink swap; nginx's ETag is mtime-size)."""
        tmp = os.path.join(self.www, ".app.zip.tmp")
        os.symlink(self.zip[version], tmp)
        os.replace(tmp, os.path.join(self.www, "app.zip"))

    def log_mark(self):
        path = os.path.join(self.ngx, "access.log")
        return os.path.getsize(path) if os.path.exists(path) else 0

    def log_since(self, mark):
        with open(os.path.join(self.ngx, "access.log")) as f:
            f.seek(mark)
            lines = [l.split(" ", 5) for l in f.read().splitlines() if l]
        return [dict(status=int(l[0]), sent=int(l[1]), body=int(l[2]), method=l[3], uri=l[4],
                     range=l[5].strip('"')) for l in lines]

    def http(self):
        url = f"http://127.0.0.1:{self.port}/app.zip"
        norange = f"http://127.0.0.1:{self.port}/norange/app.zip"
        cases = [("full", None, "1file", url)] + [
            (variant, mode, variant, url) for variant in ("1file", "1pct")
            for mode in ("copy", "hardlink", "off")] + [("1file-norange", "copy", "1file", norange)]
        times = {c[0] + "/" + str(c[1]): [] for c in cases}
        sent = {k: [] for k in times}
        requests = {k: [] for k in times}
        for rnd in range(self.runs + 1):
            for case in cases[rnd % len(cases):] + cases[:rnd % len(cases)]:
                label, mode, variant, remote = case
                key = label + "/" + str(mode)
                d = self.fresh("http")
                if label != "full":
                    self.serve("v1")
                    self.deploy(d, remote, mode)
                    sync_fs(self.work)
                self.serve(variant)
                mark = self.log_mark()
                run = self.deploy(d, remote, mode)
                if rnd:
                    lines = self.log_since(mark)
                    times[key].append(run.wall)
                    sent[key].append(sum(l["sent"] for l in lines))
                    requests[key].append(len(lines))
                rmtree(d)
            log(f"{self.size} http round {rnd}/{self.runs} (load {loadavg()})")
        zip_bytes = {v: os.path.getsize(self.zip[v]) for v in ("1file", "1pct")}
        self.results["http"] = {
            k: dict(median=median(times[k]), runs=times[k], bytes_sent=median(sent[k]),
                    requests=median(requests[k]),
                    zip_bytes=zip_bytes["1pct" if k.startswith("1pct") else "1file"])
            for k in times}

    # ------------------------------------------------------------------ unchanged checks
    def daemon(self, remote, label, checks):
        d = self.fresh("daemon")
        self.deploy(d, remote)
        argv, env = self.agent(d, remote, extra=["-s", "0 0 1 1 *"])
        argv.remove("-f")
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = [0]
        cond = threading.Condition()
        tail = []

        def reader():
            for line in p.stderr:
                tail.append(line)
                del tail[:-20]
                if "unchanged" in line:
                    with cond:
                        seen[0] += 1
                        cond.notify_all()

        threading.Thread(target=reader, daemon=True).start()

        def wait_for(n):
            with cond:
                if not cond.wait_for(lambda: seen[0] >= n, timeout=30):
                    p.kill()
                    sys.exit(f"bench: daemon did not report check {n}:\n{''.join(tail)}")

        def cpu_ticks():
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)

        def status(key):
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024
            return float("nan")

        wait_for(1)
        rss = {"1": status("VmRSS")}
        mark = self.log_mark() if remote.startswith("http") else 0
        s3_mark = len(self.s3_requests()) if remote.startswith("s3") else 0
        t0, c0 = time.perf_counter(), cpu_ticks()
        for i in range(1, checks + 1):
            os.kill(p.pid, signal.SIGUSR1)
            wait_for(i + 1)
            if i in (100, checks // 2):
                rss[str(i)] = status("VmRSS")
        wall = time.perf_counter() - t0
        cpu = (cpu_ticks() - c0) / os.sysconf("SC_CLK_TCK")
        rss[str(checks)] = status("VmRSS")
        hwm = status("VmHWM")
        out = dict(checks=checks, cpu_ms_per_check=cpu / checks * 1000,
                   wall_ms_per_check=wall / checks * 1000, rss_mib=rss, vmhwm_mib=hwm,
                   rss_anon_mib=status("RssAnon"), rss_file_mib=status("RssFile"))
        if remote.startswith("http"):
            lines = self.log_since(mark)
            out["requests_per_check"] = len(lines) / checks
            out["body_bytes"] = sum(l["body"] for l in lines)
            out["statuses"] = sorted({l["status"] for l in lines})
        if remote.startswith("s3"):
            lines = self.s3_requests()[s3_mark:]
            out["requests_per_check"] = len(lines) / checks
            # moto logs no body sizes: a 304 has none by definition.
            out["body_bytes"] = 0 if all(st == 304 for _, st in lines) else "n/a"
            out["statuses"] = sorted({st for _, st in lines})
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        rmtree(d)
        self.results.setdefault("daemon", {})[label] = out

    def daemon_s3(self, checks):
        """The same measurement against an S3 object served by moto (a real S3 API with
        SigV4 checks, as in the tests); requests counted from moto's request log."""
        moto = shutil.which("moto_server")
        try:
            import boto3
        except ImportError:
            boto3 = None
        if not moto or not boto3:
            log("bench: moto_server or boto3 missing (pip install 'moto[server]'): no S3 daemon figures")
            return
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        logf = tempfile.NamedTemporaryFile(prefix="bench-moto-", suffix=".log", delete=False)
        server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=logf, stderr=subprocess.STDOUT)
        endpoint = f"http://127.0.0.1:{port}"
        keys = dict(aws_access_key_id="bench", aws_secret_access_key="bench-secret")
        saved = dict(self.env)
        try:
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
            for _ in range(100):
                try:
                    client.create_bucket(Bucket="bench-app")
                    break
                except Exception:  # not listening yet
                    time.sleep(0.1)
            client.upload_file(self.zip["v1"], "bench-app", "app.zip")
            self.env.update(REPO_DEPLOY_S3_ENDPOINT=endpoint, REPO_DEPLOY_AWS_REGION="us-east-1",
                            REPO_DEPLOY_AWS_ACCESS_KEY=keys["aws_access_key_id"],
                            REPO_DEPLOY_AWS_SECRET_KEY=keys["aws_secret_access_key"])
            self.s3_log = logf.name
            self.daemon("s3://bench-app/app.zip", "s3", checks)
        finally:
            self.env = saved
            self.s3_log = None
            server.terminate()
            server.wait(timeout=30)
            os.unlink(logf.name)

    def s3_requests(self):
        """The object requests in moto's log so far: (method, status) each."""
        out = []
        with open(self.s3_log, errors="replace") as f:
            for line in f:
                m = re.search(r'"(GET|HEAD) /bench-app/app\.zip[^"]*" (\d{3})', line)
                if m:
                    out.append((m.group(1), int(m.group(2))))
        return out

    # ------------------------------------------------------------------ all of it
    def run(self, only):
        started = time.time()
        self.results["load_before"] = loadavg()
        if "full" in only:
            self.full()
        if "incremental" in only:
            self.incremental()
        if "http" in only or "daemon" in only:
            self.start_nginx()
            try:
                if "http" in only:
                    self.http()
                if "daemon" in only:
                    self.serve("v1")
                    self.daemon(f"http://127.0.0.1:{self.port}/app.zip", "http", self.a.checks)
                    self.daemon(self.zip["v1"], "local zip", self.a.checks)
            finally:
                self.stop_nginx()
        if "daemon" in only:
            self.daemon_s3(self.a.checks)
        self.results["switch_us"] = dict(median=median(self.switch_us),
                                         max=max(self.switch_us, default=0),
                                         n=len(self.switch_us))
        self.results["durable_us"] = dict(median=median(self.durable_us),
                                          max=max(self.durable_us, default=0),
                                          n=len(self.durable_us))
        self.results["load_after"] = loadavg()
        self.results["seconds"] = round(time.time() - started)
        rmtree(self.work)
        return self.results


# ---------------------------------------------------------------------- report
def report(r, note):
    out = []
    p = out.append
    p(f"\n## {r['size']}: {r['files']:,} files, {r['bytes'] / MB:.0f} MiB "
      f"(ZIP {r['zip_bytes'] / MB:.0f} MiB); medians of {r['runs']} alternating rounds")
    p(f"load average before/after: {r['load_before']}/{r['load_after']}; {note}")
    goals = []
    if "full" in r:
        f = r["full"]
        unzip, raw = f["unzip -q + sync"]["median"], f["raw limit: tar | tar + sync"]["median"]
        p("\n| full deploy, warm cache (+ sync) | median s | min–max s | × unzip -q | "
          "× raw limit | peak RSS MiB |")
        p("|---|---:|---:|---:|---:|---:|")
        for name, v in f.items():
            p(f"| {name} | {v['median']:.3f} | {v['min']:.3f}–{v['max']:.3f} | "
              f"{v['median'] / unzip:.2f} | {v['median'] / raw:.2f} | {v['peak_rss_mib']:.1f} |")
        me = f["repo-deploy -f"]
        goals += [("full deploy ≤ 0.5× unzip -q", me["median"] / unzip, 0.5),
                  ("full deploy ≤ 1.3× raw limit", me["median"] / raw, 1.3),
                  ("peak RSS ≤ 64 MiB", me["peak_rss_mib"], 64)]
    if "incremental" in r:
        full = r.get("full", {}).get("repo-deploy -f", {}).get("median")
        p("\n| incremental, local ZIP (v1 live) | reuse | median s | × full deploy | "
          "× reuse=off |")
        p("|---|---|---:|---:|---:|")
        for variant, modes in r["incremental"].items():
            off = modes["off"]["median"]
            for mode, v in modes.items():
                xf = f"{v['median'] / full:.3f}" if full else "–"
                p(f"| {variant} | {mode} | {v['median']:.3f} | {xf} | {v['median'] / off:.3f} |")
        if full:
            goals.append(("one-file update ≤ 0.15× full deploy (local, copy)",
                          r["incremental"]["1file"]["copy"]["median"] / full, 0.15))
    if "http" in r:
        h = r["http"]
        full = h["full/None"]["median"]
        p("\n| over HTTP (nginx, loopback) | median s | × full HTTP deploy | requests | "
          "bytes sent | % of ZIP |")
        p("|---|---:|---:|---:|---:|---:|")
        for key, v in h.items():
            label = "full deploy (nothing live)" if key == "full/None" else \
                f"{key.split('/')[0]} update, reuse={key.split('/')[1]}"
            p(f"| {label} | {v['median']:.3f} | {v['median'] / full:.3f} | {v['requests']:.0f} | "
              f"{v['bytes_sent']:,.0f} | {100 * v['bytes_sent'] / v['zip_bytes']:.2f} |")
        one = h["1file/copy"]
        goals += [("one-file update over HTTP: bytes ≤ 2% of the ZIP",
                   100 * one["bytes_sent"] / one["zip_bytes"], 2),
                  ("one-file update over HTTP ≤ 0.15× full HTTP deploy", one["median"] / full, 0.15)]
    if "daemon" in r:
        p("\n| unchanged checks of a running daemon | checks | CPU ms/check | wall ms/check | "
          "RSS MiB after 1 / 100 / N/2 / N | of which anon / file (at N) | requests/check | "
          "body bytes |")
        p("|---|---:|---:|---:|---|---|---:|---:|")
        for label, v in r["daemon"].items():
            rss = " / ".join(f"{x:.1f}" for x in v["rss_mib"].values())
            p(f"| {label} | {v['checks']} | {v['cpu_ms_per_check']:.3f} | "
              f"{v['wall_ms_per_check']:.3f} | {rss} | "
              f"{v['rss_anon_mib']:.1f} / {v['rss_file_mib']:.1f} | {v.get('requests_per_check', '–')} | "
              f"{v.get('body_bytes', '–')} |")
            last = list(v["rss_mib"].values())
            goals += [(f"unchanged check ({label}) < 5 ms CPU", v["cpu_ms_per_check"], 5),
                      (f"idle RSS ({label}) ≤ 8 MiB after {v['checks']} checks", last[-1], 8),
                      (f"idle RSS ({label}) no growth from check 100 to {v['checks']} (MiB)",
                       last[-1] - last[1], 0.5)]
    s = r["switch_us"]
    d = r.get("durable_us", dict(median=0, max=0))
    p(f"\nswitch (\"switched … in Nµs\", {s['n']} deploys): median {s['median']:.0f} µs, "
      f"max {s['max']} µs; durable (the directory fsynced) median {d['median']:.0f} µs, "
      f"max {d['max']} µs")
    goals.append(("switch < 1 ms (max)", s["max"] / 1000, 1))
    goals.append(("switch durable < 1 ms (max)", d["max"] / 1000, 1))
    p("\n| goal | measured | limit | |")
    p("|---|---:|---:|---|")
    for name, value, limit in goals:
        p(f"| {name} | {value:.3f} | {limit} | {'met' if value <= limit else 'MISSED'} |")
    return "\n".join(out)


def growth(all_results):
    out = ["\n## growth with size (medians; ratios against unzip -q + sync of the same bundle)",
           "| bundle | files | unzip -q s | full deploy s | × unzip | one-file update s | "
           "× unzip | 1% update s | × unzip |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in all_results:
        if "full" not in r:
            continue
        u = r["full"]["unzip -q + sync"]["median"]
        me = r["full"]["repo-deploy -f"]["median"]
        inc = r.get("incremental", {})
        one = inc.get("1file", {}).get("copy", {}).get("median", float("nan"))
        pct = inc.get("1pct", {}).get("copy", {}).get("median", float("nan"))
        out.append(f"| {r['size']} | {r['files']:,} | {u:.3f} | {me:.3f} | {me / u:.2f} | "
                   f"{one:.3f} | {one / u:.3f} | {pct:.3f} | {pct / u:.3f} |")
    return "\n".join(out)


def machine(note):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"load average {loadavg()} at start; extraction targets: {note}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--fs-note", default="")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RUNS", "0")))
    ap.add_argument("--checks", type=int, default=int(os.environ.get("CHECKS", "1000")))
    ap.add_argument("sizes", nargs="+")
    a = ap.parse_args()
    only = set(filter(None, os.environ.get("BENCH_ONLY", "full,incremental,http,daemon").split(",")))
    print(machine(a.fs_note), flush=True)
    all_results = []
    for size in a.sizes:
        r = Bench(a, size).run(only)
        r["machine"] = machine(a.fs_note)
        with open(os.path.join(a.results, f"{size}.json"), "w") as f:
            json.dump(r, f, indent=1)
        all_results.append(r)
        print(report(r, a.fs_note), flush=True)
    if len(all_results) > 1:
        print(growth(all_results), flush=True)
    print(f"\nJSON: {a.results}/<size>.json", flush=True)


if __name__ == "__main__":
    main()
