"""Lexical search: any text is a valid query, identifier splitting, BM25 field weights, filters, freshness."""

from __future__ import annotations

import os

import pytest

from llmc_rag_service.search import QueryError
from llmc_rag_service.search.query import MAX_TERMS, parse_query
from tests.searchkit import SearchRepo, enrichment

CODE = {
    "web/handlers.js": "function parseJsonBody(req) {\n  return JSON.parse(req.body);\n}\n",
    "py/handlers.py": "def parse_json_body(raw):\n    return json.loads(raw)\n\n\n"
                      "def route(request):\n    body = parse_json_body(request.data)\n    return dispatch(body)\n",
    "py/shapes.py": "class Shape:\n    def area(self):\n        return 0\n\n    def perimeter(self):\n        return 0\n",
    "docs/notes.txt": "Nothing about bodies here, only notes.\n",
}

HOSTILE = ['"', '""', "'", "AND", "OR", "NOT", "NEAR", "NEAR(a b)", "a AND", "-", "--foo", "(", ")", "((a)",
           "*", "a*", "*a", "^", "^a", "col:value", "name:parse", "{name}: x", "a + b", "x OR", "NOT NOT",
           'parse "json', 'unbalanced " quote AND (', "f(x); DROP TABLE spans; --", "\\", "%_", "😀 parse",
           "ünïcödé", "a\x00b", "tab\tnew\nline", "~!@#$%^&*()_+=-`", "a" * 500]


@pytest.fixture
def sr(tmp_path):
    made = SearchRepo(tmp_path, CODE)
    yield made
    made.close()


def test_camel_and_snake_case_both_match_split_words(sr):
    """"parse json" finds parseJsonBody (JS) and parse_json_body (Python); so does either spelling."""
    for query in ("parse json", "parseJsonBody", "parse_json_body", "PARSE JSON BODY"):
        names = sr.names(query, mode="lexical")
        assert {"parseJsonBody", "parse_json_body"} <= set(names[:2]), query


def test_name_match_ranks_above_a_body_mention(sr):
    """The definition of parse_json_body ranks above route, which only calls it."""
    hits = sr.search("parse_json_body", mode="lexical").hits
    names = [h.name for h in hits]
    assert names.index("parse_json_body") < names.index("route")
    assert hits[0].score > hits[-1].score and hits[0].lexical_rank == 1 and hits[0].semantic_rank is None


@pytest.mark.parametrize("query", HOSTILE)
def test_any_text_is_a_valid_query(sr, query):
    """Punctuation, quotes, FTS operators, a lone '*', NUL, emoji: an answer or a clear QueryError, never an FTS error."""
    try:
        result = sr.search(query, mode="lexical")
    except QueryError as exc:
        assert "no letters or digits" in str(exc) or "empty" in str(exc)
    else:
        assert result.mode == "lexical" and isinstance(result.hits, list)


def test_operators_are_plain_words(sr):
    """'parse AND NOT json' is read as words: it still finds the parse functions."""
    assert "parse_json_body" in sr.names("parse AND NOT json", mode="lexical")


def test_ten_kilobyte_query_is_cut_to_a_bounded_number_of_terms(sr):
    """A 10 KB paste is answered and keeps at most MAX_TERMS terms."""
    text = " ".join(f"word{i}" for i in range(2000))[:10_240] + " parse"
    assert len(parse_query(text).terms) == MAX_TERMS
    assert sr.search(text, mode="lexical").hits == []  # the 32 kept terms are word0..word31
    assert sr.search("parse " + text, mode="lexical").hits


@pytest.mark.parametrize("query, message", [("", "empty"), ("   \n", "empty"), ("?!.,;", "no letters or digits"),
                                            ("*", "no letters or digits"), ("abc\udcff", "not valid UTF-8")])
def test_empty_punctuation_and_undecodable_queries_say_why(query, message):
    """Empty, punctuation-only and non-UTF-8 queries raise QueryError with the reason."""
    with pytest.raises(QueryError, match=message):
        parse_query(query)


def test_stopwords_are_dropped_unless_nothing_else_is_left():
    """Common words do not dilute a question; a query of only common words is still searched."""
    assert [t.words for t in parse_query("how do I parse the body").terms] == [("parse",), ("body",)]
    assert [t.words for t in parse_query("the of").terms] == [("the",), ("of",)]
    assert parse_query('"the of" x*').match == '"the of" OR "x"'
    assert parse_query("pars*").match == '"pars" *'


def test_filters_restrict_language_kind_and_path(sr):
    """--lang, --kind and --path keep only the matching spans."""
    from llmc_rag_service.search import SpanFilter

    assert {h.language for h in sr.search("parse json", mode="lexical", filters=SpanFilter(language="javascript")).hits} == {"javascript"}
    assert sr.names("area perimeter shape", mode="lexical", filters=SpanFilter(kind="class")) == ["Shape"]
    assert {h.path for h in sr.search("parse", mode="lexical", filters=SpanFilter(path_glob="py/*")).hits} == {"py/handlers.py"}
    assert sr.search("parse", mode="lexical", filters=SpanFilter(repo="/nowhere")).hits == []


@pytest.mark.parametrize("bad, message", [({"limit": 0}, "limit"), ({"limit": -1}, "limit"), ({"limit": 101}, "limit"),
                                          ({"mode": "fuzzy"}, "unknown mode")])
def test_limit_and_mode_are_bounded(sr, bad, message):
    """limit outside 1..100 and unknown modes are refused with the value named."""
    with pytest.raises(QueryError, match=message):
        sr.search("parse", **bad)


