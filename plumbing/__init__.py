"""What serves the method, not the method itself: skip this folder on a first read.

Checkpoint formats (checkpoint), multi-GPU plumbing (parallel), atomic files and run records
(storage), the authors' Jupyter display rebuilt by hand (notebook, pretty), the authors' own grader
(authors_grader), LaTeX reading (latex_sympy), grader.py's normalisation rules (normalisation) and
its reading of tuples, sets and relations (answer_forms), HTML views (html_views), the replay of
released solutions (replay), the HTTP client for a served model (server_client) and the inference
loop driven through it (serving), infer.py's terminal view and question files (terminal,
question_files), eval.py's result files (result_files) and the benchmarks (bench).
Scripts here run from the repo root as modules: `python -m plumbing.bench decode`.
"""
