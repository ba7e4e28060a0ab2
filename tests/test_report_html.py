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
var split=0,ts=document.querySelectorAll('pre .t');for(var j=0;j<ts.length;j++){if(ts[j].getClientRects().length>1)split++;}
var over=document.documentElement.scrollWidth-window.innerWidth;
var d=document.createElement('div');d.id='__probe';d.setAttribute('data-images',String(im.length));d.setAttribute('data-bad',String(bad));
d.setAttribute('data-overflow',String(over));d.setAttribute('data-split',String(split));
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


def open_in_chromium(chromium: str, html_path: Path, tmp_path: Path, width: int = 1400) -> dict:
    """Load a probed copy of `html_path` in a `width` px wide window; return {"images", "bad_images",
    "errors", "console", "overflow" (px the page is wider than the window), "split_tokens" (special
    tokens of the raw answers that the layout broke over two lines)}."""
    html = html_path.read_text(encoding="utf-8")
    head = html.index("<head>") + len("<head>")
    probed = tmp_path / "probed.html"
    probed.write_text(html[:head] + PROBE + html[head:], encoding="utf-8")
    proc = subprocess.run([chromium, *FLAGS, f"--window-size={width},1000", f"--user-data-dir={tmp_path / 'profile'}",
                           probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<div id="__probe" data-images="(\d+)" data-bad="(\d+)" data-overflow="(-?\d+)" data-split="(\d+)">'
                  r"(.*?)</div>", proc.stdout, re.S)
    assert m, "the probe did not run (page never reached `load`): " + proc.stdout[-500:]
    import html as html_mod

    return {"images": int(m.group(1)), "bad_images": int(m.group(2)), "overflow": int(m.group(3)),
            "split_tokens": int(m.group(4)), "errors": json.loads(html_mod.unescape(m.group(5))),
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
    # drop heat-map, the 3 plots with data (loss_coord_gate, loss_ce, bbox_AP50), 2 examples
    assert res["images"] == n_img == 6
    assert res["bad_images"] == 0


# --------------------------------------------------------------------------------------------------
# A gate-ablation-like set of runs (2 grad modes x gate on/off), viewed in Chromium at two widths.

SCREEN_WIDTHS = {"desktop": 1400, "phone": 390}


def _dump_sample(data: Path, rec: dict, text: str, preds: list[tuple[str, list[float], float]], matches) -> dict:
    """A monitor-dump sample whose flags and drops come from the strict parser itself."""
    from vlmdet.parse import parse_prediction

    res = parse_prediction(text)
    return {"image_id": rec["image_id"], "image": str(data / rec["image"]), "width": 128, "height": 128,
            "raw_text": text, "raw_text_chars": len(text),
            "flags": {"failed": res.failed, "truncated": res.truncated, "malformed_container": res.malformed_container,
                      "incomplete_tail": bool(res.incomplete_tail), "empty_pred": not res.objects,
                      "hit_max_new_tokens": res.truncated},
            "objects": [{"index": i, "desc": d, "bins": [0, 0, 1, 1], "bbox_2d": b, "score": sc}
                        for i, (d, b, sc) in enumerate(preds)],
            "drops": [{"reason": d.reason, "index": d.index, "span": list(d.span), "text": text[d.span[0]:d.span[1]]}
                      for d in res.dropped],
            "gt": [{"desc": o["desc"], "bbox_2d": o["bbox_2d"]} for o in rec["objects"]],
            "matches": [{"pred": p, "gt": g, "iou": 0.8} for p, g in matches]}


def ablation_runs(tmp: Path) -> list[Path]:
    from vlmdet.data.synth import make_synth

    from test_report import make_run

    data = tmp / "data"
    make_synth(data, n_train=1, n_val=2, seed=0)
    recs = [json.loads(line) for line in (data / "val.jsonl").read_text().splitlines()]
    c = "<|coord_{}|>".format

    def rec_text(desc, bins):
        return '{"desc": "' + desc + '", "bbox_2d": [' + ", ".join(c(b) if isinstance(b, int) else b for b in bins) + "]}"

    r0 = recs[0]["objects"]
    good = [rec_text(o["desc"], [int(v * 1000 / 128) for v in o["bbox_2d"]]) for o in r0]
    bad = rec_text("red circle", ["85", 40, "red", 300])
    text_bad = '{"objects": [' + ", ".join([good[0], bad, good[1]]) + ', {"desc": "red circ'
    text_ok = '{"objects": [' + ", ".join(good[:2] + [rec_text("blue square", [10, 420, 400, 830])]) + "]}"
    preds_bad = [(o["desc"], o["bbox_2d"], 0.91 - 0.1 * i) for i, o in enumerate(r0[:2])]
    preds_ok = [(o["desc"], o["bbox_2d"], 0.95) for o in r0[:2]] + [("blue square", r0[2]["bbox_2d"], 0.62)]
    runs = []
    for gi, grad in enumerate(("unroll", "em_detach")):
        for gate in (1.0, 0.0):
            name = f"a_only_{grad}_gate_{'on' if gate else 'off'}"
            evals = {}
            for k, step in enumerate((100, 200, 300)):
                drop = 0 if gate else 2 * k + gi
                evals[step] = {"bbox_AP50": 0.5 + 0.03 * k - 0.05 * gi, "bbox_AP": 0.3 + 0.02 * k, "f1": 0.6 + 0.02 * k,
                               "precision": 0.7, "recall": 0.6, "sample_valid_pred_rate": 1.0 - 0.01 * drop,
                               "parse_dropped_invalid": drop, "drop/non_coord_token": drop // 2,
                               "drop/wrong_arity": drop - drop // 2, "drop/malformed": 0,
                               "coord_vocab_mass_gen": 0.99 if gate else 0.9 - 0.1 * k, "empty_pred_rate": 0.0}
            logs = [{"step": s, "loss/token_ce": 1.5 / (1 + s / 50), "loss/coord_gate": 0.05 + (0 if gate else s / 2000),
                     "coord_diag/coord_vocab_mass_mean": 0.98 if gate else 0.98 - s / 1000} for s in range(10, 301, 10)]
            cfg = {"run_name": name, "stage": 2, "seed": 0, "stage2": {"softctx_grad_mode": grad, "n_softctx_iter": 2},
                   "losses": {"coord_gate": gate, "ce_on_coord_slots": False}, "training": {"max_steps": 300}}
            dumps = {300: [_dump_sample(data, recs[0], text_bad, preds_bad, [(0, 0), (1, 1)]),
                           _dump_sample(data, recs[0], text_ok, preds_ok, [(0, 0), (1, 1), (2, 2)])]}
            runs.append(make_run(tmp, name, evals, logs, dumps, cfg))
    return runs


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the screenshots are kept: $VLMDET_SCREENSHOT_DIR when set, else `<test tmp dir>/screenshots`."""
    d = Path(os.environ.get("VLMDET_SCREENSHOT_DIR") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def screenshot(chromium: str, html_path: Path, out: Path, width: int, height: int, tmp_path: Path) -> None:
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           f"--user-data-dir={tmp_path / 'profile_shot'}", f"--window-size={width},{height}",
                           f"--screenshot={out}", "--virtual-time-budget=5000", html_path.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]


@pytest.mark.slow
def test_probe_catches_overflow_and_split_tokens(chromium, tmp_path):
    """Control: a wide table without a scroll box and a token in a break-anywhere <pre> are both caught."""
    page = tmp_path / "wide.html"
    token = '<span class="t">&lt;|coord_499|&gt;</span>'
    page.write_text('<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width"></head><body>'
                    '<table><tr><td style="white-space:nowrap">' + "x" * 400 + "</td></tr></table>"
                    '<pre style="white-space:pre-wrap;word-break:break-all;width:60px">' + token * 3 + "</pre></body></html>")
    res = open_in_chromium(chromium, page, tmp_path, width=390)
    assert res["overflow"] > 0 and res["split_tokens"] > 0


@pytest.mark.slow
def test_report_page_at_desktop_and_phone_width(chromium, tmp_path):
    """The report of four factorial runs at 1400 px and at phone width: no errors, every image decodes, the
    page never scrolls sideways (wide tables scroll in their own box), no `<|coord_k|>` is broken over two
    lines. Full-page screenshots are kept in `screenshot_dir` (report_desktop.png, report_phone.png)."""
    from PIL import Image

    paths = build_report(ablation_runs(tmp_path), tmp_path / "rep")
    html = paths["html"].read_text()
    assert html.count('<pre>') == 8 and html.count('<span class="t">') == 88  # 4 runs x (10 + 12) coord tokens
    shots = screenshot_dir(tmp_path)
    for name, width in SCREEN_WIDTHS.items():
        res = open_in_chromium(chromium, paths["html"], tmp_path, width)
        assert res["errors"] == [] and res["console"] == [] and res["bad_images"] == 0, (name, res)
        assert res["overflow"] <= 0, (name, res["overflow"])
        assert res["split_tokens"] == 0, name
        out = shots / f"report_{name}.png"
        screenshot(chromium, paths["html"], out, width, 8000, tmp_path)
        with Image.open(out) as im:
            assert im.width == width
            assert len(im.convert("RGB").resize((64, 512)).getcolors(1 << 16) or []) > 50  # not a blank page
