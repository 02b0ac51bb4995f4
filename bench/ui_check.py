"""Does the conversion report render in the Prefect UI?  A real server, a real run, a real
browser.

Starts ``prefect server start`` (temporary PREFECT_HOME, a free loopback port), runs
``darknet2tflite convert`` against it (``--from-stage evaluate`` with an existing ``--store``
is enough: the report is published by every run), opens the report artifact's page in
headless Chromium, saves a screenshot of it (and of the run's table artifacts) and the
rendered DOM, and checks that the rendered page holds the pictures as inline ``data:`` images
and the float-vs-int8 verdict.  Whether the pictures decode, the tables fit their pane and the
labels are legible is for a person looking at the screenshots.

    .venv/bin/python bench/ui_check.py --store /tmp/store --out /tmp/ui  # after one convert
    # -> /tmp/ui/report.png (look at it), /tmp/ui/report.html, exit 1 if a check fails

Needs ``chromium`` (Debian: ``apt-get install -y chromium``).  Not part of the CI suite: it
takes a minute and a browser.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--hide-scrollbars"]
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def api(base: str, path: str, body: dict) -> object:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="artifact store of an earlier conversion")
    ap.add_argument("--out", required=True, help="folder for report.png / report.html")
    ap.add_argument("--cfg", default=str(REPO / "cfg" / "yolov3-tiny.mask123.cfg"))
    ap.add_argument("--weights", default=str(REPO.parent / "shared" / "darknet" / "weights"
                                             / "yolov3-tiny.weights"))
    ap.add_argument("--calibration", default=str(REPO / "data" / "samples"))
    ap.add_argument("--from-stage", default="evaluate",
                    help="stages recomputed (evaluate draws the pictures, report writes the "
                         "markdown); default: %(default)s")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="d2t-ui-home-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # the UI asks the server where its API is: PREFECT_UI_API_URL, else port 4200 whatever
    # --port says
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"{base}/api", PYTHONPATH=str(REPO))
    prefect = Path(sys.executable).with_name("prefect")
    server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"{base}/api/health", 180)
        env["PREFECT_API_URL"] = f"{base}/api"
        run = subprocess.run([sys.executable, "-m", "darknet2tflite.cli", "--quiet", "convert",
                              args.cfg, args.weights, "--names", str(REPO / "cfg" / "coco.names"),
                              "--calibration", args.calibration, "--store", args.store,
                              "--out", str(out / "model"), "--from-stage", args.from_stage],
                             env=env, capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        key = f"{Path(args.cfg).stem.lower().replace('.', '-')}-report"
        arts = api(base, "/api/artifacts/filter", {"artifacts": {"key": {"any_": [key]}},
                                                    "sort": "CREATED_DESC", "limit": 1})
        if not arts:
            print(f"no artifact {key} on the server", file=sys.stderr)
            return 1
        url = f"{base}/artifacts/artifact/{arts[0]['id']}"
        print(f"artifact page: {url} ({len(arts[0]['data'] or '')} characters of markdown)")
        profile = Path(tempfile.mkdtemp(prefix="d2t-chromium-"))
        common = [args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                  "--window-size=1400,4200", "--virtual-time-budget=20000"]
        subprocess.run(common + [f"--screenshot={out / 'report.png'}", url],
                       capture_output=True, timeout=180)
        dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True,
                             timeout=180).stdout
        (out / "report.html").write_text(dom, encoding="utf-8")
        # the run's other artifacts (stage, parity, probe and evaluation tables) too
        others = api(base, "/api/artifacts/filter", {"artifacts": {
            "flow_run_id": {"any_": [arts[0]["flow_run_id"]]}}})
        for a in others:
            if a["id"] != arts[0]["id"] and a.get("key"):
                subprocess.run(common + [f"--screenshot={out / (a['key'] + '.png')}",
                                         f"{base}/artifacts/artifact/{a['id']}"],
                               capture_output=True, timeout=180)
        checks = {"inline images in the page": dom.count('src="data:image/'),
                  "verdict shown": "int8 vs float32" in dom,
                  "tables": dom.count("<table")}
        print(json.dumps(checks), f"screenshot: {out / 'report.png'}")
        shutil.rmtree(profile, ignore_errors=True)
        ok = checks["inline images in the page"] >= 2 and checks["verdict shown"]
        return 0 if ok else 1
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
