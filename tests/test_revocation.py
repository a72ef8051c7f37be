"""Unit tests of the in-memory revocation store (auth/revocation.py), with a fake clock."""

from __future__ import annotations

import pytest

from realtime_server.auth.revocation import (
    MemoryRevocationStore,
    Revocation,
    RevocationStore,
)

T0 = 1_700_000_000.0
MAX_LIFETIME = 3600.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryRevocationStore:
    return MemoryRevocationStore(max_lifetime=MAX_LIFETIME, clock=clock)


@pytest.fixture
def announced(store: MemoryRevocationStore) -> list[Revocation]:
    seen: list[Revocation] = []
    store.set_listener(seen.append)
    return seen


def test_implements_the_interface(store: MemoryRevocationStore) -> None:
    assert isinstance(store, RevocationStore)


async def test_nothing_revoked(store: MemoryRevocationStore) -> None:
    assert not await store.is_revoked("j1", "42", T0)
    assert not await store.is_revoked(None, "42", None)


async def test_jti_revoked_until_its_exp(store: MemoryRevocationStore, clock: FakeClock) -> None:
    await store.revoke_token("j1", T0 + 100)
    assert await store.is_revoked("j1", "42", T0 - 10)
    assert await store.is_revoked("j1", "anyone", None)  # the jti alone decides
    assert not await store.is_revoked("j2", "42", T0 - 10)
    assert not await store.is_revoked(None, "42", T0 - 10)
    clock.advance(100)
    assert await store.is_revoked("j1", "42", T0 - 10)  # still at exp itself
    clock.advance(MAX_LIFETIME)
    # long after exp the token is refused as expired anyway: the entry may go
    assert not await store.is_revoked("j1", "42", T0 - 10)


async def test_jti_revoked_twice_keeps_the_later_exp(
    store: MemoryRevocationStore, clock: FakeClock
) -> None:
    await store.revoke_token("j1", T0 + 500)
    await store.revoke_token("j1", T0 + 100)
    clock.advance(200)
    assert await store.is_revoked("j1", "42", None)


async def test_user_cutoff(store: MemoryRevocationStore) -> None:
    await store.revoke_user("42", T0)
    assert await store.is_revoked(None, "42", T0 - 1)  # issued before
    assert await store.is_revoked("j1", "42", T0 - 0.001)
    assert not await store.is_revoked(None, "42", T0)  # issued at the cutoff
    assert not await store.is_revoked(None, "42", T0 + 1)  # issued after
    assert await store.is_revoked(None, "42", None)  # cannot prove it is newer
    assert not await store.is_revoked(None, "43", T0 - 1)  # another user


async def test_user_cutoff_only_moves_forward(store: MemoryRevocationStore) -> None:
    await store.revoke_user("42", T0)
    await store.revoke_user("42", T0 - 500)
    assert await store.is_revoked(None, "42", T0 - 1)


async def test_user_cutoff_kept_for_the_max_lifetime(
    store: MemoryRevocationStore, clock: FakeClock
) -> None:
    await store.revoke_user("42", T0)
    clock.advance(MAX_LIFETIME)
    assert await store.is_revoked(None, "42", T0 - 1)
    clock.advance(MAX_LIFETIME)
    # every token issued before the cutoff has long expired: the cutoff may go
    assert not await store.is_revoked(None, "42", T0 - 1)


async def test_future_user_cutoff_outlives_tokens_issued_before_it(
    store: MemoryRevocationStore, clock: FakeClock
) -> None:
    """A cutoff in the future revokes tokens issued up to it; such a token may live until
    ``cutoff + max_lifetime``, so the cutoff must be remembered until then."""
    await store.revoke_user("42", T0 + 600)
    iat = T0 + 300  # issued after the call, before the cutoff: revoked
    clock.now = iat + MAX_LIFETIME - 1  # that token is still within its lifetime
    assert await store.is_revoked(None, "42", iat)


async def test_revoked_many_answers_like_is_revoked(store: MemoryRevocationStore) -> None:
    await store.revoke_token("j1", T0 + 100)
    await store.revoke_user("42", T0)
    tokens: list[tuple[str | None, str, float | None]] = [
        ("j1", "7", T0),
        ("j2", "7", T0),
        (None, "42", T0 - 1),
        (None, "42", T0 + 1),
        (None, "42", None),
    ]
    assert await store.revoked_many(tokens) == [True, False, True, False, True]
    assert await store.revoked_many([]) == []


async def test_listener_hears_every_revocation(
    store: MemoryRevocationStore, announced: list[Revocation]
) -> None:
    await store.revoke_token("j1", T0 + 100)
    await store.revoke_user("42", T0)
    await store.revoke_user("42", T0 - 50)
    # Each says until when it matters: the token's exp, or the cutoff plus the longest
    # token lifetime (from now, as the cutoff is not in the future), plus the margin.
    assert announced == [
        Revocation("jti", jti="j1", keep_until=T0 + 100 + 60),
        Revocation("user", user="42", issued_before=T0, keep_until=T0 + MAX_LIFETIME + 60),
        # the effective (later) cutoff
        Revocation("user", user="42", issued_before=T0, keep_until=T0 + MAX_LIFETIME + 60),
    ]


async def test_no_listener_is_fine(store: MemoryRevocationStore) -> None:
    await store.revoke_token("j1", T0 + 100)
    await store.revoke_user("42", T0)
    await store.close()


async def test_announced_revocation_matches_like_the_store(
    store: MemoryRevocationStore, announced: list[Revocation]
) -> None:
    await store.revoke_token("j1", T0 + 100)
    await store.revoke_user("42", T0)
    by_jti, by_user = announced
    cases = [("j1", "7", T0), ("j2", "42", T0 - 1), ("j2", "42", T0), (None, "42", None)]
    for jti, user, iat in cases:
        live = by_jti.matches(jti, user, iat) or by_user.matches(jti, user, iat)
        assert live == await store.is_revoked(jti, user, iat), (jti, user, iat)


def test_revocation_matches() -> None:
    jti = Revocation("jti", jti="j1")
    assert jti.matches("j1", "42", None)
    assert not jti.matches("j2", "42", None)
    assert not jti.matches(None, "42", None)
    user = Revocation("user", user="42", issued_before=T0)
    assert user.matches(None, "42", T0 - 1)
    assert user.matches("j9", "42", None)
    assert not user.matches(None, "42", T0)
    assert not user.matches(None, "43", T0 - 1)
    assert not Revocation("user", user="42").matches(None, "42", None)


async def test_expired_entries_are_purged(store: MemoryRevocationStore, clock: FakeClock) -> None:
    """Entries that cannot matter any more do not pile up: they are purged once the
    entries have doubled since the last purge (at least 1,024), on a write."""
    for i in range(1000):
        await store.revoke_token(f"old-{i}", T0 + 10)
    await store.revoke_user("42", T0)
    clock.advance(3 * MAX_LIFETIME)
    fresh = {f"fresh-{i}" for i in range(1100)}
    for jti in fresh:
        await store.revoke_token(jti, clock.now + 10)
    assert set(store._mirror._jtis) == fresh  # internal state: memory is what purging saves
    assert store._mirror._users == {}
    assert await store.is_revoked("fresh-7", "1", None)
