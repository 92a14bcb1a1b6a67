"""Per-store Richpanel settings: checked with Richpanel, sealed at rest, never leaked.

Richpanel is the in-process sandbox (a starlette TestClient handed to the host with
``session.set_http``); one test runs it on a real socket. ``dump`` is every Redis key and
value, so "nothing saved" and "the key appears nowhere" are checked on what is really stored.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Iterator

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from opcore_hooks import CredentialsCheck
from opcore_hooks.crypto import DecryptionError, generate_master_key
from plugins.richpanel import plugin, session, stores
from plugins.richpanel.sandbox import SandboxConfig, SandboxState, create_sandbox, run_in_thread
from plugins.richpanel.stores import SettingsError, SettingsUpdate

KEY = "rp_live_Sup3rSecretKeyValue_a1b2"
NEW_KEY = "rp_live_An0therSecretValue_c3d4"
TEAM = "0b5e6a3c-7d1f-4c2a-9e8b-1f2d3c4b5a69"
OTHER_TEAM = "11111111-2222-4333-8444-555555555555"
STORE = "store_123"
PLUGINS = {"richpanel": plugin}


@pytest.fixture
def sandbox() -> Iterator[tuple[SandboxState, TestClient]]:
    app = create_sandbox(SandboxConfig(quota=None))
    app.state.sandbox.add_account(KEY, teams=[{"id": TEAM, "name": "Claims"}, {"name": "Support"}])
    app.state.sandbox.add_account(NEW_KEY, teams=[{"name": "Other account"}])
    with TestClient(app) as http:
        yield app.state.sandbox, http


@pytest.fixture
def build(make_host, sandbox, monkeypatch):
    """Hosts whose Richpanel is the sandbox; keyword overrides go to the host's settings."""
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", "http://testserver")

    def make(**overrides: Any):
        host = make_host(PLUGINS, **overrides)
        session.set_http(host, sandbox[1])
        return host
    return make


@pytest.fixture
def host(build):
    return build()


def dump(r, pacing: bool = True) -> str:
    """Every key and value in Redis, whatever its type, as one string.

    ``pacing=False`` leaves out the per-key request pacing: a refused change still made its
    request to Richpanel, and that request rightly counts against the key's quota.
    """
    out = []
    for key in sorted(r.scan_iter()):
        if not pacing and b":richpanel:pace:" in key:
            continue
        kind = r.type(key).decode()
        readers = {"string": r.get, "hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1), "set": r.smembers,
                   "zset": lambda k: r.zrange(k, 0, -1, withscores=True)}
        value = readers[kind](key) if kind in readers else kind
        out.append(f"{key!r}={value!r}")
    return "\n".join(out)


def save(host, store_id: str = STORE, **body: Any) -> stores.StoreConfig:
    return stores.update(host, store_id, stores.parse_update(body))


def refused(host, store_id: str = STORE, **body: Any) -> SettingsError:
    before = dump(host.redis, pacing=False)
    with pytest.raises(SettingsError) as caught:
        save(host, store_id, **body)
    assert dump(host.redis, pacing=False) == before, "a refused change must save nothing"
    assert KEY not in str(caught.value) and NEW_KEY not in str(caught.value)
    return caught.value


def test_a_valid_key_is_saved_sealed_and_shown_masked(host):
    saved = save(host, api_key=KEY, default_team_id=TEAM, default_channel="message")
    assert (saved.default_team_id, saved.default_channel, saved.enabled) == (TEAM, "message", True)
    assert saved.credentials == "valid" and saved.checked_at is not None
    loaded = stores.load(host, STORE)
    assert loaded.api_key.get_secret_value() == KEY
    assert KEY not in repr(loaded) and KEY not in str(loaded)
    assert stores.status(host, STORE)["api_key"] == "rp_…a1b2"
    stored = dump(host.redis)
    assert KEY not in stored and "Sup3rSecret" not in stored and STORE in stored


def test_a_key_richpanel_rejects_is_not_saved(host):
    error = refused(host, api_key="rp_live_NotAnAccountKey_0000")
    assert "Richpanel rejected this API key (401)" in error.message
    assert "Nothing was saved" in error.message
    assert stores.load(host, STORE) is None


