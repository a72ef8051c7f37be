"""What a node remembers of the shared revocation list (pure; a fake clock)."""

from __future__ import annotations

from realtime_server.auth.revocation_mirror import MirroredUser, RevocationMirror


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_are_kept_until_they_stop_mattering() -> None:
    clock = Clock()
    mirror = RevocationMirror(clock)
    mirror.add_jti("a", 1100.0)
    mirror.add_jti("a", 1050.0)  # a second revocation never shortens the first
    mirror.add_user("7", 900.0, 1200.0)
    mirror.add_user("7", 800.0, 1150.0)  # the later cutoff and the longer keep win
    assert mirror.jtis() == {"a": 1100.0}
    assert mirror.users() == {"7": MirroredUser(900.0, 1200.0)}
    clock.now = 1100.0
    assert mirror.jtis() == {}
    assert mirror.users() == {"7": MirroredUser(900.0, 1200.0)}
    clock.now = 1200.0
    assert mirror.users() == {}


def test_forgotten_entries_are_purged_as_the_mirror_grows() -> None:
    clock = Clock()
    mirror = RevocationMirror(clock)
    for i in range(1000):
        mirror.add_jti(f"old{i}", 1001.0)
    clock.now = 2000.0
    for i in range(100):
        mirror.add_jti(f"new{i}", 3000.0)
    assert len(mirror) == 100  # the purge ran when the mirror reached 1,024
    assert len(mirror.jtis()) == 100
