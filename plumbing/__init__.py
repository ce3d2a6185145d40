"""What serves the method, not the method itself: skip this folder on a first read.

Files and formats
  storage            files written whole (atomic), JSONL read naming file and line, run records
  checkpoint         Meta and Hugging Face checkpoint layouts, read and written by hand
  train_checkpoint   train.py's sharded checkpoints, resume fingerprint and export
  train_log          train.py's config.json, log.jsonl, progress line and loss curve
  question_files     infer.py --file: questions read and checked, answers resumable
  result_files       eval.py's result parts, summary tables and report rows
Running at scale
  parallel           tensor parallelism, replicas, process groups and their timeouts
  memory_plan        what a training run needs per GPU, computed on the meta device
  train_checks       train.py's flags checked against each other and the world size
  cli                a config dataclass as command-line flags
  cpu_kernels        faster CPU kernels for model.py's decode step (same results, other kernels)
The sandbox underneath
  worker             sandbox.py's processes: a fork server, one worker a problem, the wire protocol
  isolation          what model-written code may see and do: its own root, no privileges, cleanup
What a cell shows, and grading details
  notebook, pretty   the authors' Jupyter display (IPython's) rebuilt by hand
  normalisation      grader.py's table of named rules that clean an answer before comparing
  answer_forms       tuples, sets, matrices, relations and intervals read as what they mean
  authors_grader     the authors' own grader, rewritten (the paper's protocol)
  latex_sympy        LaTeX read as SymPy under a time limit
Looking, checking, measuring, serving
  terminal           infer.py's live view of a solution (blocks coloured as they stream)
  html_views         the pages: a conversation's loss mask, loss curves, reports
  replay             the authors' released solutions rerun through our sandbox
  server_client      HTTP to an OpenAI-compatible server (a teacher, a served checkpoint)
  serving            infer.py's loop driven through such a server instead of a local model
  teacher            recipe.py's teacher behind a server: tool calls, resumable runs, its flags
  tiny_report        tiny_run.py's folder, stage times, tables (summary.md) and page (report.html)
  bench              the benchmarks behind BENCHMARKS.md

Scripts here run from the repo root as modules: `python -m plumbing.bench decode`.
"""
