"""What serves the method, not the method itself: skip this folder on a first read.

Checkpoint formats (checkpoint), multi-GPU plumbing (parallel), atomic files and run records
(storage), the authors' Jupyter display rebuilt by hand (notebook, pretty), the sandbox's
processes and isolation (worker, isolation), the authors' own grader (authors_grader), LaTeX
reading (latex_sympy), grader.py's normalisation rules (normalisation) and its reading of tuples,
sets and relations (answer_forms), HTML views (html_views), the replay of released solutions
(replay), the HTTP client for a served model (server_client) and the benchmarks (bench).
Scripts here run from the repo root as modules: `python -m plumbing.bench decode`.
"""
