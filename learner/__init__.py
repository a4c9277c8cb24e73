"""The learner: CompletedTrees in, optimiser steps and versioned weights out.

Pure core: ``sequences`` (trees to token data, validation, staleness), ``advantages``
(per-node advantages), ``losses`` (surrogates, importance weights, diagnostics) and
``packing`` (forward layouts). Shell: ``trainer.Trainer`` around Accelerate, configured
by ``config.LearnerConfig``.
"""
