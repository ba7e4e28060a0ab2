"""Run directories as data: what `vlmdet report` reads from each run (docs/ARCHITECTURE.md formats).

A run directory holds (all optional; whatever is missing is reported as missing, never a crash):
- `config.yaml`                    the resolved config (only `run_name` and a few fields are read)
- `run.json`                       versions, git state, command line, seed
- `logging.jsonl`                  one JSON object per event: `{"step": int, "time": float, "<key>": float}`
- `eval/step_XXXXXX/metrics.json`  `{"step": int, "metrics": {"eval_rollout/<name>": float, ...}}`
- `monitor_dumps/step_XXXXXX.json` `{"step": int, "samples": [...]}` (read lazily: they can be large)

`load_run(path) -> RunData`; `RunData.series(key)` gives `[(step, value), ...]` of one scalar over steps,
`RunData.metric(step, key)` one eval metric (None when absent). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmdet.errors import UsageError

EVAL_PREFIX = "eval_rollout/"
_STEP_DIR_RE = re.compile(r"^step_(\d+)$")
_STEP_FILE_RE = re.compile(r"^step_(\d+)\.json$")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.append(f"{path}: unreadable ({type(err).__name__}: {err}); ignored")
        return None


def read_events(path: Path, warnings: list[str]) -> list[dict]:
    """`logging.jsonl` -> list of event dicts that carry an int `step`. Blank lines are skipped; a bad
    line (e.g. the half-written last line of a killed run) is skipped with a warning `file:line: ...`."""
    events: list[dict] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return events
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            warnings.append(f"{path}:{lineno}: bad JSON ({err.msg}); line ignored")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("step"), int) or isinstance(obj.get("step"), bool):
            warnings.append(f"{path}:{lineno}: not an event with an integer 'step'; line ignored")
            continue
        events.append(obj)
    return events


def _read_config(path: Path, warnings: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        import yaml

        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001 - any YAML problem is a warning for the report
        warnings.append(f"{path}: unreadable YAML ({type(err).__name__}); ignored")
        return {}
    return cfg if isinstance(cfg, dict) else {}


@dataclass
class RunData:
    """Everything `vlmdet report` knows about one run directory.

    `eval` maps step -> {metric name -> float} (names with the `eval_rollout/` prefix); it is read
    from `eval/step_*/metrics.json`, and eval events in `logging.jsonl` fill steps that have no file.
    `dumps` maps step -> path of `monitor_dumps/step_XXXXXX.json`.
    """

    path: Path
    name: str
    config: dict = field(default_factory=dict)
    run_info: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    eval: dict[int, dict[str, float]] = field(default_factory=dict)
    dumps: dict[int, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def eval_steps(self) -> list[int]:
        return sorted(self.eval)

    def metric(self, step: int, key: str) -> float | None:
        """One eval metric at one step (`key` with or without the `eval_rollout/` prefix), or None."""
        name = key if key.startswith(EVAL_PREFIX) else EVAL_PREFIX + key
        v = self.eval.get(step, {}).get(name)
        return float(v) if _is_number(v) else None

    def series(self, key: str) -> list[tuple[int, float]]:
        """`[(step, value)]` sorted by step for one scalar: eval metrics first (`eval_rollout/*`), else
        the training log. Several log events at one step: the last one wins."""
        if key.startswith(EVAL_PREFIX):
            points = {s: m[key] for s, m in self.eval.items() if _is_number(m.get(key))}
        else:
            points = {}
            for ev in self.events:
                v = ev.get(key)
                if _is_number(v):
                    points[ev["step"]] = v
        return [(s, float(points[s])) for s in sorted(points)]

    def value_near(self, key: str, step: int) -> float | None:
        """A training-log scalar at the last logged step <= `step` (None if there is none)."""
        best = None
        for s, v in self.series(key):
            if s <= step:
                best = v
        return best

    def load_dump(self, step: int) -> dict | None:
        """The monitor dump of one step as a dict with a `samples` list, or None (missing/unreadable)."""
        path = self.dumps.get(step)
        if path is None:
            return None
        obj = _read_json(path, self.warnings)
        if not isinstance(obj, dict) or not isinstance(obj.get("samples"), list):
            if obj is not None:
                self.warnings.append(f"{path}: no 'samples' list; ignored")
            return None
        return obj


def load_run(path: str | Path) -> RunData:
    """Read one run directory. Raises `UsageError` only when `path` is not a directory; every missing
    or unreadable artifact inside becomes a warning in `RunData.warnings`."""
    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"{root}: not a run directory (no such folder)")
    warnings: list[str] = []
    config = _read_config(root / "config.yaml", warnings)
    run_info = _read_json(root / "run.json", warnings)
    run_info = run_info if isinstance(run_info, dict) else {}
    events = read_events(root / "logging.jsonl", warnings)

    evals: dict[int, dict[str, float]] = {}
    eval_root = root / "eval"
    if eval_root.is_dir():
        for d in sorted(eval_root.iterdir()):
            m = _STEP_DIR_RE.match(d.name)
            if not m or not d.is_dir():
                continue
            obj = _read_json(d / "metrics.json", warnings)
            if obj is None:
                continue
            metrics = obj.get("metrics") if isinstance(obj, dict) else None
            if not isinstance(metrics, dict):
                warnings.append(f"{d / 'metrics.json'}: no 'metrics' object; ignored")
                continue
            evals[int(m.group(1))] = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    from_files = set(evals)
    for ev in events:  # eval events of the training log fill the steps without a metrics.json
        vals = {k: float(v) for k, v in ev.items() if k.startswith(EVAL_PREFIX) and _is_number(v)}
        if vals and ev["step"] not in from_files:
            evals.setdefault(ev["step"], {}).update(vals)

    dumps: dict[int, Path] = {}
    dump_root = root / "monitor_dumps"
    if dump_root.is_dir():
        for f in dump_root.iterdir():
            m = _STEP_FILE_RE.match(f.name)
            if m and f.is_file():
                dumps[int(m.group(1))] = f

    if not (config or run_info or events or evals or dumps):
        warnings.append(f"{root}: no run artifacts found (config.yaml, logging.jsonl, eval/, monitor_dumps/)")
    name = str(config.get("run_name") or root.name)
    return RunData(root, name, config, run_info, events, evals, dumps, warnings)


def load_runs(paths: list[str | Path]) -> list[RunData]:
    """`load_run` for each path; run names are made unique (`name`, `name#2`, ...) in the given order
    (two runs with the same `run_name` fall back to their folder names first)."""
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = r.path.name
    seen: dict[str, int] = {}
    for r in runs:
        n = seen.get(r.name, 0) + 1
        seen[r.name] = n
        if n > 1:
            r.name = f"{r.name}#{n}"
    return runs


def parse_steps(text: str | None) -> list[int] | None:
    """`"300,600,1200"` -> [300, 600, 1200]; None/"" -> None (all eval steps). Bad input: UsageError."""
    if text is None or not text.strip():
        return None
    steps = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not (part.isascii() and part.isdigit()):  # "²".isdigit() is True, int("²") fails
            raise UsageError(f"--steps: {part!r} is not a non-negative integer (expected e.g. 300,600,1200)")
        steps.append(int(part))
    return sorted(set(steps))