@pytest.mark.parametrize("limit_status", [429, 492])
def test_a_rate_limited_check_says_when_to_try_again(host, sandbox, limit_status):
    sandbox[0].update_config(rate_limit_rate=1.0, limit_status=limit_status)
    error = refused(host, api_key=KEY)
    assert sandbox[0].requests[-1]["status"] == limit_status
    assert "Richpanel is rate limiting this API key, try again in 1 second." in error.message
    assert error.retry_after == 1


def test_the_check_obeys_the_keys_pacing(host, sandbox):
    sandbox[0].update_config(quota=1, window=30)
    save(host, "other", api_key=KEY)  # Richpanel says: no request left in this window
    sent = len(sandbox[0].requests)
    error = refused(host, api_key=KEY)
    assert len(sandbox[0].requests) == sent, "no request may go out once the window is spent"
    assert 25 <= error.retry_after <= 32
    assert f"try again in {error.retry_after} seconds" in error.message


def test_an_outage_is_reported_and_nothing_saved(host, sandbox):
    sandbox[0].update_config(error_rate=1.0)
    assert "Richpanel could not check this API key" in refused(host, api_key=KEY).message


@pytest.mark.parametrize("bad", ["live_Sup3rSecretKeyValue_a1b2", "RP_upper_case_key", "rp_has space"])
def test_a_malformed_key_is_refused_without_echoing_it(host, bad):
    with pytest.raises(SettingsError) as caught:
        stores.parse_update({"api_key": bad})
    assert "api_key" in caught.value.message
    text = str(caught.value) + repr(caught.value.details) + "".join(traceback.format_exception(caught.value))
    assert bad not in text


def test_a_team_name_is_refused_with_the_accounts_teams(host):
    error = refused(host, api_key=KEY, default_team_id="Claims")
    assert "not its name" in error.message
    assert f"Claims ({TEAM})" in error.message and "Support (" in error.message
    teams = error.details[0]["teams"]
    assert {t["name"] for t in teams} == {"Claims", "Support"} and {"id": TEAM, "name": "Claims"} in teams


def test_a_team_of_another_account_is_refused(host):
    error = refused(host, api_key=KEY, default_team_id=OTHER_TEAM)
    assert f"{OTHER_TEAM} is not a team of this Richpanel account" in error.message


def test_a_wrong_channel_lists_the_eight(host):
    error = refused(host, api_key=KEY, default_channel="sms")
    for channel in stores.CHANNELS:
        assert channel in error.message
    assert len(stores.CHANNELS) == 8


def test_unknown_fields_are_named(host):
    error = refused(host, api_key=KEY, team="Claims", chanel="email")
    assert [d["field"] for d in error.details] == ["team", "chanel"]
    assert "team: unknown field" in error.message and "chanel: unknown field" in error.message


def test_the_first_change_needs_a_key(host):
    assert "api_key is required" in refused(host, default_channel="email").message


def test_a_change_without_key_keeps_the_key_and_merges(host, sandbox):
    save(host, api_key=KEY, default_team_id=TEAM, default_channel="message")
    saved = save(host, default_channel="instagram")
    assert saved.api_key.get_secret_value() == KEY
    assert (saved.default_team_id, saved.default_channel, saved.enabled) == (TEAM, "instagram", True)
    assert save(host, enabled=False).default_channel == "instagram"
    assert save(host, default_team_id=None).default_team_id is None


def test_a_new_team_is_checked_with_the_stored_key(host, sandbox):
    save(host, api_key=KEY)
    checks = len(sandbox[0].requests)
    error = refused(host, default_team_id=OTHER_TEAM)
    assert "not a team of this Richpanel account" in error.message
    assert len(sandbox[0].requests) == checks + 1
    assert sandbox[0].requests[-1]["path"] == "/v1/teams" and sandbox[0].requests[-1]["account"] == "rp_…a1b2"
    assert save(host, default_team_id=TEAM.upper()).default_team_id == TEAM


