"""model/contract.py: vlmdet.json written, read, checked and applied; the shipped demo checkpoint carries it."""

import json
import shutil
from pathlib import Path

import pytest

from vlmdet.cli import main
from vlmdet.config import load_config
from vlmdet.demo import DEMO_DATA, shipped_stage1
from vlmdet.errors import UsageError
from vlmdet.model.chat import system_prompt, user_prompt
from vlmdet.model.contract import (
    CONTRACT_FILE,
    apply_contract,
    check_coord_layout,
    coord_layout,
    make_contract,
    read_contract,
    write_contract,
)

ROOT = Path(__file__).resolve().parents[1]
EVAL_CFG = ROOT / "configs" / "eval" / "tiny.yaml"
DEMO_STAGE1_CFG = ROOT / "configs" / "demo" / "stage1.yaml"

TRAINED = {
    "contract_version": 1, "vlmdet_version": "0.1.0", "answer_format": "coordjson",
    "prompt": {"system": "Find things.", "user": "List them."},
    "field_order": "geometry_first", "ordering": "random", "coord_tokens": {"first_id": 10, "count": 1000},
}


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_make_write_read_round_trip(tmp_path):
    cfg = load_config(DEMO_STAGE1_CFG)
    c = make_contract(cfg.prompt, range(7, 1007))
    assert c["prompt"] == {"system": "You detect objects.", "user": "List every object in the image as CoordJSON."}
    assert (c["field_order"], c["ordering"], c["answer_format"]) == ("desc_first", "sorted", "coordjson")
    assert c["coord_tokens"] == {"first_id": 7, "count": 1000}
    write_contract(tmp_path, c)
    assert read_contract(tmp_path) == c
    assert read_contract(tmp_path / "nowhere") is None
    untrained = make_contract(None, [], trained=False)
    assert untrained["prompt"] is None and untrained["field_order"] is None and untrained["coord_tokens"] is None


@pytest.mark.parametrize("text,rule", [
    ("{", "not a readable JSON file"),
    ("[]", "must be a JSON object"),
    ('{"contract_version": 1}', "missing key(s) vlmdet_version"),
    (json.dumps({**TRAINED, "contract_version": 9}), "contract_version 9 is not 1"),
    (json.dumps({**TRAINED, "prompt": {"system": 1}}), "'prompt' must be null"),
])
def test_read_broken_contract(tmp_path, text, rule):
    (tmp_path / CONTRACT_FILE).write_text(text)
    with pytest.raises(UsageError, match=r"vlmdet\.json: ") as err:
        read_contract(tmp_path)
    assert rule in str(err.value)


def test_coord_layout_checks():
    assert coord_layout([]) is None
    with pytest.raises(ValueError, match="contiguous"):
        coord_layout([3, 4, 6])
    check_coord_layout(TRAINED, list(range(10, 1010)), "ck")
    with pytest.raises(UsageError, match=r"ck/vlmdet.json: coord_tokens \{'first_id': 10, 'count': 1000\} but the "
                                         r"tokenizer has \{'first_id': 11"):
        check_coord_layout(TRAINED, list(range(11, 1011)), "ck")


def test_unset_settings_take_the_checkpoint_values(tmp_path):
    cfg = load_config(_yaml(tmp_path, "run_name: x\n"))
    assert apply_contract(cfg, TRAINED, "ck") == []
    p = cfg.prompt
    assert (p.system, p.user, p.field_order, p.ordering) == ("Find things.", "List them.", "geometry_first", "random")
    assert (system_prompt(p), user_prompt(p)) == ("Find things.", "List them.")
    # no contract, or a contract without a trained prompt (expand-vocab): nothing changes
    cfg = load_config(_yaml(tmp_path, "run_name: x\n"))
    apply_contract(cfg, None, "ck")
    apply_contract(cfg, make_contract(None, range(1000), trained=False), "ck")
    assert (cfg.prompt.system, cfg.prompt.field_order) == (None, "desc_first")


