"""Vehicle-id pseudonyms: stable, keyed, collision-free in practice, key kept 0600 and reused."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from traffic.privacy import (
    KEY_FILE_NAME,
    PseudonymInputError,
    PseudonymKeyError,
    Pseudonymizer,
    key_from_text,
    load_or_create_key,
)

KEY_A = key_from_text("a" * 16 + "-test-key-one")
KEY_B = key_from_text("b" * 16 + "-test-key-two")


def ids_series(values) -> pl.Series:
    return pl.Series("vehicle_id", values, dtype=pl.Utf8)


def test_pseudonymize_same_id_same_pseudonym():
    rng = np.random.default_rng(1)
    raw = [f"car-{i}" for i in rng.integers(0, 50, 2000)]
    p = Pseudonymizer(KEY_A)
    out = p.pseudonymize(ids_series(raw))
    pairs = pl.DataFrame({"id": raw, "ps": out}).unique()
    assert pairs["id"].n_unique() == pairs.height == pairs["ps"].n_unique()
    # Stable across batches, instances (a restart) and the cache being off.
    again = Pseudonymizer(KEY_A, cache_size=0).pseudonymize(ids_series(raw[::-1]))
    assert again.to_list() == out.to_list()[::-1]


def test_pseudonymize_matches_scalar_reference():
    rng = np.random.default_rng(2)
    raw = [f"v{i}-{'x' * int(i % 5)}" for i in rng.integers(0, 10**9, 500)] + ["", "ø-ü-車"]
    p = Pseudonymizer(KEY_A)
    out = p.pseudonymize(ids_series(raw)).to_list()
    assert out == [p.pseudonym(r) for r in raw]
    ref = [hashlib.blake2b(r.encode(), digest_size=8, key=KEY_A, person=b"traffic-vid-v1").hexdigest()
           for r in raw]
    assert out == ref


def test_pseudonymize_different_keys_differ():
    raw = [f"car-{i}" for i in range(1000)]
    a = Pseudonymizer(KEY_A).pseudonymize(ids_series(raw)).to_list()
    b = Pseudonymizer(KEY_B).pseudonymize(ids_series(raw)).to_list()
    assert sum(x == y for x, y in zip(a, b)) == 0


def test_pseudonymize_not_an_unkeyed_hash():
    raw = [f"car-{i}" for i in range(200)]
    out = set(Pseudonymizer(KEY_A).pseudonymize(ids_series(raw)).to_list())
    for r in raw:
        guesses = {
            hashlib.blake2b(r.encode(), digest_size=8).hexdigest(),
            hashlib.blake2b(r.encode(), digest_size=8, person=b"traffic-vid-v1").hexdigest(),
            hashlib.sha256(r.encode()).hexdigest()[:16],
            hmac.new(b"", r.encode(), "sha256").hexdigest()[:16],
        }
        assert not guesses & out
        assert r not in " ".join(out)


def test_pseudonymize_no_collisions_100k():
    raw = [f"vehicle-{i:07d}" for i in range(100_000)]
    out = Pseudonymizer(KEY_A).pseudonymize(ids_series(raw))
    assert out.n_unique() == 100_000
    assert out.str.len_chars().unique().to_list() == [16]
    assert out.str.contains("^[0-9a-f]{16}$").all()


def test_pseudonymize_nulls_and_empty():
    p = Pseudonymizer(KEY_A)
    out = p.pseudonymize(ids_series([None, "a", None, "a"]))
    assert out.name == "vehicle_id" and out.dtype == pl.Utf8
    assert out.to_list() == [None, p.pseudonym("a"), None, p.pseudonym("a")]
    assert p.pseudonymize(ids_series([])).len() == 0
    assert p.pseudonymize(ids_series([None, None])).to_list() == [None, None]


def test_pseudonymize_cache_overflow_keeps_answers():
    p = Pseudonymizer(KEY_A, cache_size=10)
    raw = [f"c{i}" for i in range(25)]
    first = p.pseudonymize(ids_series(raw)).to_list()
    assert p.pseudonymize(ids_series(raw[:7])).to_list() == first[:7]
    assert first == [p.pseudonym(r) for r in raw]


def test_pseudonymize_frame_only_touches_column():
    df = pl.DataFrame({"vehicle_id": ["a", "b"], "t": [1.0, 2.0]})
    p = Pseudonymizer(KEY_A)
    out = p.pseudonymize_frame(df)
    assert out["t"].to_list() == [1.0, 2.0]
    assert out["vehicle_id"].to_list() == [p.pseudonym("a"), p.pseudonym("b")]
    with pytest.raises(PseudonymInputError, match="'vid'"):
        p.pseudonymize_frame(df, column="vid")


def test_pseudonymize_invalid_type():
    p = Pseudonymizer(KEY_A)
    with pytest.raises(PseudonymInputError, match="Int64"):
        p.pseudonymize(pl.Series([1, 2]))
    with pytest.raises(PseudonymInputError, match="list"):
        p.pseudonymize(["a"])  # type: ignore[arg-type]


def test_pseudonymizer_invalid_key():
    with pytest.raises(PseudonymKeyError, match="8 bytes"):
        Pseudonymizer(b"short123")
    with pytest.raises(PseudonymKeyError, match="str"):
        Pseudonymizer("a" * 32)  # type: ignore[arg-type]
    assert "hidden" in repr(Pseudonymizer(KEY_A)) and KEY_A.hex() not in repr(Pseudonymizer(KEY_A))


def test_key_from_text_short():
    with pytest.raises(PseudonymKeyError, match="TRAFFIC_PSEUDONYM_KEY must be at least 16"):
        key_from_text("  too-short  ", source="TRAFFIC_PSEUDONYM_KEY")


def test_load_or_create_key_file_0600_and_stable(tmp_path):
    key1 = load_or_create_key(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    key2 = load_or_create_key(tmp_path / "data")
    assert key1 == key2
    assert load_or_create_key(tmp_path / "other") != key1
    assert not [p for p in (tmp_path / "data").iterdir() if p.name != KEY_FILE_NAME]


def test_load_or_create_key_configured_wins(tmp_path):
    text = "configured-key-text-1234"
    assert load_or_create_key(tmp_path, configured=text) == key_from_text(text)
    assert not (tmp_path / KEY_FILE_NAME).exists()
    with pytest.raises(PseudonymKeyError, match="configured pseudonym key"):
        load_or_create_key(tmp_path, configured="short")


def test_load_or_create_key_stable_across_processes(tmp_path):
    code = ("import sys; from pathlib import Path; from traffic.privacy import load_or_create_key;"
            "print(load_or_create_key(Path(sys.argv[1])).hex())")
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(3)]
    keys = {proc.communicate()[0].strip() for proc in procs}
    assert len(keys) == 1 and bytes.fromhex(keys.pop()) == load_or_create_key(tmp_path)


def test_load_or_create_key_bad_file(tmp_path, caplog):
    path = tmp_path / KEY_FILE_NAME
    path.write_text("abc")
    with pytest.raises(PseudonymKeyError, match="key file"):
        load_or_create_key(tmp_path)
    path.write_text("x" * 40)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="traffic.privacy"):
        load_or_create_key(tmp_path)
    assert "readable by others" in caplog.text
