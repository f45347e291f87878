"""The fleet registry, fleet.yaml: the students (and teacher) a router may send requests to.

    version: 1
    members:
    - name: qwen05-dpo                          # unique; `distill fleet admit --name` (re-admitting replaces it)
      base_model: Qwen/Qwen2.5-0.5B-Instruct
      adapter: ../checkpoints/qwen05-dpo        # null for a plain model
      adapter_fingerprint: sha256:...           # the adapter weights the report scored
      parameters: 494032768                     # of the base model, from its config (no weights loaded)
      cost: 0.494                               # what the router minimises; see cost_basis
      cost_basis: parameters_in_billions        # or `given` (--cost)
      categories: [simple_python, irrelevance]  # the categories it is admitted for
      by_category:                              # every category of its report, with the decision
        simple_python: {n: 400, accuracy: 0.93, strict_accuracy: 0.91, schema_valid_rate: 0.98,
                        admitted: true, failed: [], reasons: []}
        parallel: {n: 200, ..., admitted: false, failed: [--min-accuracy],
                   reasons: ["strict_accuracy 0.620 < 0.750 (--min-accuracy)"]}
      report: ../checkpoints/qwen05-dpo/eval/report.json
      verdicts: ../checkpoints/qwen05-dpo/eval/verdicts.jsonl    # per-task verdicts, for a router that learns
      tasks: tasks.jsonl
      tasks_fingerprint: sha256:...
      data_version: bfcl-eval==2026.3.23        # the tasks' `source`
      admission: {metric: strict_accuracy, min_accuracy: 0.75, min_schema_valid: 0.9, min_n: 10,
                  relative_to: null, max_gap: null, admitted_at: "2026-11-28T10:00:00+00:00"}

Paths are relative to the folder of fleet.yaml, so the fleet moves with its checkpoints. Keys this module
does not know (a member's serving `endpoint`, a top-level `router` section) are kept as they are when a member
is admitted again: later tools extend the file without admission erasing their settings.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from eval.io import DistillError, atomic_write

FLEET_VERSION = 1
HEADER = "# distill fleet: members admitted by `distill fleet admit`; paths are relative to this file.\n"


def load_fleet(path: str | os.PathLike) -> dict:
    """The fleet file as a dict ({"version": 1, "members": []} when it does not exist yet); checked."""
    import yaml

    path = Path(path)
    if not path.exists():
        return {"version": FLEET_VERSION, "members": []}
    try:
        fleet = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DistillError(f"{path}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise DistillError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); is this a fleet file?") from None
    except OSError as e:
        raise DistillError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(fleet, dict):
        raise DistillError(f"{path}: expected a mapping with 'version' and 'members'")
    if fleet.get("version", FLEET_VERSION) != FLEET_VERSION:
        raise DistillError(f"{path}: fleet version {fleet.get('version')!r}; this distill reads version {FLEET_VERSION}")
    members = fleet.setdefault("members", [])
    if not isinstance(members, list):
        raise DistillError(f"{path}: 'members' must be a list")
    names = set()
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            raise DistillError(f"{path}: members[{i}] has no 'name'")
        if m["name"] in names:
            raise DistillError(f"{path}: members[{i}]: duplicate name {m['name']!r}")
        names.add(m["name"])
    fleet["version"] = FLEET_VERSION
    return fleet


def save_fleet(path: str | os.PathLike, fleet: dict) -> None:
    """Write the fleet atomically (a reader never sees half a file); version first, members in order."""
    import yaml

    ordered = {"version": fleet.get("version", FLEET_VERSION), **{k: v for k, v in fleet.items() if k != "version"}}
    with atomic_write(path) as f:
        f.write(HEADER)
        yaml.safe_dump(ordered, f, sort_keys=False, allow_unicode=True, width=120)


@contextlib.contextmanager
def fleet_lock(path: str | os.PathLike):
    """Hold an exclusive lock beside the fleet file for a read-modify-write, so two admissions at once cannot
    lose each other's member."""
    from filelock import FileLock

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        yield


def relative_to_fleet(fleet_path: str | os.PathLike, target: str | os.PathLike | None) -> str | None:
    """`target` (relative to the working directory) as a path relative to the fleet file's folder."""
    if target is None:
        return None
    return os.path.relpath(Path(target).resolve(), Path(fleet_path).resolve().parent)


def resolve(fleet_path: str | os.PathLike, rel: str | None) -> Path | None:
    """A path stored in the fleet file, as a path usable from the working directory."""
    if rel is None:
        return None
    p = Path(rel)
    return p if p.is_absolute() else Path(fleet_path).resolve().parent / p
