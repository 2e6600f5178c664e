"""Identifier hashing for logs: keyed, stable under one salt, short."""

from __future__ import annotations

import re

from pydantic import SecretStr

from tandem.common.privacy import IdHasher, hash_id
from tandem.common.settings import GatewaySettings, WorkerSettings


def test_hashes_are_short_hex_and_stable_under_one_salt() -> None:
    hasher = IdHasher("deployment-salt")
    first = hasher.hash_id("u00042")
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert IdHasher("deployment-salt").hash_id("u00042") == first
    assert hasher.hash_id("u00043") != first


def test_the_salt_is_a_key_so_hashes_cannot_be_recomputed_without_it() -> None:
    assert IdHasher("salt-a").hash_id("u00042") != IdHasher("salt-b").hash_id("u00042")
    assert hash_id("u00042", key=b"salt-a") == IdHasher("salt-a").hash_id("u00042")


def test_without_a_salt_each_process_draws_its_own() -> None:
    one, two = IdHasher(), IdHasher()
    assert one.random_salt and two.random_salt
    assert one.hash_id("u00042") != two.hash_id("u00042")


def test_gateway_and_worker_with_the_same_salt_agree() -> None:
    salt = SecretStr("shared")
    gateway = IdHasher.from_settings(GatewaySettings(privacy_salt=salt))
    worker = IdHasher.from_settings(WorkerSettings(privacy_salt=salt))
    assert gateway.hash_id("req-1") == worker.hash_id("req-1")
    assert not gateway.random_salt


def test_long_salts_odd_text_and_repr_are_safe() -> None:
    hasher = IdHasher("s" * 500)
    assert len(hasher.hash_id("\udcff odd \u2603")) == 16
    assert "s" * 10 not in repr(hasher)
    assert "shared" not in repr(GatewaySettings(privacy_salt=SecretStr("shared")))
