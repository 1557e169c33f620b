"""The shopsearch command line, run as a user would (a real subprocess, real models)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    """conftest's small catalog (eight items), indexed by the CLI."""
    from conftest import write_small_catalog

    folder = tmp_path_factory.mktemp("small")
    out = folder / "index"
    run("index", str(write_small_catalog(folder / "catalog")), "--index", str(out), "--quiet")
    return out


def test_info_shows_the_reranker_and_cf_status_as_http_info_does(small_index, tmp_path, monkeypatch, capsys):
    """It used to print the manifest and counts only: a checkpoint that does not serve, or a CF
    generation that does not load, showed on /info alone."""
    from api import cli
    from indexer.store import Encoders

    def no_encoder(self: Encoders) -> None:
        raise AssertionError("shopsearch info loaded an encoder")

    monkeypatch.setattr(Encoders, "text", property(no_encoder))  # info needs neither model
    monkeypatch.setattr(Encoders, "image", property(no_encoder))

    def info(index: Path) -> dict:
        monkeypatch.setattr(sys, "argv", ["shopsearch", "info", "--index", str(index)])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        out, err = capsys.readouterr()
        assert exited.value.code == 0, err
        return json.loads(out)

    clean = info(small_index)
    assert clean["manifest"]["counts"]["items"] == 8
    assert clean["reranker"] == "none" and clean["reranker_error"] is None
    assert clean["cf"] == {"trained": False, "last_error": None}

    index = tmp_path / "index"
    shutil.copytree(small_index, index)
    checkpoint = index / "models" / "reranker"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{broken", encoding="utf-8")
    (index / "cf").mkdir()
    (index / "cf" / "CURRENT").write_text("cf-gone\n", encoding="utf-8")  # a generation not there
    broken = info(index)
    assert broken["manifest"]["counts"]["items"] == 8
    assert broken["reranker"] == "none" and "unreadable" in broken["reranker_error"]
    assert broken["cf"]["trained"] is False and "cf-gone" in broken["cf"]["last_error"]


def test_empty_filter_names_are_usage_errors(small_index):
    """'--attr =Black' filtered on an attribute named '', '--attr color=' on an empty value and
    '--category >>>' on no category at all (every item matched): all are refused by option and
    value, like '--attr Black'."""
    for args, needle in (
        (["--attr", "=Black"], "--attr must look like name=value with a non-empty name, got '=black'"),
        (["--attr", " = Black"], "got ' = black'"),
        (["--attr", "color="], "--attr must look like name=value with a non-empty value, got 'color='"),
        (["--attr", "color= "], "got 'color= '"),
        (["--category", ">>>"], "--category '>>>' names no category"),
        (["--category", " > "], "--category ' > ' names no category"),
    ):
        proc = run("search", "hoodie", "--index", str(small_index), *args, check=False)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "Usage:" in proc.stderr, proc.stderr  # as '--attr Black'
        assert needle in proc.stderr.lower(), proc.stderr
    proc = run("search", "hoodie", "--index", str(small_index), "--category", "Apparel>", "--json")
    assert json.loads(proc.stdout)["results"]  # a path with a non-empty part still filters


def test_events_import_refuses_a_folder_that_is_not_an_index(small_index, tmp_path):
    """A mistyped --index used to be created and the events stored in it."""
    events = tmp_path / "ev.jsonl"
    row = {"user_id": "u1", "item_id": "h-black", "event": "click", "timestamp": 1714557700}
    events.write_text(json.dumps(row) + "\n", encoding="utf-8")
    typo = tmp_path / "indx"
    proc = run("events", "import", str(events), "--index", str(typo), "-q", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"no index at {typo}" in proc.stderr
    assert not typo.exists()
    plain = tmp_path / "plain"  # a folder, but not an index
    plain.mkdir()
    proc = run("train-cf", "--events", str(events), "--index", str(plain), "-q", check=False)
    assert proc.returncode == 2 and f"{plain} holds no complete index" in proc.stderr, proc.stderr
    assert not list(plain.iterdir())
    index = tmp_path / "index"
    shutil.copytree(small_index, index)
    proc = run("events", "import", str(events), "--index", str(index), "-q")
    assert "now holds 1 events" in proc.stdout


def test_train_cf_without_events_refuses_a_folder_that_is_not_an_index(small_index, tmp_path):
    """Without --events, a mistyped --index used to be created (an empty event store in it)."""
    typo = tmp_path / "indx"
    proc = run("train-cf", "--index", str(typo), "-q", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"no index at {typo}" in proc.stderr
    assert not typo.exists()
    plain = tmp_path / "plain"  # a folder, but not an index
    plain.mkdir()
    proc = run("train-cf", "--index", str(plain), "-q", check=False)
    assert proc.returncode == 2 and f"{plain} holds no complete index" in proc.stderr, proc.stderr
    assert not list(plain.iterdir())
    index = tmp_path / "index"  # an index without events: gets as far as training
    shutil.copytree(small_index, index)
    proc = run("train-cf", "--index", str(index), "-q", check=False)
    assert "no index" not in proc.stderr and "holds no complete index" not in proc.stderr, proc.stderr


def test_map_keeps_working_and_refuses_an_empty_column(tmp_path):
    """--map shares the NAME=VALUE parsing of --attr: a column mapped to '' is refused up front."""
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"sku": "a1", "name": "Blue running shoe"}\n', encoding="utf-8")
    proc = run(
        "index",
        str(catalog),
        "--index",
        str(tmp_path / "i"),
        "-q",
        "--map",
        "sku=id",
        "--map",
        "name=",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--map must look like name=value with a non-empty value, got 'name='" in proc.stderr.lower()
    proc = run(
        "index", str(catalog), "--index", str(tmp_path / "i"), "-q", "--map", "sku=id", "--map", "name=title"
    )
    assert "indexed 1 items" in proc.stdout


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


def test_a_photo_that_cannot_be_used_is_named(index_dir, tmp_path):
    empty = tmp_path / "my photo.jpg"
    empty.write_bytes(b"")
    html = tmp_path / "page.jpg"
    html.write_text("<html><body>404</body></html>")
    for path, needle in ((empty, " is empty"), (html, ": not an image")):
        proc = run("search", "", "--image", str(path), "--index", str(index_dir), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"--image {path}{needle}" in proc.stderr, proc.stderr


def test_an_image_over_the_upload_limit_is_refused_not_read_to_the_end(index_dir, tmp_path):
    """--image /dev/zero read until memory ran out; a file over max_upload_bytes is refused."""
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * 5000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOPSEARCH_MAX_UPLOAD_BYTES": "4000"}
    for path in (big, Path("/dev/zero")):
        proc = subprocess.run(
            [sys.executable, "-m", "api.cli", "search", "", "--image", str(path), "--index", str(index_dir)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"--image {path} is larger than the limit of 4,000 bytes" in proc.stderr, proc.stderr


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


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", "x", "--frobnicate"], "no such option: --frobnicate"),
        (["search", "a", "b"], "unexpected extra argument"),
        (["serch", "x"], "no such command 'serch'"),
        (["search", "x", "--index"], "'--index' requires an argument"),
        (["search", "x", "--price-max", "abc"], "'--price-max'"),
        (["search", "x", "-k", "abc"], "'-k'"),
        (["train-reranker", "--threads", "0"], "'--threads'"),
        (["train-reranker", "--threads", "-3"], "'--threads'"),
        (["train-reranker", "--fusion-folds", "0"], "'--fusion-folds'"),
    ],
)
def test_usage_mistakes_print_usage_and_exit_2_without_traceback(args, needle):
    proc = run(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr.lower()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", os.fsdecode(b"caf\xe9")], "'query': not valid utf-8"),
        (["search", "mug", "--attr", os.fsdecode(b"color=Bl\xe9")], "'--attr': not valid utf-8"),
    ],
)
def test_arguments_that_are_not_utf8_are_refused_by_name(index_dir, args, needle):
    proc = run(*args, "--index", str(index_dir), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr.lower()


JUDGED = ["--queries", "{queries}", "--qrels", "{qrels}", "--index", "{index}"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["index", str(SAMPLE / "bad_rows.jsonl"), "--index", "{file}", "-q"], "--index {file} is a file"),
        (["index", str(SAMPLE / "bad_rows.jsonl"), "--index", "{file}/sub", "-q"], "{file} is a file"),
        (["events", "import", "{file}", "--index", "{file}", "-q"], "--index {file} is a file"),
        (["info", "--index", "{index}", "--config", "{dir}"], "--config {dir} is a directory"),
        (["train-reranker", *JUDGED, "--out", "{file}"], "--out {file} is a file"),
        (["train-reranker", *JUDGED, "--cache", "{file}"], "--cache {file} is a file"),
        (
            ["eval", *JUDGED, "--runs", "bm25", "--resamples", "10", "-q", "-o", "{file}"],
            "{file}: file exists",
        ),
    ],
)
def test_unusable_paths_are_one_line_errors(index_dir, tmp_path, args, needle):
    (tmp_path / "a-file").write_text("not a folder\n")
    names = {
        "file": str(tmp_path / "a-file"),
        "dir": str(tmp_path),
        "index": str(index_dir),
        "queries": str(SAMPLE / "queries.tsv"),
        "qrels": str(SAMPLE / "qrels.txt"),
    }
    proc = run(*(a.format(**names) for a in args), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle.format(**names).lower() in proc.stderr.lower()


def test_read_only_index_is_refused_before_any_encoding(tmp_path, monkeypatch, capsys):
    from api import cli

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access

    def access(path: str | Path, mode: int) -> bool:  # as on a read-only mount, even for root
        return real_access(path, mode) and not (Path(path) == read_only and mode & os.W_OK)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(
        sys, "argv", ["shopsearch", "index", str(SAMPLE / "catalog.jsonl"), "--index", str(read_only), "-q"]
    )
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"--index {read_only}: cannot write to {read_only}" in err and "Traceback" not in err
    assert not list(read_only.iterdir())  # stopped before the build started


def test_ctrl_c_exits_130_and_keeps_the_live_index(index_dir, tmp_path):
    live = tmp_path / "index"
    shutil.copytree(index_dir, live)
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as f:  # text only, new texts: encoding takes a minute
        for i in range(20_000):
            f.write(
                json.dumps({"id": f"B{i}", "title": f"sturdy widget number {i}", "price": 1 + i % 50}) + "\n"
            )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "api.cli", "index", str(big), "--index", str(live)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        first = proc.stderr.read(1)  # the first progress bar: the build is under way
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (first + err).decode("utf-8", "replace")
    assert proc.returncode == 130, err[-2000:]
    assert err.rstrip().endswith("interrupted") and "Traceback" not in err
    info = json.loads(run("info", "--index", str(live)).stdout)
    assert info["manifest"]["counts"]["items"] == 106
