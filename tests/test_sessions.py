import pytest

from tap.sessions import CapacityExceeded, Holdings, SessionBook

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


def test_a_full_book_refuses_rather_than_evict_a_client_holding_no_more_than_the_newcomer() -> None:
    b = SessionBook(challenge_ttl_ms=1000, session_ttl_ms=1000, max_challenges=2)
    b.issue_challenge(A, "n1", 0, client="c1")
    b.issue_challenge(A, "n2", 0, client="c2")
    with pytest.raises(CapacityExceeded) as refused:
        b.issue_challenge(A, "n3", 400, client="c3")
    assert not refused.value.per_client
    assert refused.value.retry_after_ms == 600  # when n1 expires
    assert b.take_challenge("n1", 0) is not None and b.take_challenge("n2", 0) is not None
    b.issue_challenge(A, "n4", 1500, client="c3")  # the expired leave room by themselves


def test_a_full_book_takes_the_oldest_of_the_heaviest_client() -> None:
    b = SessionBook(challenge_ttl_ms=1000, session_ttl_ms=1000, max_challenges=4)
    b.issue_challenge(A, "legit", 0, client="victim")
    for n in ("f1", "f2", "f3"):
        b.issue_challenge(A, n, 0, client="flood")
    b.issue_challenge(A, "new", 0, client="other")
    assert b.take_challenge("f1", 0) is None  # the flood's oldest made room
    assert b.take_challenge("legit", 0) is not None
    assert b.counts() == (3, 0)


def test_a_client_holds_at_most_its_cap_of_challenges() -> None:
    b = SessionBook(challenge_ttl_ms=1000, session_ttl_ms=1000, max_challenges_per_client=2)
    b.issue_challenge(A, "n1", 0, client="c")
    b.issue_challenge(A, "n2", 100, client="c")
    with pytest.raises(CapacityExceeded) as refused:
        b.issue_challenge(A, "n3", 200, client="c")
    assert refused.value.per_client and refused.value.retry_after_ms == 800
    b.issue_challenge(A, "n3", 200, client="d")
    assert b.take_challenge("n1", 200) is not None  # redeeming frees the slot
    b.issue_challenge(A, "n4", 200, client="c")


def test_sessions_past_a_clients_cap_end_its_own_oldest_and_a_full_book_refuses() -> None:
    b = SessionBook(
        challenge_ttl_ms=1000, session_ttl_ms=1000, max_sessions=3, max_sessions_per_client=2
    )
    b.open_session("legit", A, KEY, 0, client="victim")
    for i in range(5):
        b.open_session(f"f{i}", "0x" + f"{i:02x}" * 20, KEY, 0, client="flood")
    assert [b.lookup(f"f{i}", 0) is not None for i in range(5)] == [False] * 3 + [True] * 2
    b.open_session("new", "0x" + "cc" * 20, KEY, 0, client="other")  # the flood gives one up
    assert b.lookup("legit", 0) and b.lookup("new", 0) and not b.lookup("f3", 0)
    with pytest.raises(CapacityExceeded) as refused:
        b.open_session("late", "0x" + "dd" * 20, KEY, 10, client="late")
    assert not refused.value.per_client and refused.value.retry_after_ms == 990
    assert b.counts() == (0, 3)


def test_holdings_track_the_heaviest_client_through_adds_and_removes() -> None:
    h = Holdings()
    assert h.heaviest() is None
    h.add("a", "1")
    h.add("b", "2")
    h.add("b", "3")
    assert h.heaviest() == ("b", 2)
    h.remove("b", "2")
    assert h.heaviest() is not None and h.heaviest()[1] == 1  # type: ignore[index]
    h.remove("b", "3")
    h.remove("a", "1")
    assert h.heaviest() is None and len(h) == 0
    h.remove("a", "1")  # unknown: nothing happens


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