def test_a_stored_key_revoked_later_blocks_enabling_not_disabling(host, sandbox):
    save(host, api_key=KEY)
    sandbox[0].reset()  # the account and its key are gone
    assert save(host, enabled=False).enabled is False  # no need to ask Richpanel to turn off
    error = refused(host, enabled=True)
    assert "Richpanel rejected the stored API key (401): paste a new api_key" in error.message


def test_a_store_saved_before_the_mirror_existed_has_it_off_until_turned_on(host, sandbox):
    save(host, api_key=KEY, default_team_id=TEAM)
    host.redis.hdel(stores.settings_key(host, STORE), "mirror_messages")  # as an older version stored it
    assert stores.load(host, STORE).mirror_messages is False
    saved = save(host, mirror_messages=True)
    assert (saved.mirror_messages, saved.default_team_id) == (True, TEAM)
    assert stores.load(host, STORE).mirror_messages is True


def test_disconnect_forgets_the_key_and_keeps_the_record(host):
    save(host, api_key=KEY, default_team_id=TEAM)
    assert stores.disconnect(host, STORE) is True
    shown = stores.status(host, STORE)
    assert (shown["api_key"], shown["enabled"], shown["credentials"]) == (None, False, "unchecked")
    assert "v1:" not in dump(host.redis)  # no ciphertext left either
    assert stores.disconnect(host, "never") is False
    assert "api_key is required" in refused(host, enabled=True).message


def test_swapped_and_tampered_ciphertexts_fail_closed(host):
    save(host, "a", api_key=KEY)
    save(host, "b", api_key=NEW_KEY)
    key_a, key_b = host.key("richpanel", "store", "a"), host.key("richpanel", "store", "b")
    token_a = host.redis.hget(key_a, "api_key").decode()
    host.redis.hset(key_b, "api_key", token_a)  # store A's key copied into store B
    with pytest.raises(DecryptionError, match="copied from another store"):
        stores.load(host, "b")
    host.redis.hset(key_b, "api_key", host.vault.encrypt("b", "signing_secret", NEW_KEY))  # another field
    with pytest.raises(DecryptionError, match="integrity check"):
        stores.load(host, "b")
    flipped = token_a[:-3] + ("A" if token_a[-3] != "A" else "B") + token_a[-2:]
    host.redis.hset(key_a, "api_key", flipped)
    with pytest.raises(DecryptionError, match="integrity check"):
        stores.load(host, "a")
    assert "integrity check" in stores.status(host, "a")["last_error"]
    check = stores.validate_credentials(host, "a")
    assert check.state == "invalid" and "enter the secret again" in check.error
    assert "send api_key" in refused(host, "a", enabled=True).message
    assert save(host, "a", api_key=KEY).api_key.get_secret_value() == KEY  # a new key repairs it


def test_rotation_reseals_every_key_under_the_newest_master_key(build):
    old, new = generate_master_key(), generate_master_key()
    before = build(master_key=SecretStr(old))
    for n in range(3):
        save(before, f"s{n}", api_key=KEY)
    stores.disconnect(before, "s2")  # a record without key is skipped
    both = build(master_key=SecretStr(f"{new},{old}"))
    assert stores.rotate(both) == 2
    assert stores.rotate(both) == 0
    after = build(master_key=SecretStr(new))
    for store_id in ("s0", "s1"):
        assert stores.load(after, store_id).api_key.get_secret_value() == KEY
    with pytest.raises(DecryptionError):
        stores.load(build(master_key=SecretStr(old)), "s0")


def test_the_rotate_secrets_hook_counts_the_keys(build):
    host = build()
    save(host, api_key=KEY)
    newer = build(master_key=SecretStr(f"{generate_master_key()},{host.settings.master_key.get_secret_value()}"))
    assert sum(newer.pm.hook.rotate_secrets(host=newer)) == 1


