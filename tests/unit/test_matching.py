"""Match keys, differences and the closest recorded request (table-driven)."""

from __future__ import annotations

import json

import pytest

from proxy.core.matching import (
    MAX_DIFFERENCES,
    Candidate,
    MatchRules,
    canonical,
    differences,
    input_digest,
    keyed,
    match_key,
    nearest,
    shortlist,
    similarity,
    sketch,
)
from proxy.core.records import Request

URL = "https://api.openai.com/v1/responses"
CHAT = "https://api.openai.com/v1/chat/completions"
BODY = {"model": "gpt-4o", "input": [{"role": "user", "content": "hi"}], "stream": True}
NO_RULES = MatchRules()


def req(
    method: str = "POST",
    url: str = URL,
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),),
    body: bytes | object = BODY,
) -> Request:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Request(method=method, url=url, headers=headers, body=raw)


# -- the same key ------------------------------------------------------------------------

SAME = [
    ("identical", req(), req(), NO_RULES),
    ("method case", req(method="post"), req(), NO_RULES),
    (
        "JSON key order",
        req(body={"stream": True, "input": BODY["input"], "model": "gpt-4o"}),
        req(),
        NO_RULES,
    ),
    (
        "JSON whitespace",
        req(body=json.dumps(BODY, indent=2).encode()),
        req(body=json.dumps(BODY, separators=(",", ":")).encode()),
        NO_RULES,
    ),
    (
        "JSON escapes",
        req(body=b'{"content": "caf\\u00e9"}'),
        req(body='{"content": "café"}'.encode()),
        NO_RULES,
    ),
    (
        "JSON whatever the content type",
        req(headers=(("Content-Type", "text/plain"),), body=b'{"a": 1, "b": 2}'),
        req(headers=(), body=b'{"b":2,"a":1}'),
        NO_RULES,
    ),
    ("query order", req(url=URL + "?a=1&b=2&a=3"), req(url=URL + "?b=2&a=1&a=3"), NO_RULES),
    ("query encoding", req(url=URL + "?q=a%20b"), req(url=URL + "?q=a+b"), NO_RULES),
    ("host case", req(url="https://API.OpenAI.com/v1/responses"), req(), NO_RULES),
    ("scheme case", req(url="HTTPS://api.openai.com/v1/responses"), req(), NO_RULES),
    ("default https port", req(url="https://api.openai.com:443/v1/responses"), req(), NO_RULES),
    (
        "default http port",
        req(url="http://localhost:80/x"),
        req(url="http://localhost/x"),
        NO_RULES,
    ),
    ("fragment", req(url=URL + "#top"), req(), NO_RULES),
    ("empty path", req(url="http://localhost"), req(url="http://localhost/"), NO_RULES),
    ("headers not matched by default", req(headers=(("OpenAI-Beta", "x"),)), req(), NO_RULES),
    (
        "ignored body field",
        req(body={**BODY, "metadata": {"user_id": "u1", "tag": "t"}}),
        req(body={**BODY, "metadata": {"user_id": "u2", "tag": "t"}}),
        MatchRules(ignore_body_fields=("metadata.user_id",)),
    ),
    (
        "ignored field absent on one side",
        req(body={**BODY, "user": "u1"}),
        req(),
        MatchRules(ignore_body_fields=("user",)),
    ),
    (
        "ignored field inside a list",
        req(body={"messages": [{"id": "a", "text": "hi"}, {"id": "b"}]}),
        req(body={"messages": [{"id": "z", "text": "hi"}, {"id": "b"}]}),
        MatchRules(ignore_body_fields=("messages.0.id",)),
    ),
    (
        "ignored path through a missing field",
        req(),
        req(),
        MatchRules(ignore_body_fields=("no.such.path", "input.9.id", "model.x")),
    ),
    (
        "ignored query param",
        req(url=URL + "?page=1&ts=100"),
        req(url=URL + "?ts=200&page=1"),
        MatchRules(ignore_query_params=("ts",)),
    ),
    (
        "ignored query param absent on one side",
        req(url=URL + "?ts=100"),
        req(url=URL),
        MatchRules(ignore_query_params=("ts",)),
    ),
    (
        "matched header, name case",
        req(headers=(("OpenAI-Beta", "assistants=v2"),)),
        req(headers=(("openai-beta", "assistants=v2"),)),
        MatchRules(match_headers=("OPENAI-BETA",)),
    ),
    (
        "matched header among others",
        req(headers=(("X-Other", "1"), ("openai-beta", "v2"))),
        req(headers=(("openai-beta", "v2"), ("X-Other", "2"))),
        MatchRules(match_headers=("openai-beta",)),
    ),
    ("empty bodies", req(method="GET", body=b""), req(method="GET", body=b""), NO_RULES),
    ("same raw bytes", req(body=b"\x00\xffdata"), req(body=b"\x00\xffdata"), NO_RULES),
]


