#!/usr/bin/env python3
"""bench/verify.py - the cost of signed releases: a full deploy with and without
`trusted-keys`, in one run, and the peak RSS of a signed deploy.

    CARGO_TARGET_DIR=/work/bench-target cargo build --release
    sudo CARGO_TARGET_DIR=/work/bench-target python3 bench/verify.py [--runs 7] [--sizes small,medium]

For each bundle (make-bundle.py's presets, outside the repository) nginx on 127.0.0.1 serves the
ZIP and its `.minisig` (Debian's `minisign -S`). Rounds alternate `repo-deploy -f` from the URL
without a trust setting (peer) and with `trusted-keys` (candidate), each into a new deploy
directory on a fresh ext4 (shared/bench/scratch-fs.sh, as root; else a temporary directory,
noisier), after `sync`; the deploy directories are removed between rounds. Medians, their ratio
and the peak RSS of each (GNU time) are printed and written to /tmp/bench-results/verify.json.
`max-size` is set to the bundle's unpacked size, so the medium row is "a ZIP the size of
max-size"; RSS across sizes shows whether memory grows with the ZIP.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared" / "bench"))
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/bench-data"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
BIN = TARGET / "release" / "repo-deploy"


def nginx(www: Path):
    d = Path(tempfile.mkdtemp(prefix="verify-nginx-"))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    (d / "nginx.conf").write_text(f"""daemon off; master_process off; worker_processes 1;
pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  default_type application/zip; access_log off;
  client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc;
  uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;
  server {{ listen 127.0.0.1:{port}; root {www}; }}
}}
""")
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-e",
                             str(d / "error.log")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port, d
        except OSError:
            time.sleep(0.05)
    sys.exit("nginx did not start: " + (d / "error.log").read_text())


def deploy(config: Path, deploy_dir: Path, url: str):
    """One full deploy; (wall seconds, peak RSS KiB)."""
    subprocess.run(["sync"], check=True)
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", str(BIN), "-c", str(config), "-d",
                        str(deploy_dir), "--pre-hooks", "/nonexistent", "--post-hooks",
                        "/nonexistent", "-f", "-r", url],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"deploy failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall, int(p.stderr.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", default="small,medium")
    args = ap.parse_args()
    if not BIN.exists():
        raise SystemExit(f"{BIN} missing: CARGO_TARGET_DIR={TARGET} cargo build --release")
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time missing: apt-get install time")
    scratch = None
    if os.geteuid() == 0 and (SHARED / "scratch-fs.sh").exists():
        subprocess.run(["bash", str(SHARED / "scratch-fs.sh"), "up"], check=True,
                       stdout=subprocess.DEVNULL)
        scratch = Path("/tmp/bench-fs/work")
    work = Path(tempfile.mkdtemp(prefix="verify-bench-", dir=scratch))
    keys = work / "keys"
    keys.mkdir()
    subprocess.run(["minisign", "-G", "-W", "-p", str(keys / "k.pub"), "-s",
                    str(keys / "k.key")], check=True, stdout=subprocess.DEVNULL)
    www = Path(tempfile.mkdtemp(prefix="verify-www-"))
    proc, port, ngx = nginx(www)
    results = {"runs": args.runs, "scratch_fs": bool(scratch), "sizes": {}}
    try:
        for size in args.sizes.split(","):
            zip_path = DATA / f"{size}.zip"
            if not zip_path.exists():
                subprocess.run([sys.executable, str(SHARED / "make-bundle.py"), "--preset", size,
                                "--out", str(DATA)], check=True)
            served = www / "app.zip"
            shutil.copyfile(zip_path, served)
            subprocess.run(["minisign", "-S", "-s", str(keys / "k.key"), "-m", str(served)],
                           check=True, stdout=subprocess.DEVNULL)
            manifest = json.loads((DATA / f"{size}.manifest.json").read_text())
            unpacked = manifest["archives"]["v1"]["bytes"]
            limit = f"max-size = {unpacked}\n" if unpacked else ""
            plain, signed = work / "plain.cfg", work / "signed.cfg"
            plain.write_text(limit)
            signed.write_text(limit + f"trusted-keys = {keys / 'k.pub'}\n")
            url = f"http://127.0.0.1:{port}/app.zip"
            subprocess.run(["cat", str(served)], check=True, stdout=subprocess.DEVNULL)
            times = {"without trusted-keys": [], "with trusted-keys": []}
            rss = {k: [] for k in times}
            for i in range(args.runs + 1):
                for label, cfg in (("without trusted-keys", plain), ("with trusted-keys", signed)):
                    d = work / f"d-{label[:4]}-{i}"
                    wall, kib = deploy(cfg, d, url)
                    shutil.rmtree(d)
                    subprocess.run(["sync"], check=True)
                    if i > 0:  # round 0 is the warm-up
                        times[label].append(wall)
                        rss[label].append(kib)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "zip_bytes": served.stat().st_size,
                "max_size": unpacked,
                "medians_s": med,
                "runs_s": times,
                "peak_rss_kib": {k: max(v) for k, v in rss.items()},
                "ratio": med["with trusted-keys"] / med["without trusted-keys"],
            }
            results["sizes"][size] = row
            for k in times:
                print(f"{size:7s} {k:22s} median {med[k]:6.3f}s  peak RSS "
                      f"{row['peak_rss_kib'][k] / 1024:6.1f} MiB  runs "
                      f"{' '.join(f'{x:.3f}' for x in times[k])}")
            print(f"{size:7s} with / without trusted-keys: {row['ratio']:.3f}x")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(ngx, ignore_errors=True)
        shutil.rmtree(www, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if scratch:
            subprocess.run(["bash", str(SHARED / "scratch-fs.sh"), "down"], check=False)
    res = Path(os.environ.get("BENCH_RESULTS", "/tmp/bench-results"))
    res.mkdir(parents=True, exist_ok=True)
    (res / "verify.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
