"""What serves the method, not the method itself: skip this folder on a first read.

Checkpoint formats (checkpoint), multi-GPU plumbing (parallel), atomic files and run records
(storage), the authors' Jupyter display rebuilt by hand (notebook, pretty), the authors' own grader
(authors_grader) and LaTeX reading (latex_sympy), HTML views (html_views) and the tiny run's report
(tiny_report), the replay of released solutions (replay), the HTTP client for a served model
(server_client), the data recipe's teacher behind a server (teacher) and the benchmarks (bench).
Scripts here run from the repo root as modules: `python -m plumbing.bench decode`.
"""
