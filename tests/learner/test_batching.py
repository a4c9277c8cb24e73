"""One learner update per allocator step, robust to duplicates and lost trees."""

from learner.batching import StepBatcher, step_is_whole
from protocol.messages import replace
from tests.learner.trees import node, tree


def _tree(step: int, index: int, count: int):
    base = tree([1, 2], [node("a", None, 1, [3], [], reward=1.0)])
    return replace(base, tree_id=f"s{step}-{index}", allocator_step=step, step_tree_count=count)


def test_a_step_is_released_only_when_whole():
    batcher = StepBatcher()
    batcher.add(_tree(0, 0, 2), now=0.0)
    assert batcher.next_batch(now=1.0) is None
    batcher.add(_tree(0, 0, 2), now=1.0)  # redelivered duplicate does not complete the step
    assert batcher.next_batch(now=1.5) is None
    batcher.add(_tree(0, 1, 2), now=2.0)
    batch = batcher.next_batch(now=2.0)
    assert sorted(t.tree_id for t in batch) == ["s0-0", "s0-1"]
    assert len(batcher) == 0


def test_steps_come_out_in_order_even_if_interleaved():
    batcher = StepBatcher()
    batcher.add(_tree(1, 0, 1), now=0.0)
    batcher.add(_tree(0, 0, 1), now=0.0)
    assert [t.allocator_step for t in batcher.next_batch(now=0.0)] == [0]
    assert [t.allocator_step for t in batcher.next_batch(now=0.0)] == [1]
    assert batcher.next_batch(now=0.0) is None


def test_an_incomplete_step_is_released_after_a_later_step_waited():
    batcher = StepBatcher(step_wait_s=10.0)
    batcher.add(_tree(0, 0, 3), now=0.0)
    batcher.add(_tree(1, 0, 1), now=5.0)
    assert batcher.next_batch(now=14.0) is None
    assert [t.tree_id for t in batcher.next_batch(now=15.0)] == ["s0-0"]


def test_fixed_size_batches():
    batcher = StepBatcher(trees_per_step=2)
    for i in range(3):
        batcher.add(_tree(i, 0, 1), now=0.0)
    assert len(batcher.next_batch(now=0.0)) == 2
    assert batcher.next_batch(now=0.0) is None


def _shard_tree(step: int, index: int, count: int, shard: int, shards: int):
    return replace(_tree(step, index, count), tree_id=f"k{shard}-s{step}-{index}", shard=shard, shard_count=shards)


def test_with_shards_a_step_is_whole_when_every_shards_part_is():
    batcher = StepBatcher()
    batcher.add(_shard_tree(0, 0, 2, shard=0, shards=2), now=0.0)
    batcher.add(_shard_tree(0, 1, 2, shard=0, shards=2), now=0.0)
    # Shard 0's part is whole; shard 1 has sent nothing yet.
    assert batcher.next_batch(now=1.0) is None
    batcher.add(_shard_tree(0, 0, 2, shard=1, shards=2), now=1.0)
    batcher.add(_shard_tree(0, 0, 2, shard=1, shards=2), now=1.0)  # a duplicate counts once
    assert batcher.next_batch(now=1.0) is None
    batcher.add(_shard_tree(0, 1, 2, shard=1, shards=2), now=2.0)
    batch = batcher.next_batch(now=2.0)
    assert sorted(t.tree_id for t in batch) == ["k0-s0-0", "k0-s0-1", "k1-s0-0", "k1-s0-1"]


def test_with_shards_each_shard_counts_its_own_trees():
    # Shard 0 emitted 3 trees of step 0, shard 1 one: 1 + 3 trees do not make 2 + 2.
    trees = [_shard_tree(0, i, 3, shard=0, shards=2) for i in range(2)] + [
        _shard_tree(0, i, 1, shard=1, shards=2) for i in range(1)
    ]
    assert not step_is_whole(trees)
    assert step_is_whole([*trees, _shard_tree(0, 2, 3, shard=0, shards=2)])
    assert step_is_whole([_tree(0, 0, 1)]) and not step_is_whole([]) and not step_is_whole([_tree(0, 0, 2)])


def test_a_shards_missing_part_is_released_after_a_later_step_waited():
    batcher = StepBatcher(step_wait_s=10.0)
    batcher.add(_shard_tree(0, 0, 1, shard=0, shards=2), now=0.0)
    batcher.add(_shard_tree(1, 0, 1, shard=0, shards=2), now=5.0)
    assert batcher.next_batch(now=14.0) is None
    assert [t.tree_id for t in batcher.next_batch(now=15.0)] == ["k0-s0-0"]
