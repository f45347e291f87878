"""SFT rows from a preference dataset: one per (task, distinct chosen answer), with a set share of abstentions."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
from datasets import Dataset

from distill import train_data
from eval.io import DistillError

TOOLS = json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}}}])


def _call(args: dict) -> list[dict]:
    return [{"role": "assistant", "content": None,
             "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}]}]


def _text(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text, "tool_calls": None}]


def _row(task_id: str, chosen: list[dict], rejected: list[dict]) -> dict:
    return {"prompt": [{"role": "user", "content": f"question of {task_id}"}], "chosen": chosen, "rejected": rejected,
            "tools": TOOLS, "task_id": task_id, "chosen_source": "gold", "rejected_source": "synthetic",
            "rejected_error": "wrong_value"}


def _split(n_call_tasks: int = 6, n_irrelevance: int = 2) -> Dataset:
    """Call tasks with three pairs each (the same chosen answer three times, as `distill pairs` cycles it); task
    c0 has a second distinct answer, and a third that differs from the first only in key order and spacing
    (the same answer). Irrelevance tasks with one pair each."""
    rows = []
    for t in range(n_call_tasks):
        for _ in range(3):
            rows.append(_row(f"c{t}", _call({"city": f"City{t}", "unit": "celsius"}), _call({"city": "Atlantis"})))
    rows.append(_row("c0", _call({"city": "City0"}), _call({"city": "Atlantis"})))
    rows.append(_row("c0", [{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": '{"unit":"celsius",  "city":"City0"}'}}]}], _text("sunny")))
    for t in range(n_irrelevance):
        rows.append(_row(f"i{t}", _text("None of the available functions can be used."), _call({"city": "X"})))
    return Dataset.from_list(rows)


def _kinds(split, indices):
    return Counter("no-call" if train_data._is_no_call(split[i]["chosen"]) else "call" for i in indices)


def test_one_row_per_task_and_distinct_answer_with_the_natural_share():
    split = _split()
    indices, info = train_data.sft_selection(split, None)
    assert len(indices) == len(set(indices)) == 6 + 1 + 2  # six call tasks, c0's second answer, two abstentions
    keys = {(split[i]["task_id"], train_data._answer_key(split[i]["chosen"])) for i in indices}
    assert len(keys) == len(indices)
    assert info["source_rows"] == 6 * 3 + 2 + 2 and info["distinct_rows"] == 9
    assert info["natural_no_call_share"] == info["no_call_share"] == round(2 / 9, 4)
    # the SFT stage trains on exactly those rows
    rows = train_data.for_stage(split, "sft")
    assert len(rows) == 9
    assert len({json.dumps([r["prompt"], r["completion"]], sort_keys=True) for r in rows}) == 9


@pytest.mark.parametrize("share", [0.5, 0.1, 0.3])
def test_the_requested_no_call_share_by_repeating_the_short_side(share):
    split = _split(n_call_tasks=6, n_irrelevance=3)  # natural share 3 / 10
    distinct, _ = train_data.sft_selection(split, None)
    indices, info = train_data.sft_selection(split, share, seed=3)
    assert set(indices) == set(distinct), "every distinct row stays; only repeats are added"
    kinds = _kinds(split, indices)
    assert kinds["no-call"] / len(indices) == pytest.approx(share, abs=1 / len(indices))
    assert info["no_call_share"] == round(kinds["no-call"] / len(indices), 4) and info["rows"] == len(indices)
    # repeats are spread evenly over the side that is short
    for side in ("call", "no-call"):
        counts = Counter(i for i in indices if ("no-call" if train_data._is_no_call(split[i]["chosen"]) else "call") == side)
        assert max(counts.values()) - min(counts.values()) <= 1, (side, counts)
    if share > 0.3:
        assert kinds["call"] == 7 and kinds["no-call"] == 7
    elif share < 0.3:
        assert kinds["no-call"] == 3 and kinds["call"] == 27
    else:
        assert len(indices) == 10


def test_shares_zero_and_one_keep_one_side():
    split = _split()
    zero, _ = train_data.sft_selection(split, 0.0)
    one, _ = train_data.sft_selection(split, 1.0)
    assert _kinds(split, zero) == {"call": 7}
    assert _kinds(split, one) == {"no-call": 2}


def test_a_split_without_abstentions_keeps_its_rows_and_warns(caplog):
    split = _split(n_irrelevance=0)
    with caplog.at_level(logging.WARNING, logger="distill.train_data"):
        indices, info = train_data.sft_selection(split, 0.3)
    assert len(indices) == 7 and info["no_call_share"] == 0.0
    assert "cannot be met" in caplog.text


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_a_share_outside_zero_one_is_an_error(share):
    with pytest.raises(DistillError, match="sft_no_call_share must be a share between 0 and 1"):
        train_data.sft_selection(_split(), share)


def test_composition_is_reported_and_the_same_seed_gives_the_same_rows():
    split = _split()
    info: dict = {}
    a = train_data.for_stage(split, "sft", no_call_share=0.5, seed=1, composition=info)
    b = train_data.for_stage(split, "sft", no_call_share=0.5, seed=1)
    assert a.to_list() == b.to_list()
    assert info["requested_no_call_share"] == 0.5 and info["rows"] == len(a) == 14
    # DPO keeps every pair
    assert len(train_data.for_stage(split, "dpo")) == len(split)


def test_mined_pairs_give_one_sft_row_per_task(tmp_path):
    """On what `distill pairs` writes from BFCL tasks: three pairs per call task, one per irrelevance task."""
    from data_gen.bfcl import import_bfcl
    from data_gen.pairs import PairsConfig, mine_pairs
    from eval.tasks import task_from_dict

    tasks = {r["id"]: task_from_dict(r) for r in import_bfcl(["simple_python", "irrelevance"], limit=20)}
    rows, _ = mine_pairs(tasks, [], None, PairsConfig(chosen_from="gold", synthetic=3, max_pairs_per_task=3,
                                                      test_size=0))
    split = Dataset.from_list([{k: v for k, v in r.items() if k != "split"} for r in rows])
    per_pair = Counter(r["chosen"][0]["tool_calls"] is None for r in rows)
    info: dict = {}
    sft = train_data.for_stage(split, "sft", no_call_share=None, composition=info)
    assert info["distinct_rows"] == len(sft) == len({r["task_id"] for r in rows})
    assert info["natural_no_call_share"] > per_pair[True] / len(rows), "de-duplication alone lifts the share"


RECIPE = ("stage: sft\nmodel_name_or_path: some/model\ndataset_path: pairs\nuse_peft: true\nmax_length: 512\n"
          "use_cpu: true\nbf16: false\n")


@pytest.mark.parametrize("value", ["1.5", "-0.2", "nan", "abc", "true"])
def test_a_recipe_with_a_share_outside_zero_one_is_refused_before_anything_loads(tmp_path, value):
    """In the file or as a flag: parsing names the key; no model or dataset is looked at (neither exists)."""
    from distill.recipe import parse_recipe

    (tmp_path / "bad.yaml").write_text(RECIPE + f"sft_no_call_share: {value}\n")
    (tmp_path / "ok.yaml").write_text(RECIPE)
    with pytest.raises(DistillError, match="sft_no_call_share"):
        parse_recipe([str(tmp_path / "bad.yaml")])
    if value != "true":  # a flag value is a string; YAML's true is a bool only in the file
        with pytest.raises(DistillError, match="sft_no_call_share"):
            parse_recipe([str(tmp_path / "ok.yaml"), "--sft_no_call_share", value])


def test_a_recipe_share_is_parsed_and_null_keeps_the_natural_share(tmp_path):
    from distill.recipe import parse_recipe

    (tmp_path / "a.yaml").write_text(RECIPE)
    (tmp_path / "b.yaml").write_text(RECIPE + "sft_no_call_share: null\n")
    assert parse_recipe([str(tmp_path / "a.yaml")]).script.sft_no_call_share == 0.3
    assert parse_recipe([str(tmp_path / "b.yaml")]).script.sft_no_call_share is None
    assert parse_recipe([str(tmp_path / "a.yaml"), "--sft_no_call_share", "0.5"]).script.sft_no_call_share == 0.5


def test_distill_train_sft_trains_on_the_selected_rows_and_records_them(tmp_path, tiny_model_dir):
    """The real path: a recipe with sft_no_call_share, run_stage, the trainer's dataset and run.json."""
    from datasets import DatasetDict

    from distill.recipe import parse_recipe
    from distill.train import run_stage

    pairs = tmp_path / "pairs"
    DatasetDict(train=_split(n_call_tasks=6, n_irrelevance=2), test=_split(n_call_tasks=2, n_irrelevance=1)).save_to_disk(
        str(pairs))
    recipe = parse_recipe([
        "recipes/debug/tiny_cpu.yaml", "--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(pairs),
        "--output_dir", str(tmp_path / "sft"), "--max_steps", "1", "--load_in_4bit", "false",
        "--report_to", "none", "--sft_no_call_share", "0.5", "--eval_strategy", "steps", "--eval_steps", "1",
    ])
    trainer = run_stage(recipe)
    assert len(trainer.train_dataset) == 14  # 7 distinct call rows + 2 abstentions repeated to 7
    run = json.loads((tmp_path / "sft" / "run.json").read_text())
    assert run["config"]["script"]["sft_no_call_share"] == 0.5
    train, ev = run["sft_rows"]["train"], run["sft_rows"]["eval"]
    assert (train["source_rows"], train["distinct_rows"], train["rows"], train["no_call_share"]) == (22, 9, 14, 0.5)
    assert ev["requested_no_call_share"] is None and ev["rows"] == ev["distinct_rows"] == 4  # eval: natural mix
