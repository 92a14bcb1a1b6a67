"""Pacing shared through Redis: slots under the quota, blocks seen by every worker."""

from __future__ import annotations

import time

import pytest

from opcore_hooks.delivery.pacing import Pacer

KEY = "rp_pacing_SecretKey_9999"
SECRET = b"pacing-fingerprint-key-0123456789"


def pacer(redis_client, quota=5, window=10.0) -> Pacer:
    return Pacer(redis_client, "optest:pace", secret=lambda: SECRET, quota=quota, window=window)


def test_slots_never_put_more_than_the_quota_in_any_window(redis_client):
    p = pacer(redis_client)
    now = time.time()
    slots = [p.reserve(KEY, now=now).at for _ in range(23)]
    assert slots == sorted(slots)
    for i, start in enumerate(slots):
        in_window = [s for s in slots if start <= s < start + p.window]
        assert len(in_window) <= p.quota, (i, in_window)
    assert slots[:5] == [pytest.approx(now, abs=1e-5)] * 5
    assert slots[5] >= now + p.window


def test_a_block_from_one_worker_holds_back_every_other(redis_client):
    one, other = pacer(redis_client), pacer(redis_client)  # two workers, one Redis
    now = time.time()
    until = one.block(KEY, 7.5, now=now)
    assert other.blocked_until(KEY) == until
    assert other.reserve(KEY, now=now).at >= now + 7.5 - 1e-5


def test_a_block_only_moves_later(redis_client):
    p = pacer(redis_client)
    now = time.time()
    p.block(KEY, 30, now=now)
    p.block(KEY, 1, now=now)
    assert p.blocked_until(KEY) >= now + 30


def test_a_lower_advertised_limit_becomes_the_quota(redis_client):
    p = pacer(redis_client, quota=50)
    now = time.time()
    p.observe(KEY, limit=2, remaining=1, now=now)
    slots = [p.reserve(KEY, now=now).at for _ in range(3)]
    assert slots[2] >= now + p.window


def test_a_higher_advertised_limit_counts_only_where_the_server_sets_the_quota(redis_client):
    # Zendesk's plan sets its budget (200 to 2,500 a minute): the configured quota is where a new
    # account starts, and the server's figure replaces it; Richpanel's quota is fixed and only lowered.
    now = time.time()
    fixed = pacer(redis_client, quota=2, window=60.0)
    fixed.observe(KEY, limit=5, remaining=5, now=now)
    assert fixed.quota_for(KEY) == 2
    assert sum(fixed.reserve(KEY, now=now).at < now + 60 for _ in range(5)) == 2
    follows = Pacer(redis_client, "optest:pace2", secret=lambda: SECRET, quota=2, window=60.0,
                    follow_server_limit=True)
    follows.observe(KEY, limit=5, remaining=5, now=now)
    assert follows.quota_for(KEY) == 5
    assert sum(follows.reserve(KEY, now=now).at < now + 60 for _ in range(7)) == 5


def test_a_quota_lowered_by_the_operator_wins_over_a_higher_limit_the_server_advertised(redis_client):
    now = time.time()
    pacer(redis_client, quota=50, window=60.0).observe(KEY, limit=40, remaining=40, now=now)
    lowered = pacer(redis_client, quota=30, window=60.0)  # OPCORE_RICHPANEL_QUOTA lowered meanwhile
    assert lowered.quota_for(KEY) == 30
    assert sum(lowered.reserve(KEY, now=now).at < now + 60 for _ in range(40)) == 30


def test_requests_we_did_not_send_slow_us_down(redis_client):
    p = pacer(redis_client, quota=10)
    now = time.time()
    p.reserve(KEY, now=now)
    p.admit(KEY, now=now)  # what counts as ours is what we really sent
    # Richpanel says 3 remain where we expect 9: six requests by someone else.
    assert p.observe(KEY, limit=10, remaining=3, now=now) == 6
    slots = [p.reserve(KEY, now=now).at for _ in range(4)]
    assert sum(s < now + p.window for s in slots) == 3


def test_the_raw_key_is_not_in_redis(redis_client):
    p = pacer(redis_client)
    p.reserve(KEY)
    p.block(KEY, 5)
    keys = [k.decode() for k in redis_client.keys("*")]
    assert keys and all(KEY not in k for k in keys)
    assert any(p.fingerprint(KEY) in k for k in keys)


def test_a_leaky_bucket_is_paced_without_overflowing(redis_client):
    # Gorgias: a bucket of 40 requests leaking 2 a second. Paced as 40 per 40 / 2 = 20 s, a
    # backlog's slots never overflow the bucket, and in the long run use the whole leak rate.
    capacity, leak = 40, 2.0
    p = pacer(redis_client, quota=capacity, window=capacity / leak)
    now = time.time()
    slots = [p.reserve(KEY, now=now).at for _ in range(400)]
    level, last = 0.0, slots[0]
    for at in slots:
        level = max(0.0, level - leak * (at - last)) + 1
        last = at
        assert level <= capacity
    assert (len(slots) - capacity) / (slots[-1] - slots[0]) > 0.9 * leak


def test_what_other_apps_keep_spending_stays_off_the_quota(redis_client):
    p = pacer(redis_client, quota=10, window=10.0)
    now = time.time()
    assert p.observe(KEY, limit=10, remaining=6, now=now) == 4  # others spent 4 of the 10
    assert p.observe(KEY, limit=10, remaining=6, now=now + 9) == 4  # and still do, 9 s later
    later = now + 10.5  # past the first sighting's window, within the second's
    slots = [p.reserve(KEY, now=later).at for _ in range(10)]
    assert sum(s < later + 10 for s in slots) == 6


def test_a_limit_key_left_by_an_earlier_version_does_not_break_pacing(redis_client):
    p = pacer(redis_client, quota=5)
    redis_client.set(f"optest:pace:{p.fingerprint(KEY)}:limit", "3", ex=3600)  # the old string form
    assert p.reserve(KEY).at > 0 and p.admit(KEY)[0] is not None
