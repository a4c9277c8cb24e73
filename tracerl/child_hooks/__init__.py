"""Start-up hooks that ``tracerl.end_with_parent`` puts on the PYTHONPATH of the processes it starts."""
