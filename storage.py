"""How this project reads and writes files: whole or not at all, and JSON lines naming their line.

Every file a long job writes (checkpoints, results, summaries, tokenizers) goes through
`atomic_open`: the bytes go to a temporary file beside the target, are flushed to disk (fsync), and
only then replace the target in one rename. A crash or a kill at any moment leaves the old file or
the new one, never half of one. Results that grow one problem at a time are appended a whole line at
a time (`append_jsonl`), and `done_keys` cuts off a line that a crash left torn, so a run can
resume. Data-parallel replicas append to part files of their own, merged at the end
(`merge_parts`).

This module imports nothing of the project: every other module may use it.
"""
import contextlib
import json
import os
import re


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """open() for writing that replaces `path` only once the `with` block finished without error;
    missing parent folders are made."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)  # still there only if the block raised


def atomic_write(path, data):
    """Write str or bytes to `path` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path):
    """One JSON document; a syntax error names the file and line."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def write_jsonl(path, records):
    """A whole JSONL file, atomically: one JSON object per line."""
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def numbered_jsonl(path):
    """(line number, record) for each record of a JSONL file (blank lines skipped), for readers that
    name the line of a record they reject; a bad line is an error naming file and line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            yield n, record


def read_jsonl(path):
    """The records of a JSONL file (blank lines skipped); a bad line is an error naming file and
    line."""
    return [record for _, record in numbered_jsonl(path)]


def append_jsonl(f, record):
    """Append one record to an open file as one whole line, on disk before this returns."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def done_keys(path, key="id"):
    """The `key` of every record already in a results JSONL or in the part files of its
    data-parallel replicas (to resume a run). A torn last line (the run died mid-write) is cut off
    first."""
    keys = set()
    for file in [path, *part_files(path)]:
        if not os.path.exists(file):
            continue
        with open(file, "rb") as f:
            data = f.read()
        keep = data[:data.rfind(b"\n") + 1]
        if len(keep) != len(data):
            with open(file, "r+b") as f:
                f.truncate(len(keep))
        lines = keep.decode("utf-8").splitlines()
        keys |= {json.loads(line)[key] for line in lines if line.strip()}
    return keys


# Data parallelism: each replica appends to its own part file (one writer per file); when all are
# done, one of them folds the parts into the results file.
def part_path(path, replica):
    """Where replica `replica` appends its records (results.jsonl -> results.part3.jsonl)."""
    return re.sub(r"(\.jsonl)?$", f".part{replica}.jsonl", os.fspath(path), count=1)


def part_files(path):
    """The part files of `path` that exist, sorted."""
    folder, stem = os.path.split(re.sub(r"(\.jsonl)?$", "", os.fspath(path), count=1))
    pattern = re.compile(re.escape(stem) + r"\.part\d+\.jsonl")
    names = os.listdir(folder or ".") if os.path.isdir(folder or ".") else []
    return sorted(os.path.join(folder, name) for name in names if pattern.fullmatch(name))


def merge_parts(path, key, order):
    """Fold the replicas' part files into `path` (atomically), sorted by `order` (the keys in their
    order), then delete the parts. A record already in `path` (a merge cut short before the parts
    were deleted) is not added twice; one key in two parts is an error: replicas never share a
    problem."""
    parts = part_files(path)
    if not parts:
        return
    records = read_jsonl(path) if os.path.exists(path) else []
    merged = {r[key] for r in records}
    seen = {}
    for part in parts:
        for r in read_jsonl(part):
            if r[key] in seen:
                raise ValueError(f"{part}: {key} {r[key]!r} is also in {seen[r[key]]}")
            seen[r[key]] = part
            if r[key] not in merged:
                records.append(r)
    place = {k: i for i, k in enumerate(order)}
    records.sort(key=lambda r: place.get(r[key], len(place)))
    write_jsonl(path, records)
    for part in parts:
        os.remove(part)
