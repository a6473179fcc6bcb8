"""Phase 2 jobs and evaluation: importers of public outcome tables, the Ray Train training job, the
evaluation metrics/report and the cross-validation harness, and the ``expert-router`` CLI.
Phase 1 (the Ray Data generation job) comes next."""
