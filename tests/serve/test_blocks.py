"""The paged cache's block manager: tables grow a block at a time, prompts that share a prefix share its
blocks, freed blocks stay findable until reused, and random use never breaks the pool's bookkeeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundup.serve import BlockPool, chain_hashes


def test_tables_grow_a_block_at_a_time_and_release_everything():
    pool = BlockPool(8, 4)
    assert pool.allocate("a", list(range(10))) == 0
    assert len(pool.block_table("a")) == 3 and pool.free_blocks == 5
    assert pool.append("a", 10) and pool.append("a", 11)  # 12 tokens: still three blocks
    assert len(pool.block_table("a")) == 3
    assert pool.append("a", 12) and len(pool.block_table("a")) == 4
    pool.release("a")
    assert pool.free_blocks == 8 and pool.used_blocks == 0


def test_a_shared_prefix_is_computed_once():
    pool = BlockPool(16, 4)
    system = list(range(100, 112))  # three full blocks
    pool.allocate("a", [*system, 1, 2])
    assert pool.allocate("b", [*system, 3]) == 0  # nothing committed yet: nothing to share
    pool.commit("a", 14)
    assert pool.allocate("c", [*system, 4, 5, 6]) == 12  # a's three system blocks
    a, c = pool.block_table("a"), pool.block_table("c")
    assert a[:3] == c[:3] and a[3] != c[3]
    assert pool.ref[a[0]] == 2
    # the whole prompt cached still leaves its last token (and its block) to compute
    assert pool.allocate("d", system) == 8
    for s in "abcd":
        pool.release(s)
    assert pool.free_blocks == 16
    # freed, but findable until the pool hands the blocks out again
    assert pool.allocate("e", [*system, 9]) == 12 and pool.block_table("e")[:3] == a[:3]


def test_prefix_blocks_differ_when_an_earlier_block_differs():
    assert chain_hashes([1, 2, 3, 4, 5, 6], 3)[1] != chain_hashes([0, 2, 3, 4, 5, 6], 3)[1]
    pool = BlockPool(8, 2)
    pool.allocate("a", [1, 2, 3, 4, 5])
    pool.commit("a", 5)
    assert pool.allocate("b", [9, 9, 3, 4, 5]) == 0  # the second block's tokens match, its prefix does not


def test_memory_runs_out_with_a_clear_signal():
    pool = BlockPool(3, 4)
    with pytest.raises(MemoryError, match="4 blocks needed, 3 free"):
        pool.allocate("big", list(range(13)))
    assert pool.free_blocks == 3  # nothing was taken by the refused request
    pool.allocate("a", list(range(12)))
    assert not pool.can_allocate([1])
    assert not pool.append("a", 99)  # full: the caller preempts someone
    pool.release("a")
    assert pool.can_allocate(list(range(12)))
    pool.allocate("b", [1])
    with pytest.raises(ValueError, match="already holds"):
        pool.allocate("b", [1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "append", "commit", "release"]), st.integers(0, 5),
                          st.integers(1, 14), st.integers(0, 2)), max_size=60))
def test_random_use_keeps_the_books(ops):
    pool = BlockPool(12, 3)
    prefixes = [[7, 7, 7, 8, 8, 8], [1, 2, 3], []]
    for op, seq, n, p in ops:
        if op == "alloc" and seq not in pool.tables:
            prompt = (prefixes[p] + list(range(50 + seq, 50 + seq + n)))[:max(1, n)]
            if pool.can_allocate(prompt):
                cached = pool.allocate(seq, prompt)
                assert cached % 3 == 0 and cached < len(prompt)
            else:
                with pytest.raises(MemoryError):
                    pool.allocate(seq, prompt)
        elif op == "append" and seq in pool.tables:
            pool.append(seq, n)
        elif op == "commit" and seq in pool.tables:
            pool.commit(seq, min(n, len(pool.tables[seq].tokens)))
        elif op == "release" and seq in pool.tables:
            pool.release(seq)
        # the books: references count table entries, the free list is exactly the unreferenced blocks,
        # the hash maps are each other's inverse, and a table covers its tokens
        counts = [0] * pool.n_blocks
        for t in pool.tables.values():
            for b in t.blocks:
                counts[b] += 1
            assert len(t.blocks) == pool.blocks_needed(len(t.tokens))
        assert counts == pool.ref
        assert set(pool.free) == {b for b in range(pool.n_blocks) if pool.ref[b] == 0}
        assert {b: h for h, b in pool.cached.items()} == pool.hash_of
        # a block two sequences share holds the same tokens in both
        seen: dict[int, tuple] = {}
        for t in pool.tables.values():
            for i, b in enumerate(t.blocks):
                chunk = tuple(t.tokens[i * 3: i * 3 + 3])
                if b in seen and len(chunk) == 3 and len(seen[b]) == 3:
                    assert seen[b] == chunk
                seen.setdefault(b, chunk)
