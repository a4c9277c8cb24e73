"""The allocator's functional core: TRACE allocation and the baseline strategies.

- ``core``: ``AllocatorCore``, the synchronous state machine the NATS shell drives: the
  step lifecycle (budget, scheduling, routing, closing).
- ``step``: one step's state and the ids of its trees and work items.
- ``strategies``: one planner module per method family, the planner protocol and the
  registry of strategy names.
- ``learning``: ``OutcomeModel`` (predictions, the predictor's training, per-prompt
  statistics) and the published metrics.
- ``replay``: rebuilding a core from the durable streams after a restart.
- ``allocation``: V_root, V_pref, the exact stage-1 DP and the stage-2 greedy (pure).
- ``tree``: rollout trees from TurnNodes, backup values, CompletedTree conversion.
- ``budget``: the per-step turn budget with reservations and refunds.
- ``predictor``: the shared online success predictor and the per-prompt Beta baseline.
- ``selection``: GPS and DPS stage-1 selectors (pure).
- ``simulator``: a ground-truth rollout simulator for tests and benchmarks.
- ``service``, ``config``, ``heldout``: the NATS shell, its config and held-out probes.
"""
