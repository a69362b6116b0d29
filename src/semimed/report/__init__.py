"""The report stage's library: per-task tables (`tables`, `task`), the warnings in front of the
numbers (`flags`), figures (`figures`), DVC plot records (`records`) and paired tests (`paired`)."""
