"""Building blocks: norms, positions, attention, feed-forward, mixture of experts, the block."""