def test_validate_credentials_records_health(host, sandbox):
    assert host.call_plugin("richpanel", "validate_credentials", host=host, store_id=STORE) is None
    save(host, api_key=KEY)
    check = host.call_plugin("richpanel", "validate_credentials", host=host, store_id=STORE)
    assert isinstance(check, CredentialsCheck) and check.state == "valid"
    sandbox[0].update_config(error_rate=1.0)
    check = stores.validate_credentials(host, STORE)
    assert check.state == "valid" and "could not check" in check.error  # an outage says nothing
    assert stores.load(host, STORE).last_error is None
    sandbox[0].update_config(error_rate=0.0)
    sandbox[0].reset()
    check = stores.validate_credentials(host, STORE)
    assert check.state == "invalid" and "401" in check.error
    shown = stores.status(host, STORE)
    assert shown["credentials"] == "invalid" and "401" in shown["last_error"] and shown["checked_at"]


def test_mark_invalid_and_valid(host):
    stores.mark_invalid(host, "never", "401")
    assert stores.load(host, "never") is None  # no half record for an unknown store
    save(host, api_key=KEY)
    stores.mark_invalid(host, STORE, "Richpanel answered 401", api_key=NEW_KEY)  # stale: key replaced
    assert stores.load(host, STORE).credentials == "valid"
    stores.mark_invalid(host, STORE, "Richpanel answered 401", api_key=KEY)
    loaded = stores.load(host, STORE)
    assert (loaded.credentials, loaded.last_error) == ("invalid", "Richpanel answered 401")
    stores.mark_valid(host, STORE)
    loaded = stores.load(host, STORE)
    assert (loaded.credentials, loaded.last_error) == ("valid", None)


def test_saving_a_valid_key_releases_parked_work(host):
    sent: list[str] = []

    def deliver(claim_id: str) -> None:
        sent.append(claim_id)

    host.actor(deliver, plugin="richpanel")
    save(host, api_key=KEY, enabled=False)
    host.delivery("richpanel").parking.park(STORE, "richpanel.deliver", ["claim-1"])
    save(host, default_channel="message")  # still disabled: stays parked
    assert host.delivery("richpanel").parked_count(STORE) == 1
    save(host, api_key=KEY, enabled=True)
    assert host.delivery("richpanel").parked_count(STORE) == 0
    queued = host.redis.hvals(f"{host.broker.namespace}:richpanel.msgs")
    assert len(queued) == 1 and b"claim-1" in queued[0]


def test_the_key_appears_in_no_log_line(host, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    save(host, api_key=KEY, default_team_id=TEAM)
    for body in ({"api_key": NEW_KEY}, {"api_key": "bad" + KEY}, {"default_team_id": "Claims"}):
        with pytest.raises(SettingsError):
            save(host, **body)
    stores.validate_credentials(host, STORE)
    stores.list_teams(host, STORE)
    stores.mark_invalid(host, STORE, "401", api_key=KEY)
    stores.rotate(host)
    stores.disconnect(host, STORE)
    assert caplog.records, "the flow should log something"
    text = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert KEY not in text and NEW_KEY not in text


def test_a_real_socket_and_one_shared_pool_per_host(make_host, monkeypatch):
    with run_in_thread(SandboxConfig(quota=None)) as server:
        server.state.add_account(KEY, teams=[{"id": TEAM, "name": "Claims"}])
        monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", server.url)
        monkeypatch.setenv("OPCORE_RICHPANEL_TIMEOUT_SECONDS", "3")
        host = make_host(PLUGINS)
        assert save(host, api_key=KEY, default_team_id=TEAM).credentials == "valid"
        assert [t.name for t in stores.list_teams(host, STORE)] == ["Claims"]
        one, two = session.client_for(host, KEY), session.client_for(host, NEW_KEY)
        assert one._http is two._http and one.base_url == server.url
        assert KEY not in repr(one)


def test_settings_update_rejects_non_boolean_enabled():
    with pytest.raises(SettingsError, match="enabled"):
        stores.parse_update({"enabled": "yes"})
    with pytest.raises(SettingsError, match="JSON object"):
        stores.parse_update(["api_key"])
    assert SettingsUpdate.model_validate({"api_key": f" {KEY}\n"}).api_key.get_secret_value() == KEY
