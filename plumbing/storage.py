"""How this project reads and writes files: whole or not at all, and JSON lines naming their line.

Every file a long job writes (checkpoints, results, summaries, tokenizers) goes through
`atomic_open`: the bytes go to a temporary file beside the target, are flushed to disk (fsync), and
only then replace the target in one rename. A crash or a kill at any moment leaves the old file or
the new one, never half of one. Results that grow one problem at a time are appended a whole line at
a time (`append_jsonl`), and `done_keys` cuts off a line that a crash left torn, so a run can
resume. Data-parallel replicas append to part files of their own, merged at the end
(`merge_parts`). A resumable run keeps what made its results in a run.json (`check_run`): resuming
another run into the same place is refused instead of mixing the two.

Every error names its file: a bad JSON line or a byte that is not UTF-8 by line, a failed write (a
full disk) by the path being written.

This module imports nothing of the project: every other module may use it.
"""
import contextlib
import hashlib
import json
import os
import re


@contextlib.contextmanager
def naming_errors(path):
    """An OSError of a write names no file ("[Errno 28] No space left on device"): raised in this
    block, it names `path`."""
    try:
        yield
    except OSError as e:
        if e.errno is None or e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, os.fspath(path)) from e


def decode_utf8(data: bytes, path, first_line=1) -> str:
    """`data` (from line `first_line` of `path` on) as text; a byte that is not UTF-8 is an error
    naming file and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column "
                         f"{column})") from None


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """open() for writing that replaces `path` only once the `with` block finished without error;
    missing parent folders are made."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    encoding = None if "b" in mode else "utf-8"
    try:
        with naming_errors(path), open(tmp, mode, encoding=encoding) as f:
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
    """One JSON document; a syntax error or a byte that is not UTF-8 names the file and line."""
    with open(path, "rb") as f:
        text = decode_utf8(f.read(), path)
    try:
        return json.loads(text)
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
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, n)
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
    """Append one record to an open file as one whole line, on disk before this returns (a failed
    write names the file; the torn line it may leave is cut off by done_keys)."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with naming_errors(f.name):
        f.flush()   # what was written before, first
        while data:  # past Python's buffer: a failed write leaves nothing there to fail again
            data = data[os.write(f.fileno(), data):]
        os.fsync(f.fileno())


def done_keys(path, key="id"):
    """The `key` of every record already in a results JSONL or in the part files of its
    data-parallel replicas (to resume a run). A torn last line (the run died mid-write) is cut off
    first; any other bad line is an error naming file and line."""
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
        for n, record in numbered_jsonl(file):   # lines split at "\n" only (not at U+2028)
            if not isinstance(record, dict) or key not in record:
                raise ValueError(f"{file}:{n}: no field {key!r}")
            keys.add(record[key])
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


# What a run is. A resumable run (eval.py run, infer.py --file) keeps beside its results a run.json
# naming what made them: the model's files, the questions' file, the generation settings, the system
# text. Resuming must be the same run, or one summary would mix two runs' answers.
def file_digest(path) -> str:
    """The first 16 hex digits of the file's SHA-256: enough to tell two files apart."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# the files checkpoint.py and tokenizer.py read from a checkpoint folder (both layouts)
CHECKPOINT_FILE = re.compile(r"(config|params|added_tokens|tokenizer_config|special_tokens_map)"
                             r"\.json|tokenizer\.model|.*\.index\.json|.*\.(safetensors|bin|pth)")


def checkpoint_fingerprint(folder, hash_up_to=64 << 20) -> dict:
    """{file name: digest} of a checkpoint folder's files, cheaply: configs, weight index, tokenizer
    (and a small model's weights) by content; a file over 64 MiB (a real model's weight shard) by
    its size, as hashing 14 GB would take a minute at every start."""
    out = {}
    for name in sorted(os.listdir(folder)):
        file = os.path.join(folder, name)
        if CHECKPOINT_FILE.fullmatch(name) and os.path.isfile(file):
            size = os.path.getsize(file)
            out[name] = file_digest(file) if size <= hash_up_to else f"{size} bytes"
    return out


def _flat(d, prefix=""):
    """{"generation": {"seed": 0}} -> {"generation.seed": 0}"""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _differences(old: dict, new: dict) -> list[str]:
    """'field: old vs new' for each field that differs (a nested one as generation.seed)."""
    old, new = _flat(old), _flat(new)
    missing = object()

    def shown(value):
        return "missing" if value is missing else json.dumps(value, ensure_ascii=False)
    return [f"{k}: {shown(old.get(k, missing))} vs {shown(new.get(k, missing))}"
            for k in {**old, **new} if old.get(k, missing) != new.get(k, missing)]


def check_run(path, identity, results, force_new=False, write=True):
    """Resume only the same run. path: the run's run.json; identity: a JSON dict of what makes the
    run; results: the files the run writes (and the part files of each). Results of another run
    (run.json differs, or is missing) are refused with one line naming each field that differs,
    old vs new. force_new: delete the results there (whichever run's), start over. Then run.json
    holds `identity`. The results are deleted before run.json is written: a crash in between
    leaves old results under the old run.json (refused again), never under the new one.
    write=False only checks (every replica of a data-parallel run but the first)."""
    identity = json.loads(json.dumps(identity))          # as it reads back: tuples are lists
    files = [f for r in results for f in [r, *(part_files(r) if r.endswith(".jsonl") else [])]
             if os.path.exists(f)]
    old = read_json(path) if os.path.exists(path) else None
    if files and old != identity and not force_new:
        if not isinstance(old, dict):
            raise ValueError(f"{files[0]}: results of an unknown run (no {path}); "
                             "--force-new deletes them and starts over")
        raise ValueError(f"{path}: results of another run are here "
                         f"({'; '.join(_differences(old, identity))}); "
                         "--force-new deletes them and starts over")
    if not write:
        return
    if force_new:
        for f in files:
            os.remove(f)
    if old != identity:
        write_json(path, identity)
