"""How this project reads and writes its files: whole or not at all, and JSON lines that name their line.

Every file a long job writes (checkpoints, results, summaries, tokenizers) goes through `atomic_open`:
the bytes go to a temporary file beside the target, are flushed to disk (fsync), and only then replace
the target in one rename. A crash or a kill at any moment leaves the old file or the new one, never
half of one. Results that grow one problem at a time are appended a whole line at a time
(`append_jsonl`), and `done_keys` cuts off a line that a crash left torn, so a run can resume.

This module imports nothing of the project: every other module may use it.
"""
import contextlib
import json
import os


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """open() for writing that replaces `path` only once the `with` block finished without error."""
    path = os.fspath(path)
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


def read_jsonl(path):
    """The records of a JSONL file (blank lines skipped); a bad line is an error naming file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return out


def append_jsonl(f, record):
    """Append one record to an open file as one whole line, on disk before this returns."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def done_keys(path, key="id"):
    """The `key` of every record already in a results JSONL (to resume a run). A torn last line (the
    run died mid-write) is cut off first."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    keep = data[:data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return {json.loads(line)[key] for line in keep.decode("utf-8").splitlines() if line.strip()}
