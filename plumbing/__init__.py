"""What serves the method, not the method itself: skip this folder on a first read.

Checkpoint formats (checkpoint), multi-GPU plumbing (parallel), atomic files and run records
(storage), the authors' Jupyter display rebuilt by hand (notebook, pretty), the authors' own grader
(authors_grader) and LaTeX reading (latex_sympy), HTML views (html_views), the replay of released
solutions (replay), the HTTP client for a served model (server_client) and the benchmarks (bench).
Around train.py: its flags checked (train_checks), its memory plan (memory_plan), its checkpoints
(train_checkpoint) and its log (train_log); a config dataclass as flags (cli).
Scripts here run from the repo root as modules: `python -m plumbing.bench decode`.
"""
