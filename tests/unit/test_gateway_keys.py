"""API keys: IMEM_API_KEYS parsing, the hashed key file, lookups by digest."""

import hashlib
import json

import pytest

from imem_gateway.keys import ApiKey, KeyConfigError, KeyRing, add_to_file, digest, parse_env, parse_file


def test_env_keys_map_to_tenants_with_default_limits():
    keys = parse_env(" sk-a=acme , sk-b=globex,", 60, 1000)
    assert [(k.tenant, k.requests_per_minute, k.tokens_per_minute) for k in keys] == [("acme", 60, 1000),
                                                                                       ("globex", 60, 1000)]
    assert keys[0].digest == hashlib.sha256(b"sk-a").hexdigest()
    assert KeyRing(keys).find("sk-b").tenant == "globex"
    assert KeyRing(keys).find("sk-c") is None and KeyRing(keys).find("") is None


def test_a_key_may_contain_equals_signs():
    assert KeyRing(parse_env("abc==def=acme", 0, 0)).find("abc==def").tenant == "acme"


@pytest.mark.parametrize("text, problem", [("sk-a", "expected key=tenant"), ("=acme", "expected key=tenant"),
                                           ("sk-a=", "tenant must be a non-empty"), ("sk-a=" + "t" * 300, "longer")])
def test_bad_env_entries_are_named(text, problem):
    with pytest.raises(KeyConfigError, match=problem):
        parse_env(text, 0, 0)


def test_file_holds_digests_and_per_key_limits():
    text = json.dumps({"keys": [{"sha256": digest("sk-1").upper(), "tenant": "acme", "name": "prod",
                                 "requests_per_minute": 5},
                                {"sha256": digest("sk-2"), "tenant": "globex", "tokens_per_minute": 0}]})
    keys = KeyRing(parse_file(text, "keys.json", 60, 1000))
    assert keys.find("sk-1") == ApiKey(digest("sk-1"), "acme", "prod", 5, 1000)
    assert keys.find("sk-2").tokens_per_minute == 0 and keys.find("sk-2").requests_per_minute == 60


@pytest.mark.parametrize("document, problem", [
    ("not json", "not valid JSON"),
    ({"nope": []}, "expected"),
    ({"keys": [{"key": "sk-plain", "tenant": "a"}]}, "plain key"),
    ({"keys": [{"sha256": "abc", "tenant": "a"}]}, "64 hex digits"),
    ({"keys": [{"sha256": "0" * 64}]}, "tenant"),
    ({"keys": [{"sha256": "0" * 64, "tenant": "a", "requests_per_minute": -1}]}, "requests_per_minute"),
])
def test_bad_files_are_refused_with_the_reason(document, problem):
    with pytest.raises(KeyConfigError, match=problem):
        parse_file(document if isinstance(document, str) else json.dumps(document), "keys.json", 0, 0)


def test_a_key_configured_twice_is_refused():
    with pytest.raises(KeyConfigError, match="twice"):
        KeyRing(parse_env("sk-a=acme,sk-a=globex", 0, 0))


def test_new_keys_are_stored_hashed(tmp_path):
    path = tmp_path / "keys.json"
    first, second = add_to_file(path, "acme"), add_to_file(path, "globex")
    stored = path.read_text()
    assert first not in stored and second not in stored
    keys = KeyRing(parse_file(stored, str(path), 0, 0))
    assert keys.find(first).tenant == "acme" and keys.find(second).tenant == "globex"