@pytest.mark.parametrize(
    ("wanted", "recorded", "rules"), [s[1:] for s in SAME], ids=[s[0] for s in SAME]
)
def test_same_key(wanted: Request, recorded: Request, rules: MatchRules) -> None:
    assert match_key(wanted, rules) == match_key(recorded, rules)
    assert differences(wanted, recorded, rules) == []
    assert differences(recorded, wanted, rules) == []


# -- a different key, and the difference named with both values ----------------------------

DIFFERENT = [
    ("method", req(), req(method="GET"), NO_RULES, "method: POST != GET"),
    (
        "path",
        req(),
        req(url="https://api.openai.com/v1/chat/completions"),
        NO_RULES,
        "path: /v1/responses != /v1/chat/completions",
    ),
    (
        "host",
        req(),
        req(url="https://api.anthropic.com/v1/responses"),
        NO_RULES,
        "upstream: https://api.openai.com != https://api.anthropic.com",
    ),
    (
        "scheme",
        req(url="http://localhost:11434/api/chat"),
        req(url="https://localhost:11434/api/chat"),
        NO_RULES,
        "upstream: http://localhost:11434 != https://localhost:11434",
    ),
    (
        "port",
        req(url="http://localhost:8080/x"),
        req(url="http://localhost/x"),
        NO_RULES,
        "upstream: http://localhost:8080 != http://localhost",
    ),
    (
        "query value",
        req(url=URL + "?page=2"),
        req(url=URL + "?page=1"),
        NO_RULES,
        'query param "page": "2" != "1"',
    ),
    (
        "query param absent",
        req(url=URL + "?page=2"),
        req(),
        NO_RULES,
        'query param "page": "2" != (absent)',
    ),
    (
        "repeated query values",
        req(url=URL + "?a=1&a=1"),
        req(url=URL + "?a=1"),
        NO_RULES,
        'query param "a": ["1", "1"] != "1"',
    ),
    (
        "matched header value",
        req(headers=(("OpenAI-Beta", "x"),)),
        req(headers=(("openai-beta", "y"),)),
        MatchRules(match_headers=("openai-beta",)),
        'header "openai-beta": "x" != "y"',
    ),
    (
        "matched header absent",
        req(headers=(("openai-beta", "x"),)),
        req(headers=()),
        MatchRules(match_headers=("openai-beta",)),
        'header "openai-beta": "x" != (absent)',
    ),
    (
        "body field",
        req(),
        req(body={**BODY, "model": "gpt-4o-mini"}),
        NO_RULES,
        'body field "model": "gpt-4o" != "gpt-4o-mini"',
    ),
    (
        "body field in a list",
        req(),
        req(body={**BODY, "input": [{"role": "user", "content": "hello"}]}),
        NO_RULES,
        'body field "input.0.content": "hi" != "hello"',
    ),
    (
        "body list longer",
        req(body={"input": [1, 2]}),
        req(body={"input": [1]}),
        NO_RULES,
        'body field "input.1": 2 != (absent)',
    ),
    (
        "body field absent",
        req(body={**BODY, "temperature": 0}),
        req(),
        NO_RULES,
        'body field "temperature": 0 != (absent)',
    ),
    (
        "body bool is not a number",
        req(body={"n": 1}),
        req(body={"n": True}),
        NO_RULES,
        'body field "n": 1 != true',
    ),
    (
        "body int is not a float",
        req(body={"t": 1}),
        req(body={"t": 1.0}),
        NO_RULES,
        'body field "t": 1 != 1.0',
    ),
    (
        "body type",
        req(body={"input": "hi"}),
        req(body={"input": ["hi"]}),
        NO_RULES,
        'body field "input": "hi" != ["hi"]',
    ),
    ("body root", req(body=[1]), req(body={"a": 1}), NO_RULES, 'body: [1] != {"a":1}'),
    (
        "field ignored elsewhere still matters",
        req(body={"metadata": {"user_id": "a", "tag": "x"}}),
        req(body={"metadata": {"user_id": "b", "tag": "y"}}),
        MatchRules(ignore_body_fields=("metadata.user_id",)),
        'body field "metadata.tag": "x" != "y"',
    ),
    (
        "non-JSON bodies",
        req(body=b"a=1&b=2&c=3"),
        req(body=b"a=1&b=9&c=3&d=4"),
        NO_RULES,
        "body: not JSON, 11 bytes != 15 bytes (first difference at byte 6):"
        " b'2&c=3' != b'9&c=3&d=4'",
    ),
    (
        "non-JSON prefix",
        req(body=b"abc"),
        req(body=b"abcdef"),
        NO_RULES,
        "body: not JSON, 3 bytes != 6 bytes (first difference at byte 3): b'' != b'def'",
    ),
    (
        "empty body against JSON",
        req(body=b""),
        req(body={"a": 1}),
        NO_RULES,
        'body: (empty) != JSON {"a":1}',
    ),
    (
        "JSON against not JSON",
        req(body={"a": 1}),
        req(body=b"a=1"),
        NO_RULES,
        "body: JSON {\"a\":1} != not JSON, 3 bytes b'a=1'",
    ),
    (
        "NaN is not JSON",
        req(body=b'{"a": NaN}'),
        req(body=b'{"a":NaN}'),
        NO_RULES,
        "body: not JSON, 10 bytes != 9 bytes (first difference at byte 5): b' NaN}' != b'NaN}'",
    ),
]


