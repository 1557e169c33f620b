import logging

import pytest

from shopsearch.errors import ConfigError
from shopsearch.settings import load_settings


def test_toml_env_and_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "s.toml"
    cfg.write_text("rrf_k = 10\ncandidates = 50\n[field_boosts]\ntitle = 5.0\n")
    monkeypatch.setenv("SHOPSEARCH_CANDIDATES", "70")
    s = load_settings(cfg, fusion="weighted")
    assert s.rrf_k == 10  # from the file
    assert s.candidates == 70  # environment beats the file
    assert s.fusion == "weighted"  # explicit beats both
    assert s.field_boosts == {"title": 5.0}


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="rrf_k"):
        load_settings(None, rrf_k=0)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rrf_k = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="field_boosts"):
        load_settings(None, field_boosts={"title": -1})
    # NaN passed the old '< 0' check and reordered results; a misspelt source was ignored
    for weights in ({"bm25": float("nan")}, {"text": float("inf")}):
        with pytest.raises(ConfigError, match="source_weights.*finite number"):
            load_settings(None, source_weights=weights)
    with pytest.raises(ConfigError, match="unknown source.*bm52"):
        load_settings(None, source_weights={"bm52": 1.0})
    assert load_settings(None, source_weights={"fused": 1.5, "cf": 0.0}).source_weights["fused"] == 1.5
    # keys outside the [shopsearch] table used to be ignored without a word
    outside = tmp_path / "outside.toml"
    outside.write_text("candidates = -1\n[shopsearch]\nrrf_k = 30\n")
    with pytest.raises(ConfigError, match="candidates outside the \\[shopsearch\\] table"):
        load_settings(outside)
    scalar = tmp_path / "scalar.toml"
    scalar.write_text("shopsearch = 5\n")
    with pytest.raises(ConfigError, match="must be a \\[shopsearch\\] table"):
        load_settings(scalar)


def test_bad_json_in_environment_is_a_config_error(monkeypatch):
    monkeypatch.setenv("SHOPSEARCH_CORS_ORIGINS", "not json")
    with pytest.raises(ConfigError, match="CORS_ORIGINS|cors_origins"):
        load_settings(None)


def test_unknown_environment_variables_are_warned_about_once(tmp_path, monkeypatch, caplog):
    """They used to be ignored without a word (unknown TOML keys were already refused)."""
    cfg = tmp_path / "s.toml"
    cfg.write_text("rrf_k = 10\n")
    monkeypatch.setenv("SHOPSEARCH_CONFIG", str(cfg))  # read by load_settings, not a field
    monkeypatch.setenv("SHOPSEARCH_CANDIDATES", "70")
    monkeypatch.setenv("SHOPSEARCH_RERANKER_DEPHT", "50")
    monkeypatch.setenv("SHOPSEARCH_QQZZXXWW", "1")
    with caplog.at_level(logging.WARNING, logger="shopsearch.settings"):
        for _ in range(3):
            s = load_settings(None)
    assert s.rrf_k == 10 and s.candidates == 70 and s.reranker_depth == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "shopsearch.settings"]
    assert len(lines) == 2, lines  # once each, however often settings are loaded
    typo = next(line for line in lines if "SHOPSEARCH_RERANKER_DEPHT" in line)
    assert "did you mean SHOPSEARCH_RERANKER_DEPTH?" in typo
    far = next(line for line in lines if "SHOPSEARCH_QQZZXXWW" in line)
    assert "did you mean" not in far
    assert not any("SHOPSEARCH_CONFIG" in line or "SHOPSEARCH_CANDIDATES" in line for line in lines)


def test_a_reranker_model_folder_that_does_not_exist_is_warned_about(tmp_path, caplog):
    from types import SimpleNamespace

    from reranker.serving import open_reranker

    index = SimpleNamespace(index_dir=tmp_path / "index")  # all open_reranker reads before a checkpoint
    with caplog.at_level(logging.WARNING, logger="reranker.serving"):
        open_reranker(index, load_settings(None))  # the default folder: waited for without a word
        assert not caplog.records
        typo = tmp_path / "modles" / "reranker"
        rr = open_reranker(index, load_settings(None, reranker_model=typo))
    assert rr.name == "none"  # the fused order serves meanwhile, as before
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and str(typo) in lines[0], lines
    assert "fused order serves until a checkpoint appears" in lines[0]
    caplog.clear()
    typo.mkdir(parents=True)  # a folder that exists but has no checkpoint yet: the designed wait
    with caplog.at_level(logging.WARNING, logger="reranker.serving"):
        open_reranker(index, load_settings(None, reranker_model=typo))
    assert not caplog.records


def test_a_reranker_model_that_is_a_file_is_a_config_error(tmp_path):
    """Only a missing folder was warned about: a file (a checkpoint's config.json or model.onnx
    given instead of its folder) started the server without a word, and the fused order served
    for good, since no checkpoint can ever appear inside a file. Now the start fails, naming the
    setting, the file and, when it lies in a checkpoint, the folder meant."""
    from types import SimpleNamespace

    from reranker.serving import open_reranker

    index = SimpleNamespace(index_dir=tmp_path / "index")
    checkpoint = tmp_path / "reranker"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}", encoding="utf-8")
    inside = checkpoint / "model.onnx"
    inside.write_bytes(b"")
    with pytest.raises(ConfigError) as exc:
        open_reranker(index, load_settings(None, reranker_model=inside))
    message = exc.value.message
    assert f"reranker_model {inside} is a file, not a checkpoint folder" in message
    assert f"the checkpoint folder is probably {checkpoint}" in message
    lone = tmp_path / "weights.bin"
    lone.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file, not a checkpoint folder") as exc:
        open_reranker(index, load_settings(None, reranker_model=lone))
    assert "probably" not in exc.value.message
    # with the re-ranker off the setting is not used: no error
    assert open_reranker(index, load_settings(None, reranker=False, reranker_model=lone)).name == "none"
