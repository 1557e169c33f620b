"""Query spelling correction: the corrector on its own, then inside a real index and the API."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_small_catalog
from fastapi.testclient import TestClient

from api.app import create_app
from indexer.encoders.text import tokenizer_words
from indexer.product import Product
from indexer.spelling import MAX_WORD_LEN, SpellCorrector, Vocabulary, damerau1, product_words
from indexer.store import LiveIndex, build_index, current_generation
from reranker.pipeline import SearchPipeline, SearchRequest
from retriever.search import Retriever
from shopsearch.errors import IndexCorruptError
from shopsearch.settings import load_settings


def vocab(*docs: str, lexicon: tuple[str, ...] = ()) -> Vocabulary:
    return Vocabulary.build(
        (product_words(Product(id=str(i), title=d)) for i, d in enumerate(docs)), lexicon=lexicon
    )


@pytest.mark.parametrize(
    ("a", "b", "one"),
    [
        ("drill", "dril", True),  # deletion
        ("drill", "drilll", True),  # insertion
        ("drill", "drull", True),  # substitution
        ("drill", "dirll", True),  # swap of neighbours
        ("drill", "drill", False),
        ("drill", "dlilr", False),  # swap of letters that are not neighbours
        ("drill", "dr", False),
        ("faucet", "fuacte", False),  # two edits
    ],
)
def test_damerau_distance_one(a: str, b: str, one: bool) -> None:
    assert damerau1(a, b) is one and damerau1(b, a) is one


def test_corrects_unknown_words_to_the_most_used_neighbour() -> None:
    v = vocab(
        *["cordless drill"] * 5,
        *["drill bits"] * 2,
        "grill cover",
        "grill brush",
        "patio door",
        "patio chair",
    )
    c = SpellCorrector(v)
    fixed = c.correct("Cordless  DRIL, 18v")
    assert fixed.text == "Cordless  drill, 18v" and fixed.changes == (("DRIL", "drill"),)
    assert fixed.original == "Cordless  DRIL, 18v" and fixed.changed
    assert c.correct("padio door").text == "patio door"
    assert c.correct("bitz").text == "bits"  # 'bits' is used by 2 products: offered


def test_inflected_forms_far_misspellings_and_run_together_words() -> None:
    v = vocab(
        *["garment steamer"] * 3,
        *["maintenance kit"] * 2,
        *["corner shower"] * 2,
        "shower door",
        *["magnetic maintainer"] * 3,
    )
    c = SpellCorrector(v)
    assert c.correct("steamerrs").text == "steamers"  # a form of 'steamer', one deletion away
    assert c.correct("maintance kit").text == "maintenance kit"  # two edits, same first letter
    assert c.correct("cornershower").text == "corner shower"
    assert c.correct("cornershower").changes == (("cornershower", "corner shower"),)
    assert not SpellCorrector(v, far_len=20).correct("maintance").changed  # two edits: long words only
    assert not c.correct("naintance").changed  # two edits and another first letter: not guessed


def test_leaves_known_rare_short_and_numeric_words_alone() -> None:
    v = vocab(*["cordless drill"] * 5, "drell branded hammer", "grill", "grill", "mug", "mug")
    c = SpellCorrector(v)
    assert not c.correct("drell").changed  # in the catalog, even once: a real word here
    assert not c.correct("drills").changed  # another form of a catalog word (same stem)
    assert not c.correct("mog").changed  # under 4 letters: one edit reaches too many words
    assert not c.correct("dril2 2x4 x200").changed  # digits: a model number or a size
    assert not c.correct("zzzzzz").changed  # nothing one edit away
    assert not c.correct("hammr").changed  # 'hammer' is used by one product only: not offered
    assert not c.correct("").changed
    cjk = SpellCorrector(vocab(*["红色连衣裙"] * 3))
    assert not cjk.correct("蓝色连衣裙").changed  # one character is another product, not a typo


def test_units_and_dimensions_are_searched_as_the_catalog_writes_them() -> None:
    abbrev = vocab(*["Pine Board 2 in. x 4 in. x 8 ft."] * 3, "5 gal. Bucket", "Vanity in White 36 in.")
    c = SpellCorrector(abbrev)
    assert c.correct("2x4 8 foot board").text == "2 x 4 8 ft board"
    assert c.correct('36" vanity').text == "36 in vanity"
    assert c.correct("36inch vanity in white").text == "36 in vanity in white"  # 'in white': no number
    assert c.correct("5 gallon bucket").text == "5 gal bucket"
    assert not c.correct("5 gallon bucket").changed  # same meaning: not reported as a correction
    spelled = vocab(*["Vanity 36 inch, 2x4 frame"] * 3, "Kettle 1.5 litre")
    c = SpellCorrector(spelled)
    assert c.correct('36" vanity').text == "36 inch vanity"
    assert c.correct("2 x 4 frame").text == "2x4 frame"
    assert c.correct("10 ft hose").text == "10 ft hose"  # feet never follow a number here: kept
    assert c.correct("18-volt drill").text == "18-volt drill"
    assert c.correct("3 in 1 vanity").text == "3 in 1 vanity"  # a count, not inches
    both = SpellCorrector(vocab(*["Monitor 17 in. wide"] * 3, "Laptop 17 inch screen", "Tablet 10inch"))
    # 'inch' is common too, and written both joined ('10inch', one token) and apart: all searched
    assert both.correct("17 inch monitor").text == "17inch 17 inch in monitor"
    assert both.correct('17" monitor').text == "17 in monitor"
    assert vocab("Sofa 3-in-1", "Sofa 2 in 1").units == {}


def test_units_joined_to_the_number_are_searched_the_way_products_write_them() -> None:
    """BM25 sees '16GB' as one token and '16 GB' as two: a query "16gb ram" found no notebook
    whose specs say "16 GB" (and matched "RAM Mounts" instead)."""
    apart = SpellCorrector(vocab(*["Notebook 16 GB RAM, 512 GB SSD"] * 12, "USB stick 64GB"))
    assert apart.correct("notebook 16gb ram 512gb ssd").text == "notebook 16 gb ram 512 gb ssd"
    assert not apart.correct("notebook 16gb ram").changed  # same meaning: not a correction
    joined = SpellCorrector(vocab(*["USB stick 64GB", "Notebook 16GB RAM"] * 3))
    assert joined.correct("64 gb usb stick").text == "64gb usb stick"
    both = SpellCorrector(vocab(*["Notebook 16 GB RAM"] * 3, *["Tablet 16GB"] * 2))
    assert both.correct("16gb tablet").text == "16gb 16 gb tablet"
    # Home Depot writes '60W' joined and '60 Watt' apart: a typed 'w' keeps its joined form
    bulbs = SpellCorrector(vocab(*["LED Bulb 60W"] * 4, *["Bulb 100 Watt Soft White"] * 6))
    assert bulbs.correct("60 w bulb").text == "60w 60 watt bulb"
    assert bulbs.correct("100 watt bulb").text == "100 watt bulb"
    assert bulbs.correct("3m tape").text == "3m tape"  # a brand, no unit


def test_two_words_the_catalog_writes_as_one_search_both_spellings() -> None:
    v = vocab(
        *["Kitchen Backsplash Tile"] * 3, "Back Door", "Splash Guard", *["Pipe 3 in. to 2 in. into"] * 2
    )
    c = SpellCorrector(v)
    fixed = c.correct("kitchen back splash")
    assert fixed.text == "kitchen back splash backsplash" and not fixed.changed  # an addition, not a fix
    assert c.correct("3 in to 2 in").text == "3 in to 2 in"  # a unit after a number is not half a word
    assert c.correct("back door").text == "back door"  # 'backdoor' is no catalog word


def test_common_words_change_only_where_the_rest_of_the_query_fits_the_replacement() -> None:
    docs = (*["Concrete Paint Gray", "Epoxy Floor Paint", "Grill Cleaning Brush"] * 2, "Charcoal Grill")
    common = ("drill", "pain", "much", "cheap", "grill", "paint")
    v = vocab(*docs, lexicon=common)
    assert v.lexicon == {"drill", "pain", "much", "cheap"}  # the catalog's own words are not kept
    c = SpellCorrector(v)
    # a real word the shop lacks: a request for something it does not sell, not a typo
    kept = c.correct("cordless drill")  # no product has 'cordless' and 'grill'
    assert not kept.changed and kept.text == "cordless drill"
    assert kept.suggestion == "cordless grill"  # offered ("did you mean"), not searched
    assert not c.correct("drill").changed  # alone: nothing says it is a typo
    assert c.correct("drill").suggestion == "grill"
    assert not c.correct("pain").changed
    assert c.correct("concrete pain").changes == (("pain", "paint"),)  # 'concrete paint' is sold
    assert c.correct("concrete pain").suggestion is None and c.correct("gril").suggestion is None
    assert c.correct("epoxy pain").text == "epoxy paint"
    assert c.correct("drill cleaning brush").text == "grill cleaning brush"
    assert c.correct("concrete pain drill").text == "concrete paint drill"  # each word on its own
    # one product is no evidence (a catalog has odd products, as it has typos)
    assert c.correct("charcoal drill").text == "charcoal drill"
    assert c.correct("charcoal drill").suggestion == "charcoal grill"
    # the context may be a corrected word too; words outside the lexicon keep the old rule
    assert c.correct("concerte pain").text == "concrete paint"
    assert c.correct("gril").text == "grill" and c.correct("paitn").text == "paint"
    # without a lexicon (a model without a tokenizer file) every unknown word is corrected
    assert SpellCorrector(vocab(*docs)).correct("cordless drill").text == "cordless grill"


def test_product_lists_answer_which_words_appear_together() -> None:
    v = vocab("Desk Lamp", "Desk Chair", "Floor Lamp")
    assert v.has_postings
    assert v.together(["desk", "lamp"]) and v.together(["floor", "lamp"])
    assert v.together(["lamp"], at_least=2) and not v.together(["desk", "lamp"], at_least=2)
    assert not v.together(["floor", "chair"]) and not v.together(["desk", "sofa"])
    v.add(product_words(Product(id="new", title="Floor Chair")), row=3)
    assert v.together(["floor", "chair"])  # an upserted product counts at once


def test_tokenizer_words_are_the_whole_words_of_the_text_model(tmp_path: Path) -> None:
    packaged = tokenizer_words("all-MiniLM-L6-v2")
    assert {"drill", "cheap", "vinegar"} <= packaged and "dril" not in packaged
    assert not any(w.startswith("#") or not w.isalpha() for w in packaged)
    files = {
        "wordpiece": {"model": {"type": "WordPiece", "vocab": {"Drill": 0, "##ing": 1, "ab": 2, "x1y": 3}}},
        "unigram": {"model": {"type": "Unigram", "vocab": [["\u2581drill", -1.0], ["ing", -2.0]]}},
        "bpe": {"model": {"type": "BPE", "vocab": {"\u0120drill": 0, "ing": 1}}},
        "broken": None,
    }
    for name, tok in files.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "tokenizer.json").write_text("{not json" if tok is None else json.dumps(tok))
        assert tokenizer_words(str(folder)) == (set() if tok is None else {"drill"}), name
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text("{}")
    (bert / "vocab.txt").write_text("[PAD]\ndrill\n##ing\n")
    assert tokenizer_words(str(bert)) == {"drill"}
    assert tokenizer_words(str(tmp_path / "missing")) == set()  # the encoder reports that one


def test_words_added_after_the_build_are_never_corrected() -> None:
    v = vocab("hoodie", "hoodie", "hoodie")
    c = SpellCorrector(v)
    assert c.correct("hoodia").text == "hoodie"
    v.add(product_words(Product(id="new", title="Hoodia Herbal Tea")))
    assert not c.correct("hoodia").changed
    assert not c.correct("hoodias").changed  # its other forms too
    assert c.correct('36" hoodie').text == '36" hoodie'  # no product writes inches yet
    v.add(product_words(Product(id="new2", title="Hoodie rack 36 inch")))
    assert c.correct('36" hoodie').text == "36 inch hoodie"  # the same corrector sees the upsert


def test_overlong_words_are_left_out_and_never_corrected() -> None:
    # Each vocabulary word is stored with all its one-letter deletions: a 1 MB "word" (a pasted
    # blob) made the build hang. Nobody types or misspells such a word, so it is left out on both
    # sides: not in the vocabulary, and a query word that long is never changed.
    long = "pneumonoultramicroscopicsilicovolcanoconiosis"
    assert len(long) > MAX_WORD_LEN
    blob = "a" * 2000
    assert long not in product_words(Product(id="1", title=f"{long} mask {blob}"))
    v = vocab(*[f"{long} mask"] * 3, f"{blob} filter")
    assert "mask" in v.words and "filter" in v.words
    assert max(len(w) for w in v.words) <= MAX_WORD_LEN
    c = SpellCorrector(v)
    typo = long.replace("volcano", "volcamo")
    assert not c.correct(f"{typo} mask").changed
    assert not c.correct(blob[:-1]).changed
    assert c.correct("maks").text == "mask"  # ordinary words still are


def test_vocabulary_files_round_trip_without_pickle(tmp_path: Path) -> None:
    v = vocab("cordless drill 18 v", "cordless drill", "drill bits")
    assert v.units == {"v": 1, "v:spaced": 1}
    v.save(tmp_path)
    for name in ("df.npy", "keys.npy", "ids.npy"):
        arr = np.load(tmp_path / "spelling" / name, allow_pickle=False)
        assert arr.dtype != object
    loaded = Vocabulary.load(tmp_path)
    assert loaded is not None and loaded.words == v.words and list(loaded.df) == list(v.df)
    assert loaded.units == v.units
    assert SpellCorrector(loaded).correct("cordles dril").text == "cordless drill"
    common = vocab("Desk Lamp", "Desk Lamp", lexicon=("damp", "camp"))
    common.save(tmp_path / "c")
    back = Vocabulary.load(tmp_path / "c")
    assert back is not None and back.lexicon == {"damp", "camp"} and back.together(["desk", "lamp"])
    assert SpellCorrector(back).correct("desk damp").text == "desk lamp"
    assert not SpellCorrector(back).correct("damp").changed
    for name in ("post_ptr.npy", "post_rows.npy"):  # saved before product lists: no context check
        (tmp_path / "c" / "spelling" / name).unlink()
    old = Vocabulary.load(tmp_path / "c")
    assert old is not None and not old.has_postings
    assert SpellCorrector(old).correct("damp").text == "lamp"
    assert Vocabulary.load(tmp_path / "elsewhere") is None  # an index built before this existed
    (tmp_path / "spelling" / "ids.npy").write_bytes(b"garbage")
    with pytest.raises(IndexCorruptError, match="spelling"):
        Vocabulary.load(tmp_path)
    v.save(tmp_path)
    (tmp_path / "spelling" / "words.json").write_text(json.dumps({"format": 1, "words": ["a"]}))
    with pytest.raises(IndexCorruptError, match="inconsistent"):
        Vocabulary.load(tmp_path)


# ---------------------------------------------------------------------- in an index
@pytest.fixture(scope="module")
def index_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("spelling")
    catalog = write_small_catalog(root / "catalog")
    index_dir = root / "index"
    settings = load_settings(index_dir=index_dir, media_roots=[root / "catalog"])
    build_index(catalogs=[catalog], index_dir=index_dir, settings=settings, progress=False)
    pipeline = SearchPipeline.open(index_dir, settings)
    yield {"pipeline": pipeline, "settings": settings, "index_dir": index_dir}
    pipeline.close()


def top_ids(pipeline: SearchPipeline, text: str, **kw: Any) -> list[str]:
    return [r.id for r in pipeline.search(SearchRequest(text=text, k=3, **kw)).results]


def test_misspelled_query_finds_what_the_right_spelling_finds(index_env: dict[str, Any]) -> None:
    p = index_env["pipeline"]
    gen = index_env["index_dir"] / "generations" / current_generation(index_env["index_dir"])
    assert (gen / "spelling" / "words.json").exists()  # built with the generation
    assert "damp" in Vocabulary.load(gen).lexicon  # the text model's words the catalog lacks
    assert p.retriever.query_text("damp") == "damp"  # a real word: kept
    assert p.retriever.query_text("desk damp") == "desk lamp"  # a desk lamp is sold
    resp = p.search(SearchRequest(text="stonware cofee mug", k=3))
    assert resp.correction is not None and resp.correction.text == "stoneware coffee mug"
    assert [r.id for r in resp.results] == top_ids(p, "stoneware coffee mug")
    assert resp.results[0].id.startswith("m-")
    # switched off per request, or in the settings: searched as typed
    assert p.search(SearchRequest(text="stonware cofee mug", k=3, spell_correction=False)).correction is None
    off = Retriever(p.index, p.settings.model_copy(update={"spell_correction": False}))
    assert off.retrieve("stonware cofee mug").correction is None
    assert off.query_text("stonware  cofee") == "stonware cofee"
    assert p.retriever.query_text("stonware  cofee") == "stoneware coffee"
    # a correctly spelled query is left alone
    assert p.search(SearchRequest(text="coffee mug", k=3)).correction is None


def test_upserted_words_are_known_at_once_and_after_restart(index_env: dict[str, Any]) -> None:
    p, settings = index_env["pipeline"], index_env["settings"]
    assert p.retriever.query_text("lamx") == "lamp"  # 'lamp': two catalog products
    p.upsert([Product(id="lamx-1", title="Lamx Smart Bulb", brand="Lamx")])
    try:
        assert p.retriever.query_text("lamx") == "lamx"  # the new brand is not "corrected" away
        assert top_ids(p, "lamx")[0] == "lamx-1"
        reopened = LiveIndex(index_env["index_dir"], settings)  # WAL replay adds the words again
        assert Retriever(reopened, settings).query_text("lamx") == "lamx"
    finally:
        p.delete(["lamx-1"])


def test_index_built_before_spelling_gets_a_vocabulary_at_load(
    index_env: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "old"
    shutil.copytree(index_env["index_dir"], copy)
    gen = copy / "generations" / current_generation(copy)
    shutil.rmtree(gen / "spelling")
    index = LiveIndex(copy, index_env["settings"])
    assert Retriever(index, index_env["settings"]).query_text("stonware") == "stoneware"


def test_api_reports_the_corrected_query(index_env: dict[str, Any]) -> None:
    with TestClient(create_app(index_env["pipeline"], settings=index_env["settings"])) as client:
        body = client.post("/search", json={"query": "trail zip hoodei", "k": 3}).json()
        assert body["corrected_query"] == "trail zip hoodie"
        assert body["corrections"] == [{"from": "hoodei", "to": "hoodie"}]
        assert body["results"][0]["id"].startswith("h-")
        exact = client.post("/search", json={"query": "trail zip hoodei", "spell_correction": False}).json()
        assert exact["corrected_query"] is None and exact["corrections"] == []
        plain = client.post("/search", json={"query": "trail zip hoodie"}).json()
        assert plain["corrected_query"] is None and plain["did_you_mean"] is None
        # a common word no product uses is searched as typed; the catalog's word is offered
        common = client.post("/search", json={"query": "damp", "k": 3}).json()
        assert common["did_you_mean"] == "lamp"
        assert common["corrected_query"] is None and common["corrections"] == []
        fits = client.post("/search", json={"query": "desk damp", "k": 3}).json()
        assert fits["corrected_query"] == "desk lamp" and fits["did_you_mean"] is None
        assert fits["results"][0]["id"].startswith("l-")
        assert client.post("/search", json={"query": "mug", "spell_correction": "maybe"}).status_code == 422