@pytest.mark.parametrize(
    ("wanted", "recorded", "rules", "expected"),
    [d[1:] for d in DIFFERENT],
    ids=[d[0] for d in DIFFERENT],
)
def test_different_key(
    wanted: Request, recorded: Request, rules: MatchRules, expected: str
) -> None:
    assert match_key(wanted, rules) != match_key(recorded, rules)
    assert differences(wanted, recorded, rules) == [expected]
    # The index looks a key up by these: requests with different keys must differ in them.
    assert input_digest(wanted, rules) != input_digest(recorded, rules)


# The key of one fixed request, computed once (rrproxy 0.1.0) and written down. It pins the
# key's stability across versions, processes and machines: the same request gets the same
# key everywhere (a sha256 of a canonical form; no per-process salt as Python's hash() has,
# no dependence on key or parameter order). A change to how keys are made fails here, so it
# is made on purpose: update this value in the same commit and say so in the changelog.
STABLE_KEY = "2c967e4c83f8649bf270308bebb3fc2aa382bbaa04a4a3d1a31b93dd4e22f6d3"


def test_key_is_a_stable_sha256_hex() -> None:
    request = Request(
        "POST",
        "https://api.openai.com/v1/responses?b=2&a=1",
        (("Content-Type", "application/json"), ("Authorization", "Bearer sk-x")),
        b'{"stream": true, "model": "gpt-4o", "input": "hi"}',
    )
    assert match_key(request, MatchRules()) == STABLE_KEY
    # the same request with the query, the JSON keys and the whitespace in another order,
    # and no credentials: the same key
    same = Request(
        "POST",
        "https://api.openai.com/v1/responses?a=1&b=2",
        (("Content-Type", "application/json"),),
        b'{"input":"hi","model":"gpt-4o","stream":true}',
    )
    assert match_key(same, MatchRules()) == STABLE_KEY


