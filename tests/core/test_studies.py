"""The paper's protocol: case studies (Table 8, random vs blocked) and the Table 2 grid."""

import csv

import pytest

from napari_electrode_cae import cli, core
from napari_electrode_cae.core import grid as grids
from napari_electrode_cae.core import load_run, studies, write_stack
from tests.conftest import make_stack

SHAPE = (24, 32, 32)  # deep enough for a blocked split at l=8, stride 1


@pytest.fixture(scope="module")
def cal():
    return [make_stack(SHAPE, seed=0, name="cal")]


@pytest.fixture(scope="module")
def uncal():
    return [make_stack(SHAPE, seed=1, name="uncal", calendered=False)]


def test_case_studies_follow_the_paper():
    cases = {c.case: c for c in studies.CASE_STUDIES}
    assert list(cases) == ["1", "2", "3a", "3b"]
    one, two, three_a, three_b = cases.values()
    assert (
        one.paper.window,
        one.paper.layers,
        one.paper.hidden,
        one.paper.latent,
        one.paper.batch,
        one.paper.lr,
        one.paper.crop,
    ) == (24, 3, 128, 10, 2, 1e-4, 224)
    assert (two.paper.window, two.paper.batch) == (4, 8) and two.stride(two.paper) == 4
    assert one.stride(one.paper) == 1 and not one.uncalendered
    assert three_a.paper.hidden == three_b.paper.hidden == 1000
    assert (three_a.paper.window, three_b.paper.window) == (24, 4)
    assert three_a.type == "CAL & UNCAL" and one.type == "CAL"
    assert all(c.quick.crop == 32 and c.quick.epochs <= 3 for c in cases.values())


