"""X-OP-Signature: exactly the scheme CONTRACT.md describes, and nothing a forger could bend."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from opcore_hooks.signing import SignatureError, sign, sign_all, verify

SECRET = "opw_secret_one"
OTHER = "opw_secret_two"
PATH = "/widgets/richpanel/store_123"
QUERY = "email=ana%40example.com"
NOW = 1_800_000_000


def reason(header, path=PATH, query=QUERY, secrets=(SECRET,), now=NOW) -> str | None:
    try:
        verify(header, path, query, list(secrets), now)
    except SignatureError as exc:
        return exc.reason
    return None


def test_the_mac_is_hmac_sha256_over_t_dot_path_query():
    expected = hmac.new(SECRET.encode(), f"{NOW}.{PATH}?{QUERY}".encode(), hashlib.sha256).hexdigest()
    assert sign(SECRET, f"{PATH}?{QUERY}", NOW) == f"t={NOW},v1={expected}"


def test_without_a_query_the_mac_covers_t_dot_path_only():
    expected = hmac.new(SECRET.encode(), f"{NOW}.{PATH}".encode(), hashlib.sha256).hexdigest()
    assert sign(SECRET, PATH, NOW) == f"t={NOW},v1={expected}"
    assert reason(sign(SECRET, PATH, NOW), query="") is None
    assert reason(sign(SECRET, PATH + "?", NOW), query="") == "mismatch"


def test_a_good_signature_passes():
    assert reason(sign(SECRET, f"{PATH}?{QUERY}", NOW)) is None


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing(header):
    assert reason(header) == "missing"


@pytest.mark.parametrize("header", [
    "garbage",
    "v1=" + "a" * 64,                       # no timestamp
    f"t={NOW}",                             # no signature
    f"t={NOW},v1=xyz",                      # not hex
    f"t={NOW},v1=" + "a" * 63,              # short
    "t=12.5,v1=" + "a" * 64,                # not whole seconds
    "t=-5,v1=" + "a" * 64,
    f"t={NOW},t={NOW},v1=" + "a" * 64,      # two timestamps
    "t=١٢٣,v1=" + "a" * 64,                 # non-ASCII digits
    f"t={NOW},v1=" + "a" * 64 + ",junk",
    f"t={NOW}," + ",".join(["v1=" + "a" * 64] * 20),  # absurdly long
])
def test_malformed(header):
    assert reason(header) == "malformed"


@pytest.mark.parametrize("skew", [31, 301, -301, 10_000])
def test_expired_in_both_directions(skew):
    header = sign(SECRET, f"{PATH}?{QUERY}", NOW + skew)
    assert reason(header) == "expired"


@pytest.mark.parametrize("skew", [30, -300, 0])
def test_the_window_edges_still_pass(skew):
    assert reason(sign(SECRET, f"{PATH}?{QUERY}", NOW + skew)) is None


def test_the_window_is_a_parameter():
    header = sign(SECRET, f"{PATH}?{QUERY}", NOW - 30)
    with pytest.raises(SignatureError):
        verify(header, PATH, QUERY, [SECRET], NOW, window=10)


def test_another_query_another_path_or_secret_is_a_mismatch():
    header = sign(SECRET, f"{PATH}?{QUERY}", NOW)
    assert reason(header, query="email=eve%40example.com") == "mismatch"
    assert reason(header, path="/widgets/richpanel/store_999") == "mismatch"
    assert reason(header, secrets=[OTHER]) == "mismatch"
    assert reason(header, secrets=[]) == "mismatch"


def test_the_query_is_compared_as_sent_not_re_encoded():
    header = sign(SECRET, f"{PATH}?email=ana@example.com", NOW)
    assert reason(header, query="email=ana@example.com") is None
    assert reason(header, query="email=ana%40example.com") == "mismatch"


def test_several_v1_entries_any_one_may_match():
    path_qs = f"{PATH}?{QUERY}"
    header = sign_all([OTHER, SECRET], path_qs, NOW)
    assert header.count("v1=") == 2
    assert reason(header) is None
    assert reason(header, secrets=[OTHER]) is None
    assert reason(header, secrets=["opw_unrelated"]) == "mismatch"


def test_several_secrets_on_the_server_any_one_may_match():
    header = sign(OTHER, f"{PATH}?{QUERY}", NOW)
    assert reason(header, secrets=[SECRET, OTHER]) is None


def test_uppercase_hex_and_spaces_are_tolerated_and_unknown_schemes_ignored():
    mac = sign(SECRET, f"{PATH}?{QUERY}", NOW).split("v1=")[1]
    assert reason(f"t={NOW}, v0=whatever, v1={mac.upper()}") is None


def test_constant_time_comparison_is_used(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    header = sign_all([SECRET, OTHER], f"{PATH}?{QUERY}", NOW)
    verify(header, PATH, QUERY, [SECRET, OTHER], NOW)
    assert len(calls) == 4  # every entry against every secret, no early exit


def test_raw_non_utf8_bytes_round_trip():
    path = b"/widgets/richpanel/st\xffore".decode("utf-8", "surrogateescape")
    assert reason(sign(SECRET, path, NOW), path=path, query="") is None
