"""Data preparation: seeded augmentation, PII redaction, blocklist, exact and near-duplicate removal."""

from __future__ import annotations

import random

import pytest

from groundup.data.prep import (
    augment,
    blocklist_filter,
    dedup_exact,
    dedup_near,
    minhash,
    random_delete,
    random_swap,
    redact_pii,
    typo_noise,
)

TEXT = "the quick brown fox jumps over the lazy dog near the river bank"


def test_augmentation_is_deterministic_under_a_seed():
    syn = {"quick": ["fast", "speedy"], "lazy": ["idle"]}
    a = augment(TEXT, seed=3, synonyms=syn, p_synonym=1.0, p_delete=0.2, swaps=2, p_typo=0.05)
    assert a == augment(TEXT, seed=3, synonyms=syn, p_synonym=1.0, p_delete=0.2, swaps=2, p_typo=0.05)
    assert a != augment(TEXT, seed=4, synonyms=syn, p_synonym=1.0, p_delete=0.2, swaps=2, p_typo=0.05)
    replaced = augment(TEXT, seed=0, synonyms=syn, p_synonym=1.0)
    assert "quick" not in replaced.split() and "idle" in replaced.split()
    assert augment(TEXT, seed=0) == TEXT  # nothing asked, nothing changed
    with pytest.raises(ValueError, match="p_delete=1.5"):
        augment(TEXT, seed=0, p_delete=1.5)


def test_each_operation_keeps_its_invariant():
    rng = random.Random(0)
    words = TEXT.split()
    assert sorted(random_swap(words, 5, rng)) == sorted(words)  # a permutation
    kept = random_delete(words, 0.5, rng)
    assert kept and all(w in words for w in kept)
    assert random_delete(words, 1.0, rng)  # one word always stays
    noisy = typo_noise("abcdefghij" * 5, 0.3, random.Random(1))
    assert noisy != "abcdefghij" * 5 and abs(len(noisy) - 50) < 15


@pytest.mark.parametrize("text", ["call 555-123-4567 now", "ring +1 (555) 123-4567", "at (555) 123 4567.",
                                  "london +44 20 7946 0958", "dots 555.123.4567"])
def test_phone_numbers_are_redacted(text):
    assert "[PHONE]" in redact_pii(text) and not any(c.isdigit() for c in redact_pii(text).replace("[PHONE]", ""))


@pytest.mark.parametrize("text", ["in 2023 we", "pi is 3.14159", "version 1.2.3", "order 12345678", "on 2026-11-23",
                                  "ip 192.168.1.1", "397 x 4429 = 1758313"])
def test_other_numbers_are_kept(text):
    assert redact_pii(text) == text


def test_emails_are_redacted():
    assert redact_pii("mail jane.doe+ml@example.co.uk or bob@test.org") == "mail [EMAIL] or [EMAIL]"


def test_blocklist_reports_what_it_drops():
    texts = ["a fine day", "a Damn fine day", "damnation is a word", "ok"]
    kept, dropped = blocklist_filter(texts, ["damn"])
    assert kept == [0, 2, 3] and dropped == [(1, "damn")]


def test_exact_and_near_duplicates():
    texts = ["Hello   World, this is a test of the system.", "hello world, this is a test of the system.",
             TEXT, TEXT.replace("river", "stream"), "an entirely different sentence about cooking pasta at home"]
    kept, dropped = dedup_exact(texts)
    assert kept == [0, 2, 3, 4] and dropped == [(1, 0)]
    long = " ".join(f"word{i}" for i in range(60))
    near = long.replace("word30", "changed")
    kept, dropped = dedup_near([long, "something else entirely here and now", near], threshold=0.8)
    assert kept == [0, 1] and dropped[0][:2] == (2, 0) and dropped[0][2] > 0.8
    assert (minhash(long, seed=1) == minhash(long, seed=1)).all()
    kept, _ = dedup_near([long, " ".join(f"other{i}" for i in range(60))])
    assert kept == [0, 1]
