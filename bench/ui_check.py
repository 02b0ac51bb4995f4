"""Does the conversion report render in the Prefect UI?  A real server, a real run, a real
browser.

Starts ``prefect server start`` (temporary PREFECT_HOME, a free loopback port), runs
``darknet2tflite convert`` against it (``--from-stage evaluate`` with an existing ``--store``
is enough: the report is published by every run), opens the report artifact's page in
headless Chromium, saves a screenshot of it (and of the run's table artifacts) and the
rendered DOM, and asks the rendered page (DevTools protocol) whether it shows the
float-vs-int8 verdict, holds the pictures as inline ``data:`` images that the browser
decoded (not alt text), and whether any table is wider than its pane.  Whether labels are
legible is for a person looking at the screenshots.

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
#: evaluated in the rendered page: are the pictures decoded, does any table overflow its pane?
PROBE_JS = """JSON.stringify((() => {
  const imgs = [...document.querySelectorAll('img')];
  const inline = imgs.filter(i => i.src.startsWith('data:'));
  const tables = [...document.querySelectorAll('table')];
  return {inline_images: inline.length,
          decoded: inline.filter(i => i.complete && i.naturalWidth > 0).length,
          undecoded_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
          tables: tables.length,
          clipped_tables: tables.filter(t => {
            const pane = t.closest('div') || t.parentElement;
            return t.scrollWidth > pane.clientWidth + 2 || t.getBoundingClientRect().right >
                   pane.getBoundingClientRect().right + 2; }).length,
          verdict: document.body.innerText.includes('int8 vs float32')};
})())"""


def evaluate_in_page(chromium: str, url: str, profile: Path, seconds: float = 20) -> dict:
    """PROBE_JS's answer for ``url`` in headless Chromium (DevTools protocol over a socket)."""
    from websockets.sync.client import connect

    port = free_port()
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             "--window-size=1400,1000", f"--remote-debugging-port={port}",
                             url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > 60:
                raise SystemExit("chromium's DevTools endpoint did not come up")
            time.sleep(0.5)
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
            answer: dict = {}
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:  # the UI renders after its API calls
                ws.send(json.dumps({"id": 1, "method": "Runtime.evaluate",
                                    "params": {"expression": PROBE_JS, "returnByValue": True}}))
                while True:
                    msg = json.loads(ws.recv(timeout=30))
                    if msg.get("id") == 1:
                        break
                answer = json.loads(msg["result"]["result"]["value"])
                if answer["verdict"] and answer["inline_images"] and \
                        answer["decoded"] == answer["inline_images"]:
                    break
                time.sleep(1)
            return answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
        run = subprocess.run([sys.executable, "-m", "cli.main", "--quiet", "convert",
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
        checks = evaluate_in_page(args.chromium, url, profile)
        print(json.dumps(checks), f"screenshot: {out / 'report.png'}")
        shutil.rmtree(profile, ignore_errors=True)
        ok = (checks.get("verdict") and checks.get("inline_images", 0) >= 2
              and checks.get("decoded") == checks.get("inline_images")
              and checks.get("undecoded_images") == 0 and checks.get("clipped_tables") == 0)
        return 0 if ok else 1
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
