"""The allocator's functional core: TRACE allocation and the baseline strategies.

- ``allocation``: V_root, V_pref, the exact stage-1 DP and the stage-2 greedy (pure).
- ``tree``: rollout trees from TurnNodes, backup values, CompletedTree conversion.
- ``budget``: the per-step turn budget with reservations and refunds.
- ``predictor``: the shared online success predictor and the per-prompt Beta baseline.
- ``selection``: GPS and DPS stage-1 selectors (pure).
- ``core``: ``AllocatorCore``, the synchronous state machine the NATS shell drives.
- ``simulator``: a ground-truth rollout simulator for tests and benchmarks.
"""
