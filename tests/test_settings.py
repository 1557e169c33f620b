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
