"""Smoke test of bench/gpu.py: ``--device cpu --quick`` on the tiny model writes a report
that matches schemas/bench-gpu-report.schema.json. It keeps the GPU script working on CI;
it is not a timing (no figure is checked against anything)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jsonschema
import pytest

from bench import gpu
from timbred.protocol.schema import schema_dir

#: Timbre's default precision on CPU, every metric: enough to exercise the whole path.
ONLY = ",".join(f"tiny/timbre/fp32/{metric}"
                for metric in ("load", "take10", "batch8", "stream"))


def _schema() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(
        (schema_dir() / "bench-gpu-report.schema.json").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def report_dir(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick CPU run of the benchmark, with a tight budget, into a temporary folder."""
    out = tmp_path_factory.mktemp("bench-gpu")
    # The bench records the warnings of what it measures in the report instead of failing.
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert gpu.main(["--device", "cpu", "--quick", "--budget", "60", "--out", str(out),
                         "--quick-model", str(tiny), "--only", ONLY]) == 0
    return out


class TestQuickRun:

    def test_report_matches_the_schema(self, report_dir: Path) -> None:
        """report.json validates against the published schema."""
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(_schema()).validate(report)
        assert report["quick"] is True and report["device"]["type"] == "cpu"

    def test_timbre_path_measured_and_the_rest_accounted_for(self, report_dir: Path) -> None:
        """The selected measurements ran through Timbre's backend; every other planned
        measurement has a row saying what became of it (ok, failed, skipped or cut)."""
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        rows = {row["id"]: row for row in report["results"]}
        take = rows["tiny/timbre/fp32/take10"]
        assert take["status"] == "ok", take
        assert take["wall_s"] > 0 and take["rtf"] == pytest.approx(take["wall_s"] / 0.2)
        assert rows["tiny/timbre/fp32/batch8"]["clips_per_min"] > 0
        assert rows["tiny/timbre/fp32/stream"]["ttfa_s"] > 0
        assert rows["tiny/transformers/fp32/take10"]["reason"] == "not selected (--only)"
        assert "tiny/timbre/fp32/torch-compile/take10" in rows
        for row in rows.values():
            assert (row["reason"] is None) == (row["status"] == "ok"), row

    def test_correctness_checks_pass_on_cpu(self, report_dir: Path) -> None:
        """The device checks and each variant's unload check ran, and passed."""
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        names = {c["name"]: c["status"] for c in report["checks"]}
        assert names["tiny/timbre/fp32 unload frees the model"] == "ok"
        assert set(names.values()) == {"ok"}, report["checks"]

    def test_markdown_lists_every_row(self, report_dir: Path) -> None:
        """report.md has one table line per result and the findings."""
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        text = (report_dir / "report.md").read_text(encoding="utf-8")
        for row in report["results"]:
            assert f"| {row['id']} |" in text
        assert "Findings:" in text


def test_budget_skips_what_does_not_fit() -> None:
    """A measurement whose estimate exceeds what is left is skipped, with the reason."""
    run = gpu.Run("cpu", gpu.QUICK, gpu.Budget(1.0))
    ran: list[str] = []
    row = run.measure(gpu.Row(id="x", model="tiny", impl="timbre", precision="fp32",
                              option="default", metric="take10"), 5.0,
                      lambda r, d: ran.append(r.id))
    assert ran == [] and row.status == "skipped" and "budget" in (row.reason or "")


def test_a_failing_measurement_is_recorded_and_the_run_goes_on() -> None:
    """An exception inside a measurement becomes a failed row with its reason."""
    run = gpu.Run("cpu", gpu.QUICK, gpu.Budget(60.0))

    def boom(row: gpu.Row, deadline: gpu.Deadline) -> None:
        raise RuntimeError("No available kernel. Aborting execution.")

    row = run.measure(gpu.Row(id="y", model="tiny", impl="timbre", precision="fp32",
                              option="sdpa-flash", metric="take10"), 0.1, boom)
    assert row.status == "failed"
    assert row.reason == "RuntimeError: No available kernel. Aborting execution."


def test_dry_run_plans_the_h200_run_in_order_of_importance(tmp_path: Path) -> None:
    """--dry-run lays out the CUDA plan without a GPU: at 10 ms a step, 420 s cover every
    small measurement but the compiles and medium's bf16 figures; what does not fit is
    skipped with the budget as reason, and the report still matches the schema."""
    assert gpu.main(["--device", "cuda", "--dry-run", "--budget", "420", "--assume-step-ms",
                     "10", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(_schema()).validate(report)
    planned = {r["id"] for r in report["results"] if r["reason"] == "dry run: would run"}
    budget = {r["id"] for r in report["results"] if (r["reason"] or "").startswith("budget")}
    for metric in ("take10", "batch8", "take30", "stream"):
        assert f"small/timbre/bf16/{metric}" in planned
        assert f"medium/timbre/bf16/{metric}" in planned
    assert {"small/transformers/fp32/take10", "small/timbre/fp16/batch8",
            "small/timbre/fp32/take10"} <= planned
    assert "small/timbre/bf16/torch-compile/load" in budget
    assert report["elapsed_s"] <= 420