def test_match_headers_change_the_key() -> None:
    plain = req(headers=(("openai-beta", "x"),))
    assert match_key(plain, NO_RULES) != match_key(
        plain, MatchRules(match_headers=("openai-beta",))
    )


def test_query_names_are_case_sensitive() -> None:
    wanted, recorded = req(url=URL + "?Page=1"), req(url=URL + "?page=1")
    assert differences(wanted, recorded, NO_RULES) == [
        'query param "Page": "1" != (absent)',
        'query param "page": (absent) != "1"',
    ]


def test_repeated_header_values_kept_in_order() -> None:
    rules = MatchRules(match_headers=("x-tag",))
    a = req(headers=(("X-Tag", "1"), ("X-Tag", "2")))
    b = req(headers=(("x-tag", "2"), ("x-tag", "1")))
    assert match_key(a, rules) != match_key(b, rules)
    assert differences(a, b, rules) == ['header "x-tag": ["1", "2"] != ["2", "1"]']


def test_ignored_list_element() -> None:
    rules = MatchRules(ignore_body_fields=("messages.0",))
    a = req(body={"messages": ["system prompt v1", "hi"]})
    b = req(body={"messages": ["system prompt v2", "hi"]})
    assert match_key(a, rules) == match_key(b, rules)


def test_several_differences_in_order() -> None:
    wanted = req(url=URL + "?page=2", body={**BODY, "model": "gpt-4o-mini"})
    assert differences(wanted, req(method="PUT"), NO_RULES) == [
        "method: POST != PUT",
        'query param "page": "2" != (absent)',
        'body field "model": "gpt-4o-mini" != "gpt-4o"',
    ]


def test_many_differences_are_capped() -> None:
    wanted = req(body={f"k{i}": i for i in range(8)})
    recorded = req(body={f"k{i}": -i - 1 for i in range(8)})
    found = differences(wanted, recorded, NO_RULES)
    assert len(found) == MAX_DIFFERENCES + 1
    assert found[0] == 'body field "k0": 0 != -1'
    assert found[-1] == f"and {8 - MAX_DIFFERENCES} more"


def test_long_values_are_truncated() -> None:
    wanted = req(body={"input": "x" * 500})
    recorded = req(body={"input": "y" * 500})
    (sentence,) = differences(wanted, recorded, NO_RULES)
    assert sentence.startswith('body field "input": "xxx')
    assert len(sentence) < 200
    assert "…" in sentence


def test_rules_apply_to_both_sides() -> None:
    rules = MatchRules(ignore_body_fields=("user",), ignore_query_params=("ts",))
    a = req(url=URL + "?ts=1", body={"user": "a"})
    b = req(url=URL + "?ts=2", body={"user": "b"})
    assert differences(a, b, rules) == differences(b, a, rules) == []


# -- closest -----------------------------------------------------------------------------


def closest(
    wanted: Request, candidates: list[Request], rules: MatchRules
) -> tuple[int, list[str]] | None:
    """`nearest` over plain requests: the index of the closest, and how they differ."""
    return nearest(canonical(wanted, rules), (canonical(c, rules) for c in candidates))


CANDIDATES = [
    req(method="GET", url="https://api.openai.com/v1/models", body=b""),
    req(body={**BODY, "model": "gpt-4o-mini", "stream": False}),
    req(body={**BODY, "model": "gpt-4o-mini"}),
    req(url="https://api.openai.com/v1/chat/completions"),  # same body, other path
]

