"""`distill fleet admit`: per-category thresholds, admission relative to a teacher, the reasons a student is
refused, and fleet.yaml (atomic, replace-by-name, other tools' keys kept, paths relative to the file)."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.cli import main
from distill.fleet import load_fleet, resolve
from distill.testing.report_builders import build_report, write_tasks

# The student: simple 9/10 correct (one wrong value: schema-valid), parallel 5/10 with four schema-invalid
# answers, irrelevance 4/4 but only 4 tasks. The teacher: simple 10/10, parallel 6/10, irrelevance 4/4.
STUDENT = {"simple": ["ok"] * 9 + ["wrong_value"], "parallel": ["ok"] * 5 + ["schema"] * 4 + ["no_call"],
           "irrelevance": ["ok"] * 4}
TEACHER = {"simple": ["ok"] * 10, "parallel": ["ok"] * 6 + ["wrong_value"] * 4, "irrelevance": ["ok"] * 4}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("admission")
    tasks = write_tasks(tmp / "tasks.jsonl", {"simple": 10, "parallel": 10, "irrelevance": 4})
    # the model is the tiny local model, so its parameter count can be read from its config
    student = build_report(tmp / "ckpt" / "eval", tasks, str(tiny_model_dir), STUDENT, adapter=str(tmp / "ckpt"))
    teacher = build_report(tmp / "teacher", tasks, "Qwen/Qwen2.5-72B-Instruct", TEACHER)
    return tmp, tasks, student, teacher


def admit(*args):
    return main(["fleet", "admit", *map(str, args)])


def test_thresholds_apply_per_category_with_reasons(setup, tmp_path, capsys, tiny_model_dir):
    _, _, student, _ = setup
    fleet = tmp_path / "fleet.yaml"
    rc = admit(student, "--fleet", fleet, "--min-accuracy", 0.8, "--min-schema-valid", 0.9, "--min-n", 5)
    out = capsys.readouterr().out
    assert rc == 0
    member = load_fleet(fleet)["members"][0]
    assert member["name"] == "ckpt"  # the adapter's folder name
    assert member["categories"] == ["simple"]
    d = member["by_category"]
    assert d["simple"]["admitted"] and d["simple"]["reasons"] == [] and d["simple"]["strict_accuracy"] == 0.9
    # parallel: 5/10 correct and 6/10 schema-valid -> two reasons, each with its numbers and flag
    assert d["parallel"]["failed"] == ["--min-accuracy", "--min-schema-valid"]
    assert d["parallel"]["reasons"] == ["strict_accuracy 0.500 < 0.800 (--min-accuracy)",
                                        "schema_valid_rate 0.600 < 0.900 (--min-schema-valid)"]
    # irrelevance: perfect, but 4 tasks are too few to decide on
    assert d["irrelevance"]["failed"] == ["--min-n"] and d["irrelevance"]["accuracy"] == 1.0
    assert "irrelevance" in out and "only 4 traces scored (< 5) (--min-n)" in out
    assert "admitted 'ckpt' for 1 of 3 categories: simple" in out
    # loosening one threshold changes exactly that category's decision
    rc = admit(student, "--fleet", fleet, "--min-accuracy", 0.8, "--min-schema-valid", 0.9, "--min-n", 4)
    assert rc == 0 and load_fleet(fleet)["members"][0]["categories"] == ["irrelevance", "simple"]
    # accuracy instead of strict accuracy: parallel's schema-invalid answers are wrong either way here
    rc = admit(student, "--fleet", fleet, "--min-accuracy", 0.5, "--min-schema-valid", 0.5, "--metric", "accuracy",
               "--min-n", 4)
    assert rc == 0 and load_fleet(fleet)["members"][0]["categories"] == ["irrelevance", "parallel", "simple"]


def test_entry_records_model_cost_provenance_and_paths(setup, tmp_path, tiny_model_dir):
    tmp, tasks, student, _ = setup
    fleet = tmp_path / "fleets" / "fleet.yaml"
    assert admit(student, "--fleet", fleet, "--min-accuracy", 0.8, "--min-n", 5) == 0
    text = fleet.read_text()
    assert text.startswith("# distill fleet") and yaml.safe_load(text)["version"] == 1
    m = load_fleet(fleet)["members"][0]
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert m["parameters"] == real and m["parameters_from"] == "config"
    assert m["cost"] == pytest.approx(real / 1e9) and m["cost_basis"] == "parameters_in_billions"
    report = json.loads((student / "report.json").read_text())
    assert m["tasks_fingerprint"] == report["tasks_fingerprint"]
    assert m["data_version"] == "bfcl-eval==2026.3.23"  # the tasks' `source`, read from the scored file
    # paths are stored relative to the fleet file and resolve to the real files from anywhere
    assert not m["report"].startswith("/")
    assert resolve(fleet, m["report"]).resolve() == (student / "report.json").resolve()
    assert resolve(fleet, m["verdicts"]).resolve() == (student / "verdicts.jsonl").resolve()
    assert resolve(fleet, m["adapter"]).resolve() == (tmp / "ckpt").resolve()
    assert resolve(fleet, m["base_model"]).resolve() == tiny_model_dir.resolve()
    assert m["admission"]["min_accuracy"] == 0.8 and m["admission"]["metric"] == "strict_accuracy"
    # an explicit cost is recorded as given
    assert admit(student, "--fleet", fleet, "--min-accuracy", 0.8, "--min-n", 5, "--cost", 0.25) == 0
    m = load_fleet(fleet)["members"][0]
    assert m["cost"] == 0.25 and m["cost_basis"] == "given"


def test_relative_to_teacher(setup, tmp_path, capsys):
    _, _, student, teacher = setup
    fleet = tmp_path / "fleet.yaml"
    common = ["--min-accuracy", 0, "--min-schema-valid", 0, "--min-n", 1, "--relative-to", teacher]
    # simple: teacher 1.0, student 0.9 (gap 0.1); parallel: 0.6 vs 0.5 (gap 0.1); irrelevance: 1.0 vs 1.0
    assert admit(student, "--fleet", fleet, *common, "--max-gap", 0.05) == 0
    m = load_fleet(fleet)["members"][0]
    assert m["categories"] == ["irrelevance"]
    assert m["by_category"]["simple"]["teacher_strict_accuracy"] == 1.0
    assert m["by_category"]["simple"]["reasons"] == [
        "strict_accuracy 0.900 is 0.100 below the teacher's 1.000 (> 0.050) (--max-gap)"]
    assert m["admission"]["max_gap"] == 0.05 and m["admission"]["relative_to"].endswith("report.json")
    # a gap exactly at the limit passes (0.6 - 0.5 in floating point is 0.09999999999999998 or more)
    assert admit(student, "--fleet", fleet, *common, "--max-gap", 0.1) == 0
    assert load_fleet(fleet)["members"][0]["categories"] == ["irrelevance", "parallel", "simple"]
    capsys.readouterr()
    # the flags need each other
    assert admit(student, "--fleet", fleet, "--max-gap", 0.1) == 2
    assert "--max-gap needs --relative-to" in capsys.readouterr().err
    assert admit(student, "--fleet", fleet, "--relative-to", teacher) == 2
    assert "--relative-to needs --max-gap" in capsys.readouterr().err


def test_teacher_on_other_tasks_or_missing_category_is_refused(setup, tmp_path, capsys):
    _, _, student, _ = setup
    other = build_report(tmp_path / "t2", write_tasks(tmp_path / "t2.jsonl", {"simple": 10}), "T", {"simple": ["ok"] * 10})
    assert admit(student, "--fleet", tmp_path / "f.yaml", "--relative-to", other, "--max-gap", 0.5) == 2
    err = capsys.readouterr().err
    assert "scores another task file" in err and str(other / "report.json") in err
    assert not (tmp_path / "f.yaml").exists()
    # same task file, but the teacher never answered a category: that category cannot be judged against it
    tasks = json.loads((student / "report.json").read_text())["tasks"]
    partial = build_report(tmp_path / "t3", tasks, "T", {"simple": ["ok"] * 10, "parallel": ["ok"] * 10})
    assert admit(student, "--fleet", tmp_path / "f.yaml", "--relative-to", partial, "--max-gap", 0.5,
                 "--min-accuracy", 0, "--min-schema-valid", 0, "--min-n", 1) == 0
    m = load_fleet(tmp_path / "f.yaml")["members"][0]
    assert m["by_category"]["irrelevance"]["failed"] == ["--relative-to"]
    assert m["categories"] == ["parallel", "simple"]


def test_refused_everywhere_exits_1_and_removes_the_old_entry(setup, tmp_path, capsys):
    _, _, student, _ = setup
    fleet = tmp_path / "fleet.yaml"
    assert admit(student, "--fleet", fleet, "--min-accuracy", 0.99, "--min-n", 5) == 1
    out = capsys.readouterr().out
    assert "refused 'ckpt' for every category (lacked: --min-accuracy, --min-n, --min-schema-valid)" in out
    assert not fleet.exists()  # nothing to write
    # admitted once, then refused on a stricter rerun: the fleet must not keep routing to it
    assert admit(student, "--fleet", fleet, "--min-accuracy", 0.8, "--min-n", 1) == 0
    assert [m["name"] for m in load_fleet(fleet)["members"]] == ["ckpt"]
    assert admit(student, "--fleet", fleet, "--min-accuracy", 0.99, "--min-n", 5) == 1
    assert "previous entry was removed" in capsys.readouterr().out
    assert load_fleet(fleet)["members"] == []


def test_readmission_replaces_by_name_and_keeps_other_keys(setup, tmp_path, capsys):
    _, _, student, teacher = setup
    fleet = tmp_path / "fleet.yaml"
    assert admit(teacher, "--fleet", fleet, "--name", "teacher", "--parameters", 72.7e9, "--min-accuracy", 0.5,
                 "--min-n", 1, "--min-schema-valid", 0) == 0
    assert admit(student, "--fleet", fleet, "--min-accuracy", 0.8, "--min-n", 1) == 0
    # another tool (the router of a later issue) adds its own keys
    data = yaml.safe_load(fleet.read_text())
    data["router"] = {"strategy": "cheapest"}
    data["members"][1]["endpoint"] = "http://127.0.0.1:8001/v1"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    assert admit(student, "--fleet", fleet, "--min-accuracy", 0.5, "--min-n", 1, "--min-schema-valid", 0.5) == 0
    assert "replaced 'ckpt'" in capsys.readouterr().out
    f = load_fleet(fleet)
    assert [m["name"] for m in f["members"]] == ["teacher", "ckpt"]  # replaced in place, not appended
    ckpt = f["members"][1]
    assert ckpt["endpoint"] == "http://127.0.0.1:8001/v1" and f["router"] == {"strategy": "cheapest"}
    assert ckpt["categories"] == ["irrelevance", "parallel", "simple"] and ckpt["admission"]["min_accuracy"] == 0.5
    t = f["members"][0]
    assert t["parameters"] == 72700000000 and t["parameters_from"] == "--parameters" and t["cost"] == 72.7
    assert t["adapter"] is None and t["base_model"] == "Qwen/Qwen2.5-72B-Instruct"


def test_unreadable_model_partial_report_and_bad_input(setup, tmp_path, capsys):
    _, tasks, _, teacher = setup
    fleet = tmp_path / "fleet.yaml"
    # a model whose config cannot be read here (offline, not cached) needs --parameters or --cost
    assert admit(teacher, "--fleet", fleet, "--min-accuracy", 0.5, "--min-n", 1, "--min-schema-valid", 0) == 2
    assert "pass --parameters N or --cost C" in capsys.readouterr().err
    # a report whose eval left requests unanswered admits nothing
    partial = build_report(tmp_path / "partial", tasks, "Qwen/Qwen2.5-72B-Instruct", TEACHER,
                           extra={"generation": {"missing": 3}})
    assert admit(partial, "--fleet", fleet, "--cost", 1, "--min-accuracy", 0, "--min-n", 1) == 1
    assert "the report is partial: 3 requests failed" in capsys.readouterr().out
    # no verdicts beside the report, a corrupt fleet file, out-of-range thresholds: errors naming the culprit
    (partial / "verdicts.jsonl").unlink()
    assert admit(partial, "--fleet", fleet, "--cost", 1) == 2
    assert "verdicts.jsonl: missing" in capsys.readouterr().err
    fleet.write_text("members: {not: a list}\n")
    assert admit(teacher, "--fleet", fleet, "--cost", 1) == 2
    assert f"{fleet}: 'members' must be a list" in capsys.readouterr().err
    assert fleet.read_text() == "members: {not: a list}\n"  # left as it was
    assert admit(teacher, "--fleet", tmp_path / "g.yaml", "--cost", 1, "--min-accuracy", 80) == 2
    assert "--min-accuracy is a share between 0 and 1" in capsys.readouterr().err
