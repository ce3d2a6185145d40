"""storage.py: a write is whole or absent, a torn JSONL line is cut on resume, bad lines named."""
import json
import os

import pytest

import storage


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
