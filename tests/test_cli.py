"""The shopsearch command line, run as a user would (a real subprocess, real models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample_catalog"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "api.cli", *args], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "index"
    proc = run("index", str(SAMPLE / "catalog.jsonl"), "--index", str(out), "--quiet")
    assert "106 items accepted" in proc.stdout
    assert "indexed 106 items" in proc.stdout
    return out


def test_search_text_json_filters(index_dir):
    out = json.loads(run("search", "black hoodie", "--index", str(index_dir), "-k", "3", "--json").stdout)
    assert out["results"][0]["title"].endswith("(Black)")
    assert "Hoodie" in out["results"][0]["title"]
    out = json.loads(
        run(
            "search", "mug", "--index", str(index_dir), "--price-max", "15", "--attr", "color=Blue", "--json"
        ).stdout
    )
    assert out["results"]
    assert all(r["price"] <= 15 and r["attributes"]["color"] == "Blue" for r in out["results"])


def test_demo_indexes_the_sample_and_searches_without_serving(tmp_path):
    proc = run("demo", "--index", str(tmp_path / "demo"), "--no-serve")
    assert "indexed 106 items" in proc.stdout
    assert "'wterproof bots'" in proc.stdout and "(showing results for 'waterproof boots')" in proc.stdout
    after = proc.stdout.split("'wterproof bots'")[1]
    assert "Boot" in after.splitlines()[2]  # the corrected search finds boots


def test_misspelled_search_says_what_it_searched(index_dir):
    proc = run("search", "blak hoodei", "--index", str(index_dir), "-k", "3")
    assert "showing results for: black hoodie" in proc.stdout and "(Black)" in proc.stdout
    out = json.loads(run("search", "blak hoodei", "--index", str(index_dir), "--json").stdout)
    assert out["corrected_query"] == "black hoodie"
    out = json.loads(run("search", "blak hoodei", "--index", str(index_dir), "--exact", "--json").stdout)
    assert out["corrected_query"] is None


def test_search_by_photo_and_explain(index_dir):
    catalog = [json.loads(line) for line in open(SAMPLE / "catalog.jsonl")]
    item = next(r for r in catalog if r.get("image") and r.get("title"))
    proc = run(
        "search",
        "",
        "--image",
        str(SAMPLE / item["image"]),
        "--index",
        str(index_dir),
        "-k",
        "1",
        "--explain",
    )
    assert f"[{item['id']}]" in proc.stdout
    assert "image=" in proc.stdout


def test_info_shows_manifest(index_dir):
    info = json.loads(run("info", "--index", str(index_dir)).stdout)
    assert info["manifest"]["counts"]["items"] == 106
    assert info["manifest"]["models"]["text"]["dim"] == 384


def test_bad_rows_are_reported_not_fatal(tmp_path):
    proc = run("index", str(SAMPLE / "bad_rows.jsonl"), "--index", str(tmp_path / "i"), "--quiet")
    assert "skipped" in proc.stdout
    report = json.loads((tmp_path / "i" / "ingest_report.json").read_text())
    assert report["counts"]["skipped"] >= 3
    assert all(issue["reason"] for issue in report["issues"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["index", "/no/such/catalog.jsonl", "--index", "/tmp/x"], "catalog"),
        (["search", "x", "--index", "/no/such/index"], "no index"),
        (["search", "x", "--index", "/tmp", "--price-min", "5", "--price-max", "1"], "price"),
        (["search", "", "--image", "/no/such.jpg", "--index", "/tmp"], "cannot read"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, needle):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr.lower()
