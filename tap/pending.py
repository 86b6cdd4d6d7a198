"""Bets answered but not yet committed: what `GET /api/bets/{id}` shows as `pending`.

A neutral room shared by the desk (which adds a bet when it hands it to the writer) and
ledger-sync (which drops it when the writer's verdict arrives), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tap.messages import Bet


@dataclass
class PendingBets:
    """Bets answered 202 but not yet committed, so GET can show them as `pending`, with the
    request id that placed each, so the commit's log line names it too."""

    by_id: dict[str, Bet] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)

    def add(self, bet: Bet, request_id: str | None = None) -> None:
        self.by_id[bet.bet_id] = bet
        if request_id is not None:
            self.request_ids[bet.bet_id] = request_id

    def pop(self, bet_id: str) -> Bet | None:
        self.request_ids.pop(bet_id, None)
        return self.by_id.pop(bet_id, None)

    def request_id(self, bet_id: str) -> str | None:
        return self.request_ids.get(bet_id)

    def get(self, bet_id: str) -> Bet | None:
        return self.by_id.get(bet_id)
