from retriever.fusion import minmax, rrf, weighted_sum


def test_rrf_matches_hand_computed_scores():
    lists = {"bm25": [("a", 9.0), ("b", 5.0)], "text": [("b", 0.9), ("c", 0.8)]}
    fused = rrf(lists, {"bm25": 1.0, "text": 1.0}, k=60)
    assert fused["a"] == 1 / 61
    assert fused["b"] == 1 / 62 + 1 / 61
    assert fused["c"] == 1 / 62
    assert max(fused, key=fused.get) == "b"  # found by both sources


def test_rrf_weights_and_zero_weight_source():
    lists = {"bm25": [("a", 1.0)], "text": [("b", 1.0)]}
    fused = rrf(lists, {"bm25": 2.0, "text": 0.0}, k=10)
    assert fused == {"a": 2 / 11}


def test_minmax_and_constant_list():
    assert minmax([("a", 3.0), ("b", 1.0), ("c", 2.0)]) == [("a", 1.0), ("b", 0.0), ("c", 0.5)]
    assert minmax([("a", 5.0)]) == [("a", 1.0)]
    assert minmax([]) == []


def test_weighted_sum_normalises_each_source():
    lists = {"bm25": [("a", 20.0), ("b", 10.0)], "text": [("b", 0.9), ("a", 0.1)]}
    fused = weighted_sum(lists, {"bm25": 1.0, "text": 3.0})
    assert fused["a"] == 1.0 + 0.0
    assert fused["b"] == 0.0 + 3.0
