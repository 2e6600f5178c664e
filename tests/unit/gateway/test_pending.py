"""The table of requests in flight: replies resolve their attempt, failures reach only the attempts they name."""

from __future__ import annotations

import asyncio

import pytest

from tandem.common.wire import Reply
from tandem.gateway.pending import PendingReplies, WorkerLost


def test_a_reply_resolves_its_attempt_once() -> None:
    async def scenario() -> None:
        pending = PendingReplies()
        attempt_id, future = pending.register("w1")
        assert pending.outstanding("w1") == 1
        assert pending.resolve(Reply(attempt_id, "ok", "m"))
        assert future.result().request_id == attempt_id
        assert not pending.resolve(Reply(attempt_id, "ok", "m"))  # a duplicate is dropped
        assert pending.outstanding("w1") == 0 and len(pending) == 0

    asyncio.run(scenario())


def test_failing_one_attempt_leaves_the_others_on_its_worker() -> None:
    async def scenario() -> None:
        pending = PendingReplies()
        failed_id, failed = pending.register("w1")
        _other_id, other = pending.register("w1")
        pending.fail(failed_id, WorkerLost("could not take the request"))
        with pytest.raises(WorkerLost, match="could not take"):
            failed.result()
        assert not other.done()
        assert pending.outstanding("w1") == 1
        pending.fail(failed_id, WorkerLost("again"))  # no longer held: nothing happens
        assert not pending.resolve(Reply(failed_id, "ok", "m"))

    asyncio.run(scenario())


def test_a_dead_worker_fails_all_its_attempts() -> None:
    async def scenario() -> None:
        pending = PendingReplies()
        futures = [pending.register("w1")[1] for _ in range(3)]
        _, elsewhere = pending.register("w2")
        assert pending.fail_worker("w1", "connection closed") == 3
        assert all(isinstance(f.exception(), WorkerLost) for f in futures)
        assert not elsewhere.done()

    asyncio.run(scenario())
