from tap.sessions import SessionBook

A = "0x" + "aa" * 20
KEY = "ab" * 32


def book() -> SessionBook:
    return SessionBook(challenge_ttl_ms=1000, session_ttl_ms=10_000, max_sessions_per_address=3)


def test_a_challenge_is_single_use_and_expires() -> None:
    b = book()
    b.issue_challenge(A, "n1", 0)
    assert b.take_challenge("n1", 500) is not None
    assert b.take_challenge("n1", 500) is None  # used
    b.issue_challenge(A, "n2", 0)
    assert b.take_challenge("n2", 1001) is None  # expired


def test_oldest_challenges_are_evicted_past_the_cap() -> None:
    b = SessionBook(challenge_ttl_ms=1000, session_ttl_ms=1000, max_challenges=2)
    for n in ("n1", "n2", "n3"):
        b.issue_challenge(A, n, 0)
    assert b.take_challenge("n1", 0) is None
    assert b.take_challenge("n3", 0) is not None


def test_logging_in_again_and_again_keeps_only_the_newest_sessions_of_an_address() -> None:
    b = book()
    for i in range(10):
        b.open_session(f"t{i}", A, KEY, 0)
    assert [b.lookup(f"t{i}", 0) is not None for i in range(10)] == [False] * 7 + [True] * 3
    other = "0x" + "bb" * 20
    b.open_session("x", other, KEY, 0)
    assert b.lookup("t9", 0) is not None and b.lookup("x", 0) is not None


def test_prune_forgets_expired_sessions_and_challenges() -> None:
    b = book()
    b.open_session("t", A, KEY, 0)
    b.issue_challenge(A, "n", 0)
    b.prune(20_000)
    assert b.lookup("t", 0) is None  # gone from memory, even for a lookup "in the past"
    assert b.take_challenge("n", 0) is None
    assert not b._by_address
