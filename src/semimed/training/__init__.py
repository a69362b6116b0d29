"""Training one run: the loop (`train`) and its named steps (`state`, `skips`, `record`), the
optimizer and update step (`optimization`), the budget and stop rule (`convergence`),
checkpoints (`checkpoint`), DDP (`distributed`) and compile / channels-last (`speedups`)."""
