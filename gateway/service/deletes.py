"""Deleting messages: one POP3 transaction, reported only after QUIT answered ``+OK``.

Invariant 2 (README, Invariants) is kept here: any failure before QUIT's ``+OK`` drops the
connection, and the server rolls the marks back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..accounts import Account
from ..cache import HeaderCache
from ..pop3 import POP3OutcomeUnknownError, POP3UpdateError
from .errors import DeleteFailedError, DeleteOutcomeUnknownError, InvalidInputError
from .ids import decode_id
from .listing import SnapshotCache
from .sessions import SessionSource
from .summaries import RecentSummaries

#: Most ids in one delete request.
MAX_IDS = 500


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]  #: unique-ids
    not_found: list[str]


class Deletes:
    def __init__(
        self,
        sessions: SessionSource,
        snapshots: SnapshotCache,
        cache: HeaderCache | None,
        *,
        cache_key: bytes,
        recent: RecentSummaries | None = None,
    ) -> None:
        self._sessions = sessions
        self._snapshots = snapshots
        self._cache = cache
        self._cache_key = cache_key
        self._recent = recent

    async def delete_messages(self, account: Account, message_ids: Sequence[str]) -> DeleteResult:
        """Delete in one POP3 transaction; reported only after QUIT answered ``+OK``."""
        if not 1 <= len(message_ids) <= MAX_IDS:
            raise InvalidInputError(f"between 1 and {MAX_IDS} ids per request")
        uids = list(dict.fromkeys(decode_id(i) for i in message_ids))
        return await self._delete(account, uids)

    async def _delete(self, account: Account, uids: list[str]) -> DeleteResult:
        try:
            result = await self._transaction(account, uids)
        except BaseException:
            # Whatever happened, the next listing must look again.
            self._snapshots.forget(account)
            raise
        if result.deleted:
            self._snapshots.forget(account)  # the session that showed them is gone (QUIT)
        # else: nothing was marked; the fresh session and its snapshot are the newest truth
        return result

    async def _transaction(self, account: Account, uids: list[str]) -> DeleteResult:
        async with self._sessions.lease(account, fresh=True) as session:
            snap = await self._snapshots.snapshot(session)
            present = [u for u in uids if u in snap.by_uid]
            absent = [u for u in uids if u not in snap.by_uid]
            if not present:
                return DeleteResult([], absent)
            numbers = [n for u in present for n in snap.by_uid[u]]
            client = session.client
            errors = await client.dele_many(numbers)
            refused = [e for e in errors if e is not None]
            if refused:
                client.abort()  # never QUIT with a partial set of marks: roll everything back
                raise DeleteFailedError(
                    f"the server refused to mark {len(refused)} message(s); nothing was deleted"
                ) from refused[0]
            try:
                await client.quit()
            except POP3OutcomeUnknownError as exc:
                raise DeleteOutcomeUnknownError(
                    "the connection was lost after QUIT was sent: the messages may or may not "
                    "be deleted; retrying is safe"
                ) from exc
            except POP3UpdateError as exc:
                raise DeleteFailedError(
                    "the server reported that not every marked message was removed"
                ) from exc
        namespace = account.namespace(self._cache_key)
        if self._recent is not None:
            self._recent.drop(namespace, present)
        if self._cache is not None:
            await self._cache.delete_many(namespace, present)
        return DeleteResult(present, absent)
