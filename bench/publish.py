#!/usr/bin/env python3
"""bench/publish.py - `repo-deploy publish` of the medium tree against its peers, in one run.

    CARGO_TARGET_DIR=/work/bench-target cargo build --release
    CARGO_TARGET_DIR=/work/bench-target python3 bench/publish.py [--runs 5]

Unsigned: `repo-deploy publish TREE out.zip` against `zip -qr -X out.zip .` (Info-ZIP, deflate
level 6, no extra fields). Signed: `repo-deploy publish TREE out.zip --sign KEY` against the
same `zip` followed by `minisign -S`. Runs alternate candidate and peer, each into a new file
in one directory, after a warm-up that puts the tree in the page cache and a `sync`; medians
and their ratio are printed and written to /tmp/bench-results/publish.json.

The tree is make-bundle.py's medium preset (10,000 files, 300 MiB), outside the repository.
"""

import argparse
import json
import os
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
PASSWORD = "bench-password"


def timed(cmd, **kw):
    subprocess.run(["sync"], check=True)
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tree = DATA / "medium.tree"
    if not tree.is_dir():
        subprocess.run([sys.executable, str(SHARED / "make-bundle.py"), "--preset", "medium",
                        "--out", str(DATA)], check=True)
    if not BIN.exists():
        raise SystemExit(f"{BIN} missing: CARGO_TARGET_DIR={TARGET} cargo build --release")
    out = Path(tempfile.mkdtemp(prefix="publish-bench-", dir=os.environ.get("BENCH_OUT")))
    key = out / "k.key"
    subprocess.run(["minisign", "-G", "-p", str(out / "k.pub"), "-s", str(key)], check=True,
                   input=f"{PASSWORD}\n{PASSWORD}\n", text=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, REPO_DEPLOY_SIGN_PASSWORD=PASSWORD)
    # Warm-up: the tree in the page cache, both tools loaded.
    subprocess.run(["tar", "-cf", "/dev/null", "."], cwd=tree, check=True)
    ours = lambda name, sign: [str(BIN), "-c", "/dev/null", "publish", str(tree), str(out / name)] + (
        ["--sign", str(key)] if sign else [])
    timed(ours("warm.zip", False), env=env)
    times = {"publish": [], "zip": [], "publish --sign": [], "zip + minisign -S": []}
    for i in range(args.runs):
        times["publish"].append(timed(ours(f"p{i}.zip", False), env=env))
        times["zip"].append(timed(["zip", "-qr", "-X", str(out / f"z{i}.zip"), "."], cwd=tree))
        times["publish --sign"].append(timed(ours(f"ps{i}.zip", True), env=env))
        t = timed(["zip", "-qr", "-X", str(out / f"zs{i}.zip"), "."], cwd=tree)
        t += timed(["minisign", "-S", "-s", str(key), "-m", str(out / f"zs{i}.zip")],
                   input=f"{PASSWORD}\n", text=True)
        times["zip + minisign -S"].append(t)
        for f in out.glob("*.zip*"):
            f.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    sizes = {}
    for k, v in med.items():
        print(f"{k:22s} median {v:6.2f}s  runs {' '.join(f'{x:.2f}' for x in times[k])}")
    result = {
        "runs": args.runs, "medians_s": med,
        "ratio_unsigned": med["publish"] / med["zip"],
        "ratio_signed": med["publish --sign"] / med["zip + minisign -S"],
    }
    print(f"publish / zip -qr: {result['ratio_unsigned']:.2f}x; "
          f"publish --sign / (zip + minisign -S): {result['ratio_signed']:.2f}x")
    res = Path(os.environ.get("BENCH_RESULTS", "/tmp/bench-results"))
    res.mkdir(parents=True, exist_ok=True)
    (res / "publish.json").write_text(json.dumps(result, indent=2))
    subprocess.run(["rm", "-rf", str(out)], check=True)


if __name__ == "__main__":
    main()
