"""`distill compare`: a teacher and students side by side from real reports (scored by the verifier)."""

from __future__ import annotations

import json
import re

import pytest

from distill.cli import main
from distill.testing.report_builders import build_report, write_tasks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    tasks = write_tasks(tmp / "tasks.jsonl", {"simple": 10, "irrelevance": 4})
    teacher = build_report(tmp / "teacher", tasks, "Qwen/Qwen2.5-72B-Instruct",
                           {"simple": ["ok"] * 10, "irrelevance": ["ok"] * 3 + ["unexpected_call"]})
    s1 = build_report(tmp / "ckpt_a" / "eval", tasks, "Qwen/Qwen2.5-0.5B-Instruct",
                      {"simple": ["ok"] * 7 + ["wrong_value", "schema", "no_call"], "irrelevance": ["ok"] * 4},
                      adapter=str(tmp / "ckpt_a"))
    s2 = build_report(tmp / "ckpt_b" / "eval", tasks, "Qwen/Qwen2.5-0.5B-Instruct",
                      {"simple": ["ok"] * 4 + ["malformed"] * 6, "irrelevance": ["ok", "unexpected_call"] * 2},
                      adapter=str(tmp / "ckpt_b"))
    return tmp, tasks, teacher, s1, s2


def test_compare_writes_markdown_json_and_png_with_gaps(reports, tmp_path, capsys):
    _, _, teacher, s1, s2 = reports
    out = tmp_path / "cmp"
    assert main(["compare", str(teacher), str(s1 / "report.json"), str(s2), "--out", str(out)]) == 0
    table = json.loads((out / "compare.json").read_text())
    labels = [c["label"] for c in table["columns"]]
    assert labels == ["Qwen/Qwen2.5-72B-Instruct", "ckpt_a", "ckpt_b"]  # students named by their adapter folder
    reps = [json.loads((d / "report.json").read_text()) for d in (teacher, s1, s2)]
    for col, rep in zip(table["columns"], reps, strict=True):
        assert col["overall"]["accuracy"] == rep["accuracy"]
        for cat in ("simple", "irrelevance"):
            assert col["by_category"][cat]["accuracy"] == rep["by_category"][cat]["accuracy"]
        for err, v in col["errors"].items():
            assert v["count"] == rep["errors"][err]
    md = (out / "compare.md").read_text()
    # per category: the reference's value, then each student's with its gap in percentage points
    row = next(line for line in md.splitlines() if line.startswith("| simple |") and "(" in line)
    assert row == "| simple | 10 | 100.0% | 70.0% (-30.0) | 40.0% (-60.0) |"
    irr = [line for line in md.splitlines() if line.startswith("| irrelevance |")][0]
    assert "75.0% | 100.0% (+25.0) | 50.0% (-25.0)" in irr
    # per error type, share and count for each column
    assert "| malformed | 0.0% (0) | 0.0% (0) | 42.9% (6) |" in md
    assert "| schema_violation | 0.0% (0) | 7.1% (1) | 0.0% (0) |" in md
    # strict accuracy has its own table (here equal: the schema-invalid answer is also wrong)
    strict = md.split("## Strict accuracy by category")[1].split("##")[0]
    assert "| simple | 10 | 100.0% | 70.0% (-30.0) | 40.0% (-60.0) |" in strict
    png = (out / "compare.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    from PIL import Image

    with Image.open(out / "compare.png") as im:
        im.verify()
    assert im.size[0] > 300 and im.size[1] > 300
    assert "ckpt_b: accuracy 0.429 (-50.0 pp)" in capsys.readouterr().out


def test_compare_refuses_reports_on_different_task_files(reports, tmp_path, capsys):
    tmp, _, teacher, s1, _ = reports
    other_tasks = write_tasks(tmp_path / "other.jsonl", {"simple": 3})
    other = build_report(tmp_path / "other", other_tasks, "m", {"simple": ["ok"] * 3})
    assert main(["compare", str(teacher), str(other), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "different task files" in err and str(other / "report.json") in err
    assert not (tmp_path / "x").exists()  # nothing half-written
    assert main(["compare", str(teacher), str(other), "--out", str(tmp_path / "x"), "--allow-different-tasks",
                 "--no-plots", "--labels", "teacher,other"]) == 0
    md = (tmp_path / "x" / "compare.md").read_text()
    assert "different task files" in md and "| other |" in md
    # a category one report lacks is shown as '-', not as zero
    irr = next(line for line in md.splitlines() if line.startswith("| irrelevance |"))
    assert irr.endswith("| 75.0% | - |")
    assert not (tmp_path / "x" / "compare.png").exists()


def test_compare_input_errors_name_the_file(reports, tmp_path, capsys):
    _, _, teacher, s1, _ = reports
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "n": 3}))
    assert main(["compare", str(teacher), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert re.search(rf"{re.escape(str(bad))}: not an eval report: no 'accuracy'", capsys.readouterr().err)
    assert main(["compare", str(teacher), "--out", str(tmp_path / "o")]) == 2
    assert "at least two reports" in capsys.readouterr().err
    assert main(["compare", str(teacher), str(s1), "--labels", "a,b,c", "--out", str(tmp_path / "o")]) == 2
    assert "--labels names 3 columns for 2 reports" in capsys.readouterr().err
    # the same model twice gets distinct labels
    assert main(["compare", str(teacher), str(teacher), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    cols = json.loads((tmp_path / "o" / "compare.json").read_text())["columns"]
    assert [c["label"] for c in cols] == ["Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B-Instruct #2"]