def test_run_study_eight_runs_with_sizes_and_files(tmp_path, cal, uncal):
    events = []
    rows = studies.run_study(
        cal, uncal, quick=True, out_dir=tmp_path, epochs=1, device="cpu", progress=events.append
    )
    assert [(r["case"], r["split"]) for r in rows] == [
        (c, s) for c in ("1", "2", "3a", "3b") for s in ("random", "blocked")
    ]
    assert all(r["status"] == "ok" for r in rows), [r["note"] for r in rows]
    by = {(r["case"], r["split"]): r for r in rows}
    # case 1: l=8, stride 1 on a 24-deep stack, one 32x32 tile -> 17 windows, 15 % -> 3 val
    assert (by["1", "random"]["n_train"], by["1", "random"]["n_val"]) == (14, 3)
    # blocked: 3 positions held out, the 7 training windows overlapping them dropped
    assert (by["1", "blocked"]["n_train"], by["1", "blocked"]["n_val"]) == (7, 3)
    # case 2: l=4, stride 4 -> 6 windows; case 3 doubles the windows with the UNCAL stack
    assert by["2", "random"]["n_train"] + by["2", "random"]["n_val"] == 6
    assert by["2", "random"]["stride"] == 4
    assert by["3a", "random"]["n_train"] + by["3a", "random"]["n_val"] == 34
    assert by["3b", "blocked"]["type"] == "CAL & UNCAL"
    for r in rows:
        assert r["n_val"] < 2 or 0 <= r["mse_p_value"] <= 1  # Welch needs 2 per side
        assert 0 <= r["voxel_accuracy"] <= 1
        assert r["train_mse_mean"] > 0 and r["val_mse_std"] >= 0
    run = load_run(by["3b", "blocked"]["run_dir"])
    assert run.train_config.split == "blocked" and run.window.stride == run.window.length == 4
    assert (tmp_path / "1_random" / "weights.pt").exists()
    with (tmp_path / "study.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 8
    md = (tmp_path / "study.md").read_text()
    assert "| 1 | CAL | 1 | 8 | random |" in md and "Val MSE blocked" in md
    assert any(e.row is not None for e in events) and events[-1].run == events[-1].runs == 8


def test_run_study_skips_case_3_without_uncal_and_records_failures(tmp_path):
    shallow = [make_stack((12, 32, 32), seed=0, name="cal")]
    rows = studies.run_study(
        shallow, [], quick=True, out_dir=tmp_path, epochs=1, device="cpu", cases=["1", "3a"]
    )
    by = {(r["case"], r["split"]): r for r in rows}
    assert by["1", "random"]["status"] == "ok"
    # 12 slices, l=8: a blocked split leaves no training window -> recorded, not fatal
    assert by["1", "blocked"]["status"] == "failed" and "blocked" in by["1", "blocked"]["note"]
    assert by["3a", "random"]["status"] == by["3a", "blocked"]["status"] == "skipped"
    assert "UNCAL" in by["3a", "random"]["note"]
    assert "skipped: no UNCAL" in (tmp_path / "study.md").read_text()


def test_grid_ranks_records_failures_and_resumes(tmp_path, cal, monkeypatch):
    grid = {
        "window": [4],
        "crop": [16],
        "layers": [3, 5],
        "hidden": [8],
        "latent": [3],
        "epochs": [1],
        "batch": [4],
        "lr": [3e-3, 1e-3],
    }
    rows = grids.run_grid(cal, grid, out_dir=tmp_path, device="cpu")
    assert len(rows) == 4
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(ok) == 2 and len(failed) == 2
    assert [r["rank"] for r in ok] == [1, 2] and ok[0]["best_val_mse"] <= ok[1]["best_val_mse"]
    assert rows[:2] == ok  # failures last
    assert all("crop 16 is too small for 5 conv layers" in r["error"] for r in failed)
    assert len({r["id"] for r in rows}) == 4
    with (tmp_path / "grid.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["id"] for r in table] == [r["id"] for r in rows]
    weights = {r["id"]: (tmp_path / r["id"] / "weights.pt").stat().st_mtime_ns for r in ok}

    calls = []
    original = grids._train_config
    monkeypatch.setattr(
        grids,
        "_train_config",
        lambda config, *a, **k: calls.append(config) or original(config, *a, **k),
    )
    again = grids.run_grid(cal, grid, out_dir=tmp_path, device="cpu")
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert all(r["reused"] for r in again if r["status"] == "ok")
    assert all(c["layers"] == 5 for c in calls)  # only the failed ones were tried again
    for cid, mtime in weights.items():
        assert (tmp_path / cid / "weights.pt").stat().st_mtime_ns == mtime
    assert again[0]["best_val_mse"] == pytest.approx(rows[0]["best_val_mse"])
    # the config id is stable and depends on the settings
    assert grids.config_id({"a": 1, "b": 2}) == grids.config_id({"b": 2, "a": 1})
    assert grids.config_id({"a": 1}) != grids.config_id({"a": 2})


def test_grid_refuses_unknown_keys_and_other_stacks(tmp_path, cal, uncal):
    with pytest.raises(studies.StudyError, match="unknown grid key"):
        grids.run_grid(cal, {"dropout": [0.1]}, out_dir=tmp_path)
    grid = {"window": [40], "epochs": [1]}  # deeper than the stacks: recorded as failed
    rows = grids.run_grid(cal, grid, out_dir=tmp_path, device="cpu")
    assert rows[0]["status"] == "failed" and "exceeds the depth" in rows[0]["error"]
    with pytest.raises(studies.StudyError, match="other stacks"):
        grids.run_grid(uncal, grid, out_dir=tmp_path)


def test_default_grid_is_table_2_restricted_by_the_preset(cal):
    quick = grids.default_grid("quick", cal)
    assert quick["window"] == [4, 8] and quick["layers"] == [3, 4]  # crop 32 fits 4 layers
    assert quick["epochs"] == [core.get_preset("quick").train.epochs]
    assert quick["lr"] == [1e-3, 1e-4]
    paper = grids.default_grid("paper", cal)
    assert paper["window"] == [4, 8, 16, 24] and paper["epochs"] == [2000, 3500]
    configs = grids.expand_grid({"window": [4, 8], "stride": ["l"]}, "quick")
    assert [(c["window"], c["stride"]) for c in configs] == [(4, 4), (8, 8)]


@pytest.fixture
def stack_files(tmp_path):
    paths = []
    for seed, tag in ((0, "CAL"), (1, "UNCAL")):
        path = tmp_path / f"tiny_{tag}.tif"
        write_stack(path, make_stack(SHAPE, seed=seed, calendered=tag == "CAL"))
        paths.append(str(path))
    return paths


def test_cli_study_without_uncal(tmp_path, stack_files, capsys):
    out = tmp_path / "study"
    assert (
        cli.main(
            [
                "study",
                stack_files[0],
                "--out",
                str(out),
                "--quick",
                "--epochs",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| 1 | CAL | 1 | 8 | random |" in printed and "skipped" in printed
    with (out / "study.csv").open() as handle:
        statuses = [r["status"] for r in csv.DictReader(handle)]
    assert statuses == ["ok"] * 4 + ["skipped"] * 4


def test_cli_grid_in_parallel_then_resumed(tmp_path, stack_files, capsys):
    out = tmp_path / "grid"
    argv = [
        "grid",
        stack_files[0],
        "--out",
        str(out),
        "--window",
        "4",
        "--crop",
        "16",
        "--hidden",
        "8",
        "--latent",
        "3",
        "--epochs",
        "1",
        "--batch",
        "4",
        "--lr",
        "3e-3,1e-3",
        "--device",
        "cpu",
    ]
    assert cli.main(argv + ["--workers", "2"]) == 0
    first = capsys.readouterr()
    assert "| 1 |" in first.out and "| 2 |" in first.out
    assert cli.main(argv) == 0
    second = capsys.readouterr()
    assert second.out.count("reused") == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["grid", "{cal}", "--out", "{out}", "--layers", "3,x"], "whole number"),
        (["grid", "{cal}", "--out", "{out}", "--lr", "0"], "positive"),
        (["grid", "{missing}", "--out", "{out}"], "error"),
        (["study", "{missing}", "--out", "{out}", "--quick"], "error"),
        (["study", "{cal}", "--out", "{out}", "--epochs", "0"], "at least 1"),
        (["physics", "{out}", "--max-windows", "-1"], "at least 1"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, stack_files, capsys):
    fill = {
        "cal": stack_files[0],
        "out": str(tmp_path / "o"),
        "missing": str(tmp_path / "missing.tif"),
    }
    argv = [a.format(**fill) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err
