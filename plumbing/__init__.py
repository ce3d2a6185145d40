"""What serves the method, not the method itself: skip this folder on a first read.

Scripts here run from the repo root as modules: `python -m plumbing.bench decode`.
"""