def test_unknown_language_and_kind_are_refused(sr):
    """An unknown language or kind is refused, listing the known ones."""
    from llmc_rag_service.search import SpanFilter

    with pytest.raises(QueryError, match="unknown language 'pyhton'; known: c, cpp"):
        sr.search("parse", filters=SpanFilter(language="pyhton"))
    with pytest.raises(QueryError, match="unknown kind 'func'"):
        sr.search("parse", filters=SpanFilter(kind="func"))


def test_limit_caps_the_hits(sr):
    """limit=1 returns the single best hit."""
    assert len(sr.search("parse json body route", mode="lexical", limit=1).hits) == 1


def test_method_ranks_above_its_enclosing_class(sr):
    """When a class and its method both match, the narrower method comes first."""
    names = sr.names("area", mode="lexical")
    assert names.index("Shape.area") < names.index("Shape")


def test_hit_turns_stale_when_its_file_changes_and_fresh_after_reindex(sr):
    """fresh flips to false when the file's size/mtime change on disk, and back after the re-index."""
    assert all(h.fresh for h in sr.search("area", mode="lexical").hits)
    path = sr.root / "py/shapes.py"
    path.write_text(path.read_text() + "\n# edited\n")
    hits = sr.search("area", mode="lexical").hits
    assert hits and not any(h.fresh for h in hits)
    sr.scanner.process_paths(["py/shapes.py"])
    assert all(h.fresh for h in sr.search("area", mode="lexical").hits)


def test_same_size_rewrite_with_new_mtime_is_stale(sr):
    """A rewrite that keeps the size but changes the mtime is flagged too."""
    path = sr.root / "web/handlers.js"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    (hit,) = [h for h in sr.search("parseJsonBody", mode="lexical").hits if h.path == "web/handlers.js"]
    assert hit.fresh is False


def test_deleted_file_never_appears(sr):
    """A file deleted on disk is dropped from hits at once, and from the store once rescanned."""
    sr.delete("web/handlers.js", rescan=False)
    assert "web/handlers.js" not in {h.path for h in sr.search("parse json", mode="lexical").hits}
    sr.scanner.process_paths(["web/handlers.js"])
    assert "web/handlers.js" not in {h.path for h in sr.search("parse json", mode="lexical").hits}


def test_state_and_summary_follow_the_enrichment(sr):
    """state is pending before enrichment, enriched (with summary and pitfalls) after, failed when dead-lettered."""
    assert {h.state for h in sr.search("parse", mode="lexical").hits} == {"pending"}
    sr.enrich(lambda name: None if name == "route" else enrichment(f"Summary of {name}.", ("watch out",)))
    hits = {h.name: h for h in sr.search("parse", mode="lexical").hits}
    assert hits["route"].state == "failed" and hits["route"].summary is None and hits["route"].pitfalls is None
    assert hits["parse_json_body"].state == "enriched"
    assert hits["parse_json_body"].summary == "Summary of parse_json_body." and hits["parse_json_body"].pitfalls == ["watch out"]


def test_an_identifier_query_also_finds_its_parts_in_another_order(tmp_path):
    """``parseQueryParams`` finds code that parses query params under another name (its parts near each other)."""
    made = SearchRepo(tmp_path, {"q.py": "def params_from_query(url):\n    # parse the query string\n"
                                          "    return dict(p.split('=') for p in url.split('&'))\n",
                                 "other.py": "def unrelated():\n    return 'query'\n"})
    try:
        assert made.names("parseQueryParams", mode="lexical")[:1] == ["params_from_query"]
    finally:
        made.close()


QUEUE = {"jobs/queue.py": "class JobQueue:\n    def __init__(self, store):\n        self.store = store\n\n"
                          "    def claim(self):\n        return self.store.next_job_queue_row()\n\n"
                          "    def complete(self, job):\n        self.store.finish(job)\n",
         "jobs/use.py": "def drain(queue: JobQueue):\n    while queue.claim():\n        pass\n"}


@pytest.mark.parametrize("query", ["JobQueue", "job queue", "jobqueue", "where is the JobQueue class"])
@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
def test_a_class_the_query_names_ranks_above_its_own_methods(tmp_path, query, mode):
    """Narrowest-first does not bury an exact name match: a query naming the class gets the class first."""
    sr = SearchRepo(tmp_path, QUEUE)
    try:
        sr.embed_all()
        names = sr.names(query, mode=mode)
        assert names[0] == "JobQueue" and "JobQueue.claim" in names
    finally:
        sr.close()


def test_a_method_still_ranks_above_its_class_when_the_query_names_the_method(tmp_path):
    """Naming the method ("claim") keeps narrowest-first: the method above its class."""
    sr = SearchRepo(tmp_path, QUEUE)
    try:
        names = sr.names("claim", mode="lexical")
        assert names[0] == "JobQueue.claim" and names.index("JobQueue.claim") < names.index("JobQueue")
    finally:
        sr.close()


def test_a_named_class_comes_first_even_below_dozens_of_its_own_methods(tmp_path):
    """A large class whose 40 methods (short documents, its name in each) all rank above it still comes
    first for a query naming it, at any limit: named spans are taken from every candidate, not only from
    the top few."""
    methods = "".join(f"    def step_{i}(self):\n        return self.store.job_queue_step({i})\n\n" for i in range(40))
    sr = SearchRepo(tmp_path, {"jobs/queue.py": f"class JobQueue:\n    '''The queue.'''\n\n{methods}"})
    try:
        for limit in (3, 10):
            names = sr.names("JobQueue", mode="lexical", limit=limit)
            assert names[0] == "JobQueue" and len(names) == limit, names
    finally:
        sr.close()