CLOSEST = [
    ("fewest differing fields", req(), CANDIDATES, 2),
    ("exact match", req(body={**BODY, "model": "gpt-4o-mini"}), CANDIDATES, 2),
    (
        "same route beats fewer differences",
        req(url=CHAT, body={"x": 1}),
        # 5 differences against 3 for the GET /v1/models candidate
        [*CANDIDATES[:3], req(url=CHAT, body={"y": 1, "z": 2, "w": 3, "v": 4})],
        3,
    ),
    ("the only candidate", req(), CANDIDATES[:1], 0),
    ("earliest of equals", req(), [req(body={"a": 1}), req(body={"b": 1})], 0),
    (
        "nearest body size among raw bodies",
        req(body=b"abcdef"),
        [req(body=b"x"), req(body=b"abcdeg"), req(body=b"abcdefghijkl")],
        1,
    ),
]


@pytest.mark.parametrize(
    ("wanted", "candidates", "expected"),
    [c[1:] for c in CLOSEST],
    ids=[c[0] for c in CLOSEST],
)
def test_closest(wanted: Request, candidates: list[Request], expected: int) -> None:
    found = closest(wanted, candidates, NO_RULES)
    assert found is not None
    index, why = found
    assert index == expected
    assert why == differences(wanted, candidates[expected], NO_RULES)


def test_closest_names_the_difference() -> None:
    assert closest(req(), CANDIDATES, NO_RULES) == (
        2,
        ['body field "model": "gpt-4o" != "gpt-4o-mini"'],
    )


def test_closest_exact_has_no_differences() -> None:
    assert closest(req(), [req(method="GET"), req()], NO_RULES) == (1, [])


def test_closest_without_candidates() -> None:
    assert closest(req(), [], NO_RULES) is None


# -- a miss against many recordings: shortlist, sketches, deadline ------------------------


def candidate(request: Request, rules: MatchRules = NO_RULES) -> Candidate:
    """What the index keeps of a recorded request: all but its body."""
    _, body_sketch = keyed(request, rules)
    return Candidate(request.method, request.url, request.headers, len(request.body), body_sketch)


def chat(n: int, changed: int | None = None) -> Request:
    """Many leaves, all unique to `n` but the roles; same size whatever `n` (0-9)."""
    messages = [{"role": "user", "content": f"{n} message {i}"} for i in range(40)]
    if changed is not None:
        messages[changed]["content"] = f"{n} message {changed}!"[:-1] + "?"
    return req(body={"model": "m", "messages": messages})


def test_similarity_of_sketches() -> None:
    one = sketch(canonical(chat(1), NO_RULES))
    assert similarity(one, one) == 1.0
    assert similarity(one, sketch(canonical(chat(1, changed=5), NO_RULES))) > 0.8
    # the model and the roles alike (41 leaves), the contents not (2 x 40)
    assert similarity(one, sketch(canonical(chat(2), NO_RULES))) < 0.6
    assert similarity((), ()) == 1.0 and similarity(one, ()) == 0.0


def test_the_shortlist_holds_the_closest_of_bodies_alike_in_size() -> None:
    recorded = [chat(n) for n in range(10)]
    picked = shortlist(chat(6, changed=5), [candidate(r) for r in recorded], NO_RULES, 3)
    assert len(picked) == 3 and picked == sorted(picked)
    assert 6 in picked


def test_the_shortlist_prefers_the_route_then_the_head() -> None:
    recorded = [
        req(url=CHAT),
        req(url=URL + "?a=1"),
        req(url=URL + "?a=2&b=3"),
        req(method="GET", url=URL),
    ]
    picked = shortlist(req(url=URL + "?a=2"), [candidate(r) for r in recorded], NO_RULES, 1)
    assert picked == [1]  # the same route, one query parameter different, not two


def test_nearest_past_its_deadline_names_the_best_compared_so_far() -> None:
    wanted = canonical(req(), NO_RULES)
    recorded = (req(method="GET"), req(body={**BODY, "model": "x"}), req())
    forms = [canonical(r, NO_RULES) for r in recorded]
    assert nearest(wanted, forms) == (2, [])
    ticks = iter(range(100))
    found = nearest(wanted, forms, deadline=1, clock=lambda: next(ticks))
    assert found is not None and found[0] == 1  # compared two: the first and the second
    assert nearest(wanted, [], deadline=0) is None
