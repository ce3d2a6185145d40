"""storage.py: a write is whole or absent, a torn JSONL line is cut on resume, bad lines named, a
failed write names its path, a run resumes only into its own results."""
import errno
import hashlib
import json
import os

import pytest

from plumbing import storage


def test_atomic_open_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    storage.atomic_write(path, "old\n")
    with pytest.raises(RuntimeError):
        with storage.atomic_open(path) as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"           # the old file, untouched
    assert os.listdir(tmp_path) == ["out.txt"]   # and no temporary file left behind
    storage.atomic_write(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"
    storage.atomic_write(tmp_path / "a" / "b.txt", "made")   # missing folders are made
    assert (tmp_path / "a" / "b.txt").read_text() == "made"


def test_jsonl_round_trip_and_errors(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = [{"id": "a", "q": "ünïcode <&>"}, {"id": "b", "n": 2}]
    storage.write_jsonl(path, recs)
    assert storage.read_jsonl(path) == recs
    path.write_text('{"id": "a"}\n\n{"id": \n')
    with pytest.raises(ValueError, match=r"r\.jsonl:3: invalid JSON"):
        storage.read_jsonl(path)
    (tmp_path / "c.json").write_text('{\n  "a": 1,\n}\n')
    with pytest.raises(ValueError, match=r"c\.json:3: invalid JSON"):
        storage.read_json(tmp_path / "c.json")


def test_done_keys_cuts_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    assert storage.done_keys(path) == set()
    with open(path, "w") as f:
        storage.append_jsonl(f, {"id": 1})
        storage.append_jsonl(f, {"id": 2})
        f.write('{"id": 3, "solution": "cut by a cra')   # the process died here
    assert storage.done_keys(path) == {1, 2}
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'   # ready to append to
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == [1, 2]


def test_replicas_part_files_are_resumed_and_merged(tmp_path):
    """Data parallelism: each replica appends to its own part file; done_keys sees them all (a torn
    line cut off), merge_parts folds them into the results file in the given order, once each."""
    path = tmp_path / "results.jsonl"
    assert storage.part_path(str(path), 3) == str(tmp_path / "results.part3.jsonl")
    storage.write_jsonl(path, [{"id": "b"}])                 # a merge cut short: "b" already in
    storage.write_jsonl(storage.part_path(path, 0), [{"id": "c"}, {"id": "b"}])
    with open(storage.part_path(path, 1), "w") as f:
        storage.append_jsonl(f, {"id": "a"})
        f.write('{"id": "d", "solution": "cut by a cra')   # replica 1 died here
    assert storage.done_keys(path) == {"a", "b", "c"}
    storage.merge_parts(path, "id", ["a", "b", "c", "d"])
    assert storage.read_jsonl(path) == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert sorted(os.listdir(tmp_path)) == ["results.jsonl"]   # the parts are gone
    storage.write_jsonl(storage.part_path(path, 0), [{"id": "e"}])
    storage.write_jsonl(storage.part_path(path, 1), [{"id": "e"}])
    with pytest.raises(ValueError, match="id 'e' is also in"):  # replicas never share a problem
        storage.merge_parts(path, "id", [])


def test_a_torn_line_inside_a_results_file_is_named(tmp_path):
    """Only the last line of a results file can be torn by a crash; one inside it (or a record
    without the key) is an error naming file and line, not a bare JSONDecodeError or KeyError."""
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "solution": "cut\n{"id": 3}\n')
    with pytest.raises(ValueError, match=r"results\.jsonl:2: invalid JSON"):
        storage.done_keys(path)
    path.write_text('{"id": 1}\n\n{"index": 3}\n')
    with pytest.raises(ValueError, match=r"results\.jsonl:3: no field 'id'"):
        storage.done_keys(path)
    part = storage.part_path(path, 1)   # a replica's part file is named too
    path.write_text('{"id": 1}\n')
    with open(part, "w") as f:
        f.write('{"id": 2}\n[\n{"id": 4}\n')
    with pytest.raises(ValueError, match=r"results\.part1\.jsonl:2: invalid JSON"):
        storage.done_keys(path)


def test_a_line_separator_inside_a_record_is_not_a_line_break(tmp_path):
    """JSON written with ensure_ascii=False keeps U+2028 in a string as it is: still one line."""
    path = tmp_path / "results.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        storage.append_jsonl(f, {"id": 1, "solution": "a\u2028b\u0085c"})
        storage.append_jsonl(f, {"id": 2})
    assert storage.done_keys(path) == {1, 2}
    assert storage.read_jsonl(path)[0]["solution"] == "a\u2028b\u0085c"


def test_a_byte_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2, "q": "caf\xe9"}\n')   # Latin-1, not UTF-8
    for read in (storage.read_jsonl, storage.done_keys):
        with pytest.raises(ValueError, match=r"r\.jsonl:2: not UTF-8 \(byte 0xe9 at column 20\)"):
            read(path)
    (tmp_path / "c.json").write_bytes(b'{\n  "a": "\xff"\n}\n')
    with pytest.raises(ValueError, match=r"c\.json:2: not UTF-8 \(byte 0xff at column 9\)"):
        storage.read_json(tmp_path / "c.json")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_names_the_path(tmp_path, monkeypatch):
    """Writing to /dev/full fails as on a full disk (ENOSPC), whose error names no file by itself."""
    with open("/dev/full", "a", encoding="utf-8") as f:   # closing it does not fail again
        with pytest.raises(OSError) as e:
            storage.append_jsonl(f, {"id": 1})
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"
    target = tmp_path / "summary.json"
    real_open = open

    def full_disk(file, mode="r", **kwargs):   # every write lands on /dev/full
        return real_open("/dev/full" if set(mode) & set("wa") else file, mode, **kwargs)
    monkeypatch.setattr(storage, "open", full_disk, raising=False)
    with pytest.raises(OSError) as e:
        storage.write_json(target, {"big": "x" * 100_000})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert str(target) in str(e.value) and os.listdir(tmp_path) == []   # nothing half-written


def test_check_run_resumes_only_the_same_run(tmp_path):
    run_json = str(tmp_path / "run.json")
    results = str(tmp_path / "results.jsonl")
    summary = str(tmp_path / "summary.json")
    first = {"model": "/m/a", "generation": {"seed": 0, "top_p": 1.0}, "system": None}
    storage.check_run(run_json, first, [results, summary])          # a new run: recorded
    assert storage.read_json(run_json) == first
    storage.write_jsonl(results, [{"id": 1}])
    storage.write_jsonl(storage.part_path(results, 1), [{"id": 2}])
    storage.check_run(run_json, dict(first), [results, summary])    # the same run resumes
    other = {"model": "/m/b", "generation": {"seed": 1, "top_p": 1.0}, "extra": [1, 2]}
    with pytest.raises(ValueError) as e:
        storage.check_run(run_json, other, [results, summary])
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{run_json}: results of another run")
    for difference in ['model: "/m/a" vs "/m/b"', "generation.seed: 0 vs 1",
                       "system: null vs missing", "extra: missing vs [1, 2]"]:
        assert difference in message
    assert "top_p" not in message and "--force-new" in message
    storage.check_run(run_json, other, [results, summary], force_new=True, write=False)
    assert storage.read_json(run_json) == first and os.path.exists(results)   # checked only
    storage.check_run(run_json, other, [results, summary], force_new=True)
    assert sorted(os.listdir(tmp_path)) == ["run.json"]                 # the parts went too
    assert storage.read_json(run_json) == other
    storage.check_run(run_json, first, [results, summary])   # no results: nothing to mix
    assert storage.read_json(run_json) == first
    os.remove(run_json)
    storage.write_json(summary, {"n": 1})
    with pytest.raises(ValueError, match=r"summary\.json: results of an unknown run \(no "):
        storage.check_run(run_json, first, [results, summary])


def test_checkpoint_fingerprint(tmp_path):
    """A checkpoint's own files by content (a big weight file by size); other files are not its."""
    for name, data in [("config.json", b"{}"), ("tokenizer.model", b"tok"),
                       ("model-00001-of-00002.safetensors", b"w" * 100),
                       ("model.safetensors.index.json", b"{}"), ("notes.txt", b"mine")]:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "eval").mkdir()
    got = storage.checkpoint_fingerprint(tmp_path, hash_up_to=50)
    assert got == {"config.json": hashlib.sha256(b"{}").hexdigest()[:16],
                   "model-00001-of-00002.safetensors": "100 bytes",
                   "model.safetensors.index.json": hashlib.sha256(b"{}").hexdigest()[:16],
                   "tokenizer.model": hashlib.sha256(b"tok").hexdigest()[:16]}
