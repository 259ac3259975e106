"""The one atomic-write helper for files outside the store (results folders, figures)."""

import os

import pytest

from cluctl import atomic


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    f = tmp_path / "sub" / "metrics.csv"
    atomic.write_text(f, "a,b\n1,2\n")
    atomic.write_bytes(f, b"new")
    assert f.read_bytes() == b"new"
    assert sorted(p.name for p in f.parent.iterdir()) == ["metrics.csv"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    f = tmp_path / "summary.json"
    f.write_text("old")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError):
        atomic.write_text(f, "new")
    assert f.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_results_and_figures_are_written_through_it(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cluctl.launch import results
    from cluctl.plots import figures

    seen = []
    real = atomic.write_bytes

    def spy(path, data):
        seen.append(os.path.basename(path))
        real(path, data)

    monkeypatch.setattr(figures, "write_bytes", spy)
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    figures._save(fig, str(tmp_path / "f.png"), "png", 50)
    assert seen == ["f.png"] and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(results, "write_text", lambda p, t: seen.append(os.path.basename(p)) or real(p, t.encode()))
    results.atomic_write_text(tmp_path / "m.csv", "x\n")
    assert seen[-1] == "m.csv" and (tmp_path / "m.csv").read_text() == "x\n"
    assert sorted(os.listdir(tmp_path)) == ["f.png", "m.csv"]
