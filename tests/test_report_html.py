"""report.html opens in headless Chromium with no console errors and every embedded image decodes.

How: a copy of the report gets a probe script as the first element of <head> that records `error` events
(script errors and failed resource loads) and `console.error` calls, and on `load` writes them plus the
count of images that did not decode into a `<div id="__probe">`; Chromium runs it with `--dump-dom`
(no CDP needed). Chromium's own console log (`--enable-logging=stderr`) is checked too: the report has
no scripts, so any CONSOLE line there is a failure.

Chromium: Debian's `chromium` package. When it is missing and we run as root, the fixture installs it
(`apt-get update && apt-get install -y chromium`, as scripts/setup.sh does for `dev`); otherwise the tests
skip with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vlmdet.report.cli import build_report

from test_report import make_run, sample  # noqa: E402  (same tests folder)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom"]

PROBE = """<script>
window.__errs=[];
window.addEventListener('error',function(e){window.__errs.push(String(e.message||('resource error: '+((e.target&&e.target.src)||'?').slice(0,60))));},true);
(function(){var ce=console.error;console.error=function(){window.__errs.push('console.error: '+Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();
window.addEventListener('load',function(){var im=document.images,bad=0;for(var i=0;i<im.length;i++){if(!(im[i].complete&&im[i].naturalWidth>0))bad++;}
var d=document.createElement('div');d.id='__probe';d.setAttribute('data-images',String(im.length));d.setAttribute('data-bad',String(bad));
d.textContent=JSON.stringify(window.__errs);document.body.appendChild(d);});
</script>"""


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find_chromium()
    if path:
        return path
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium not installed and cannot be installed here (needs root + apt-get): "
                    "run `apt-get install -y chromium`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"installing chromium failed ({' '.join(cmd)}): {proc.stderr.strip()[-300:]}")
    path = _find_chromium()
    if not path:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return path


def open_in_chromium(chromium: str, html_path: Path, tmp_path: Path) -> dict:
    """Load a probed copy of `html_path`; return {"images", "bad_images", "errors", "console"}."""
    html = html_path.read_text(encoding="utf-8")
    head = html.index("<head>") + len("<head>")
    probed = tmp_path / "probed.html"
    probed.write_text(html[:head] + PROBE + html[head:], encoding="utf-8")
    proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<div id="__probe" data-images="(\d+)" data-bad="(\d+)">(.*?)</div>', proc.stdout, re.S)
    assert m, "the probe did not run (page never reached `load`): " + proc.stdout[-500:]
    import html as html_mod

    return {"images": int(m.group(1)), "bad_images": int(m.group(2)),
            "errors": json.loads(html_mod.unescape(m.group(3))),
            "console": [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]}


@pytest.mark.slow
def test_probe_catches_errors(chromium, tmp_path):
    """Control: a page with a broken image and a script error must be reported as broken."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img src="data:image/png;base64,AAAA">'
                    "<script>undefinedFunction();</script></body></html>")
    res = open_in_chromium(chromium, page, tmp_path)
    assert res["images"] == 1 and res["bad_images"] == 1
    assert any("undefinedFunction" in e for e in res["errors"])
    assert any("undefinedFunction" in line for line in res["console"])


@pytest.mark.slow
def test_report_html_opens_without_errors(chromium, tmp_path):
    bad_raw = '{"objects": [{"desc": "red <b>circle</b>", "bbox_2d": [85, <|coord_3|>]}]}'
    span = [13, len(bad_raw) - 2]
    a = make_run(tmp_path, "a", {300: {"bbox_AP50": 0.5, "drop/non_coord_token": 1}},
                 [{"step": 300, "loss/token_ce": 1.0, "loss/coord_gate": 0.3}],
                 dumps={300: [sample(tmp_path, "img0", bad_raw, drops=[{"reason": "non_coord_token", "index": 0, "span": span}]),
                              sample(tmp_path, "img1", '{"objects": []}')]})
    b = make_run(tmp_path, "b", {}, [])
    paths = build_report([a, b], tmp_path / "rep", steps=[300, 600])
    n_img = paths["html"].read_text().count("<img ")
    res = open_in_chromium(chromium, paths["html"], tmp_path)
    assert res["errors"] == []
    assert res["console"] == []
    assert res["images"] == n_img and n_img >= 8
    assert res["bad_images"] == 0