@pytest.mark.parametrize("setting,key,ours,theirs", [
    ("prompt:\n  system: Other.\n", "prompt.system", "'Other.'", "'Find things.'"),
    ("prompt:\n  field_order: desc_first\n", "prompt.field_order", "'desc_first'", "'geometry_first'"),
    ("prompt:\n  variant: coco_80\n", "prompt.system", "'You detect objects", "'Find things.'"),
])
def test_explicit_different_setting_is_an_error_naming_both(tmp_path, setting, key, ours, theirs):
    cfg = load_config(_yaml(tmp_path, setting))
    with pytest.raises(UsageError) as err:
        apply_contract(cfg, TRAINED, "runs/a/checkpoint-final")
    msg = str(err.value)
    assert msg.startswith(f"{key}: the config sets {ours}")
    assert f"but runs/a/checkpoint-final/vlmdet.json says {theirs}" in msg and "--override-prompt" in msg
    # --override-prompt keeps the config's value and says so
    cfg = load_config(_yaml(tmp_path, setting))
    notes = apply_contract(cfg, TRAINED, "ck", override=True)
    assert notes and notes[0].startswith(f"--override-prompt: {key}")  # variant: system and user both


def test_explicit_equal_setting_is_fine_and_overrides_count_as_explicit(tmp_path):
    cfg = load_config(_yaml(tmp_path, "prompt:\n  ordering: random\n"), ["prompt.user=List them."])
    assert apply_contract(cfg, TRAINED, "ck") == []
    cfg = load_config(_yaml(tmp_path, "run_name: x\n"), ["prompt.user=Something else."])
    with pytest.raises(UsageError, match="prompt.user: the config sets 'Something else.'"):
        apply_contract(cfg, TRAINED, "ck")


def test_shipped_demo_checkpoint_carries_its_training_prompt():
    c = read_contract(shipped_stage1())
    assert c == make_contract(load_config(DEMO_STAGE1_CFG).prompt, range(c["coord_tokens"]["first_id"],
                                                                          c["coord_tokens"]["first_id"] + 1000))


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory):
    from vlmdet.data.synth import make_synth

    out = tmp_path_factory.mktemp("demo_val")
    make_synth(out, **{**DEMO_DATA, "n_train": 1, "n_val": 12}, progress=False)
    return out / "val.jsonl"


def _eval(cfg, ckpt, data, out):
    code = main(["eval", str(cfg), "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--no-progress",
                 "rollout.max_new_tokens=96", "rollout.batch_size=12", "monitor.enabled=false"])
    assert code == 0
    m = json.loads((out / "eval" / "step_000000" / "metrics.json").read_text())["metrics"]
    return {k: v for k, v in m.items() if not k.startswith("eval_time")}


@pytest.mark.slow
def test_demo_checkpoint_scores_the_same_with_the_eval_config_and_its_run_config(tmp_path, demo_val):
    with_eval_cfg = _eval(EVAL_CFG, shipped_stage1(), demo_val, tmp_path / "a")
    with_run_cfg = _eval(DEMO_STAGE1_CFG, shipped_stage1(), demo_val, tmp_path / "b")
    assert with_eval_cfg == with_run_cfg
    assert with_eval_cfg["eval_rollout/bbox_AP50"] > 0.3 and with_eval_cfg["eval_rollout/empty_pred_rate"] < 0.5
    # the same checkpoint without its vlmdet.json is asked with the default prompt: far worse
    bare = tmp_path / "bare"
    shutil.copytree(shipped_stage1(), bare)
    (bare / CONTRACT_FILE).unlink()
    without = _eval(EVAL_CFG, bare, demo_val, tmp_path / "c")
    assert without["eval_rollout/bbox_AP50"] < with_eval_cfg["eval_rollout/bbox_AP50"] - 0.2


def test_eval_explicit_prompt_differing_from_checkpoint_exits_2(tmp_path, demo_val, capsys):
    code = main(["eval", str(EVAL_CFG), "--checkpoint", str(shipped_stage1()), "--data", str(demo_val),
                 "--out", str(tmp_path / "o"), "prompt.user=Find them."])
    err = capsys.readouterr().err
    assert code == 2 and "prompt.user: the config sets 'Find them.'" in err and "--override-prompt" in err
    assert not (tmp_path / "o").exists()
