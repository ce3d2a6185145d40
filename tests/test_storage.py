"""storage.py: a write is whole or absent, a torn JSONL line is cut on resume, bad lines are named."""
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
