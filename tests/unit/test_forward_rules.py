"""The forward proxy's pure parts: request targets, host patterns, loopback and own-address
checks, path-prefix routes, the intercept/pass-through/refuse policy, and their settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli.env import proxy_url, variables
from proxy.config import Mode, Settings, load_settings
from proxy.core.hosts import (
    Target,
    check_pattern,
    host_matches,
    ip_literal,
    is_loopback,
    is_own_address,
    normalize_host,
    origin_form,
    parse_absolute,
    parse_authority,
)
from proxy.errors import ConfigError, LoopDetected, Refused
from proxy.forward_proxy.policy import Action, check_listen, check_loops, forward_action, next_hops
from proxy.serve.routing import routed_url


@pytest.mark.parametrize(
    ("text", "expected", "authority"),
    [
        ("api.openai.com:443", Target("https", "api.openai.com", 443), "api.openai.com"),
        ("API.OpenAI.com.:443", Target("https", "api.openai.com", 443), "api.openai.com"),
        ("localhost:8443", Target("https", "localhost", 8443), "localhost:8443"),
        ("api.openai.com", Target("https", "api.openai.com", 443), "api.openai.com"),
        ("[::1]:443", Target("https", "::1", 443), "[::1]"),
        ("[::1]:8443", Target("https", "::1", 8443), "[::1]:8443"),
        ("127.0.0.1:80", Target("https", "127.0.0.1", 80), "127.0.0.1:80"),
    ],
)
def test_connect_targets(text: str, expected: Target, authority: str) -> None:
    target = parse_authority(text)
    assert target == expected
    assert target.authority == authority
    assert target.origin == f"https://{authority}"


@pytest.mark.parametrize(
    "text", ["", ":443", "host:0", "host:99999", "host:x", "::1:443", "[::1", "a b:443", "a..b:1"]
)
def test_bad_connect_targets(text: str) -> None:
    with pytest.raises(ValueError):
        parse_authority(text)


@pytest.mark.parametrize(
    ("raw", "origin", "rest"),
    [
        ("http://Example.test/v1/x?a=1", "http://example.test", "/v1/x?a=1"),
        ("http://example.test:80/", "http://example.test", "/"),
        ("http://example.test:8080", "http://example.test:8080", "/"),
        ("http://example.test?q=1", "http://example.test", "/?q=1"),
        ("https://[::1]:8443/p%20q", "https://[::1]:8443", "/p%20q"),
    ],
)
def test_absolute_form(raw: str, origin: str, rest: str) -> None:
    target, path = parse_absolute(raw)
    assert (target.origin, path) == (origin, rest)
    assert origin_form(raw) == rest


@pytest.mark.parametrize(
    "raw", ["ftp://example.test/", "http:///x", "http://user:pw@example.test/", "example.test/x"]
)
def test_bad_absolute_form(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_absolute(raw)


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("api.openai.com", ["api.openai.com"], True),
        ("api.openai.com", ["openai.com"], False),
        ("api.openai.com", ["*.openai.com"], True),
        ("openai.com", ["*.openai.com"], False),
        ("evilopenai.com", ["*.openai.com"], False),
        ("127.0.0.1", ["127.0.0.1"], True),
        ("127.0.0.1", ["0x7f000001"], True),  # an IP in any spelling
        ("anything", [], False),
    ],
)
def test_host_patterns(host: str, patterns: list[str], expected: bool) -> None:
    assert host_matches(host, [check_pattern(p) for p in patterns]) is expected


@pytest.mark.parametrize(
    ("pattern", "normal", "host", "port", "expected"),
    [
        ("API.example.com:8443", "api.example.com:8443", "api.example.com", 8443, True),
        ("api.example.com:8443", "api.example.com:8443", "api.example.com", 443, False),
        ("*.corp:443", "*.corp:443", "git.corp", 443, True),
        ("*.corp:443", "*.corp:443", "git.corp", 8443, False),
        ("*.corp", "*.corp", "git.corp", 8443, True),  # no port: every port
        ("[::1]:8443", "[::1]:8443", "::1", 8443, True),
        ("::1", "::1", "::1", 8443, True),
    ],
)
def test_host_patterns_with_ports(
    pattern: str, normal: str, host: str, port: int, expected: bool
) -> None:
    assert check_pattern(pattern) == normal
    assert host_matches(host, [normal], port) is expected


@pytest.mark.parametrize(
    "pattern", ["", "*.", "http://x", "x:0", "x:99999", "x:", "[::1", "[::1]x", "a/b", "*"]
)
def test_bad_host_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        check_pattern(pattern)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("localhost", True), ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("10.0.0.1", False), ("example.test", False)],
)  # fmt: skip
def test_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("host", "port", "local", "listen", "expected"),
    [
        ("127.0.0.1", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("localhost", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("127.0.0.1", 9090, ("127.0.0.1", 8080), "127.0.0.1", False),
        ("api.openai.com", 8080, ("127.0.0.1", 8080), "127.0.0.1", False),
        ("::1", 8080, ("::1", 8080, 0, 0), "::1", True),
        ("10.1.2.3", 8080, ("10.1.2.3", 8080), "0.0.0.0", True),
        ("localhost", 8080, ("10.1.2.3", 8080), "0.0.0.0", True),
        ("localhost", 8080, ("10.1.2.3", 8080), "10.1.2.3", True),  # loopback is the machine
        ("10.9.9.9", 8080, ("10.1.2.3", 8080), "0.0.0.0", False),
        ("127.0.0.1", 8080, None, "127.0.0.1", False),
        # every spelling of a local address (inet_aton forms, IPv4-mapped, unspecified)
        ("0.0.0.0", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("::ffff:127.0.0.1", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("[::ffff:127.0.0.1]", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("0x7f000001", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("2130706433", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("127.1", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("0177.0.0.1", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("0", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("::", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("[::]", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("localhost.", 8080, ("127.0.0.1", 8080), "127.0.0.1", True),
        ("::ffff:10.1.2.3", 8080, ("10.1.2.3", 8080), "0.0.0.0", True),
        ("0x7f000001", 9090, ("127.0.0.1", 8080), "127.0.0.1", False),  # another port
        ("10.0.0.1", 8080, ("127.0.0.1", 8080), "127.0.0.1", False),
    ],
)
def test_own_address(
    host: str, port: int, local: tuple[str, int] | None, listen: str, expected: bool
) -> None:
    assert is_own_address(host, port, local, listen) is expected


ROUTED = Settings(
    upstream="https://default.test",
    routes=(("/openai/v2", "https://v2.test"), ("/openai", "https://api.openai.com"),
            ("/ollama", "http://localhost:11434/base")),
)  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("/openai/v1/responses?stream=1", "https://api.openai.com/v1/responses?stream=1"),
        ("/openai", "https://api.openai.com/"),
        ("/openai?x=1", "https://api.openai.com/?x=1"),
        ("/openai/v2/x", "https://v2.test/x"),  # the longest prefix wins
        ("/openaiX/v1", "https://default.test/openaiX/v1"),
        ("/ollama/api/chat", "http://localhost:11434/base/api/chat"),
        ("/v1/responses", "https://default.test/v1/responses"),
    ],
)
def test_routes(raw: str, url: str) -> None:
    assert routed_url(raw, ROUTED) == url


def test_routes_from_a_toml_table_and_a_variable(tmp_path: Path) -> None:
    path = tmp_path / "rrproxy.toml"
    path.write_text(
        '[routes]\n"/openai" = "https://api.openai.com/"\n"/anthropic" = "https://api.anthropic.com"\n'
    )
    expected = (("/anthropic", "https://api.anthropic.com"), ("/openai", "https://api.openai.com"))
    assert load_settings(path, environ={}).routes == expected
    env = {"RRPROXY_ROUTES": "/openai=https://api.openai.com,/anthropic=https://api.anthropic.com"}
    assert load_settings(environ=env).routes == expected


@pytest.mark.parametrize(
    "routes", ["/openai", "openai=https://x.test", "/=https://x.test", "/_rrproxy/x=https://x.test",
               "/a=ftp://x.test"],
)  # fmt: skip
def test_bad_routes(routes: str) -> None:
    with pytest.raises(ConfigError, match="RRPROXY_ROUTES"):
        load_settings(environ={"RRPROXY_ROUTES": routes})


API = Target("https", "api.openai.com", 443)
TELEMETRY = Target("https", "telemetry.example.test", 443)


@pytest.mark.parametrize(
    ("settings", "target", "expected"),
    [
        (Settings(), API, Action.INTERCEPT),
        (Settings(passthrough_hosts=("*.example.test",)), TELEMETRY, Action.PASSTHROUGH),
        (Settings(passthrough_hosts=("*.example.test",)), API, Action.INTERCEPT),
        (Settings(allow_hosts=("api.openai.com",)), API, Action.INTERCEPT),
        (Settings(allow_hosts=("api.openai.com",)), TELEMETRY, "not in allow_hosts"),
        (Settings(allow_hosts=("x.test",), passthrough_hosts=("*.example.test",)), TELEMETRY,
         Action.PASSTHROUGH),
        (Settings(mode=Mode.REPLAY, passthrough_hosts=("*.example.test",)), TELEMETRY,
         "replay mode never contacts the network"),
        (Settings(mode=Mode.REPLAY), API, Action.INTERCEPT),
        (Settings(host="0.0.0.0", allow_remote=True), API, "none are set"),
        (Settings(host="0.0.0.0", allow_remote=True, allow_hosts=("api.openai.com",)), API,
         Action.INTERCEPT),
    ],
)  # fmt: skip
def test_forward_policy(settings: Settings, target: Target, expected: Action | str) -> None:
    if isinstance(expected, Action):
        assert forward_action(target, settings) is expected
    else:
        with pytest.raises(Refused, match=expected):
            forward_action(target, settings)


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("2130706433", "127.0.0.1"),
     ("0177.0.0.1", "127.0.0.1"), ("10.1.0x10", "10.1.0.16"), ("0", "0.0.0.0"),
     ("::ffff:127.0.0.1", "::ffff:7f00:1"), ("1.2.3.4", "1.2.3.4")],
)  # fmt: skip
def test_inet_aton_spellings_are_addresses(text: str, address: str) -> None:
    assert str(ip_literal(text)) == address
    assert normalize_host(text) == address


@pytest.mark.parametrize("text", ["256.1", "1.2.3.4.5", "0x", "1e5", "0x100000000", "1..2", "08"])
def test_not_inet_aton_spellings(text: str) -> None:
    assert ip_literal(text) is None


@pytest.mark.parametrize(
    ("upstream", "port", "routes"),
    [("http://0.0.0.0:8080", 8080, ()), ("http://127.1:8080", 8080, ()),
     ("http://[::ffff:127.0.0.1]:8080", 8080, ()), ("http://localhost:8080", 8080, ()),
     ("https://api.openai.com", 8080, (("/self", "http://0x7f000001:8080"),))],
)  # fmt: skip
def test_an_upstream_that_is_the_proxy_itself_is_refused_at_start(
    upstream: str, port: int, routes: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(ConfigError, match="rrproxy's own address"):
        check_loops(Settings(upstream=upstream, port=port, routes=routes))


def test_upstreams_elsewhere_are_fine_at_start() -> None:
    check_loops(Settings(upstream="http://127.0.0.1:9090", port=8080))
    check_loops(Settings(upstream="http://0.0.0.0:8080", port=0))  # the port is chosen at start


def test_the_hop_header_grows_and_stops_a_loop() -> None:
    a, b = Settings(), Settings()
    assert a.hop_id != b.hop_id and a == b  # the id does not make settings differ
    first = next_hops("", a)
    assert first == a.hop_id
    second = next_hops(first, b)
    assert second == f"{a.hop_id}, {b.hop_id}"
    with pytest.raises(LoopDetected, match="come back"):
        next_hops(second, a)
    with pytest.raises(LoopDetected, match="8 rrproxies"):
        next_hops(", ".join(f"id{i}" for i in range(8)), a)


def test_listening_beyond_loopback() -> None:
    assert check_listen(Settings()) is None
    assert check_listen(Settings(host="::1")) is None
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_listen(Settings(host="0.0.0.0"))
    warning = check_listen(Settings(host="0.0.0.0", allow_remote=True))
    assert warning is not None and "allow_hosts" in warning


def test_environment_lines() -> None:
    assert proxy_url(Settings(port=9000)) == "http://127.0.0.1:9000"
    assert proxy_url(Settings(host="0.0.0.0")) == "http://127.0.0.1:8080"
    assert proxy_url(Settings(host="::1")) == "http://[::1]:8080"
    pairs = dict(variables("http://p:1", Path("/b.pem"), Path("/ca.pem")))
    assert pairs["HTTPS_PROXY"] == pairs["http_proxy"] == "http://p:1"
    assert pairs["SSL_CERT_FILE"] == pairs["REQUESTS_CA_BUNDLE"] == "/b.pem"
    assert pairs["NODE_EXTRA_CA_CERTS"] == "/ca.pem"  # adds to Node's store: ours alone
    assert set(pairs["NO_PROXY"].split(",")) == {"localhost", "127.0.0.1", "::1"}
