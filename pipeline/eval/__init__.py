"""Evaluation sweeps: task specs (`tasks`), pure metrics (`metrics`), scoring of a cell's output (`score`),
the sweep runner over the caption pipeline (`sweep`) and the results/trend report (`report`).
`metrics` never imports ray; `jobs/eval.py` is the entry point."""
