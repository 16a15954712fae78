"""``bench.score_snapshots``: appends one CSV row per snapshot not scored yet (scorer stubbed: no Inception)."""

from __future__ import annotations

import csv
import json

import pytest

from bench import score_snapshots


def _gen(path):
    path.mkdir(parents=True)
    (path / "arch.json").write_text("{}")
    (path / "weights.pt").write_bytes(b"")


def _run(tmp_path, snapshots, final_images):
    run = tmp_path / "runs" / "long"
    (run / "config.json").parent.mkdir(parents=True)
    cfg = {"config": {"teacher": {"spec": "demo"}, "batch": {"global_size": 32}}}
    (run / "config.json").write_text(json.dumps(cfg))
    for images in snapshots:
        _gen(run / "snapshots" / f"{images:09d}")
    _gen(run / "generator_ema")
    (run / "checkpoints" / "ckpt-000000010").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-000000010" / "meta.json").write_text(json.dumps({"images": final_images}))
    return run


def _rows(path):
    with open(path, newline="") as f:
        return [(r["variant"], int(r["snapshot_images"]), int(r["iterations_at_snapshot"]), r["fid_n300"])
                for r in csv.DictReader(f)]


def test_scores_only_what_the_csv_lacks_and_the_final_export_at_its_checkpoint(tmp_path):
    run = _run(tmp_path, [32000, 16000], 40000)
    out = tmp_path / "scores.csv"
    scored = []

    def fid(path):
        scored.append(path.name)
        return len(scored) + 0.5

    assert score_snapshots.main([str(run), "--csv", str(out), "--final", "--overrides", "batch.global_size=32"],
                                fid_fn=fid) == 0
    assert scored == ["000016000", "000032000", "generator_ema"]
    assert _rows(out) == [("long", 16000, 500, "1.50"), ("long", 32000, 1000, "2.50"), ("long", 40000, 1250, "3.50")]
    _gen(run / "snapshots" / "000048000")  # the run resumed and went on
    assert score_snapshots.main([str(run), "--csv", str(out)], fid_fn=fid) == 0
    assert scored[3:] == ["000048000"] and _rows(out)[-1] == ("long", 48000, 1500, "4.50")
    assert score_snapshots.main([str(run), "--csv", str(out), "--variant", "other"], fid_fn=fid) == 0
    assert len(_rows(out)) == 7  # another variant name: all four again


def test_rejects_a_directory_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        score_snapshots.main([str(tmp_path), "--csv", str(tmp_path / "x.csv")], fid_fn=lambda p: 0.0)
    assert e.value.code == 2 and "config.json" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
