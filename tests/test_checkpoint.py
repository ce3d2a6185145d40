"""checkpoint.py on its own: one tensor-parallel rank's rows or columns, read in place from each
kind of file, equal the whole tensor's; pytorch_model.bin reads as the safetensors it was made from;
a cut-off file is an error. (The whole-model checks, logits against Hugging Face's, save / load
round trips and the error messages for bad configs, are in test_model.py.)"""
import dataclasses
import shutil

import pytest
import torch

from plumbing.checkpoint import hf_name, open_checkpoint
from model import ModelArgs, Transformer
from test_model import FIX, split_meta


def shapes(ckpt):
    with torch.device("meta"):
        model = Transformer(ModelArgs(**ckpt.fields))
    return {key: list(t.shape) for key, t in model.state_dict().items()}


def read_all(path, rank=0, world=1):
    ckpt = open_checkpoint(path, rank, world)
    return dict(ckpt.tensors(shapes(ckpt)))


def split_axis(key):
    """Megatron's split, written out here as in test_model.split_meta: wo, w2 and the embedding by
    columns, the other matrices by rows, the norms not at all."""
    if key.endswith("norm.weight"):
        return None
    return 1 if any(part in key for part in ("wo.", "w2.", "tok_embeddings.")) else 0


def write_bin(src, dst):
    """The HF checkpoint src as pytorch_model.bin (older HF layout), through torch.save."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    torch.save({hf_name(key): t for key, t in read_all(src).items()}, dst / "pytorch_model.bin")


LAYOUTS = ["hf", "hf-bin", "hf-2-files-bf16", "meta-1-shard", "meta-2-shards", "meta-4-shards"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rank_slices_equal_the_whole_tensor_narrowed(tmp_path, layout):
    """Over 2 ranks: Meta's 1 shard is cut in two, its 2 shards are one per rank, its 4 are two per
    rank."""
    if layout == "hf":
        path = FIX / "llama2-mha" / "hf"
    elif layout == "hf-bin":
        path = tmp_path / "bin"
        write_bin(FIX / "llama2-mha" / "hf", path)
    elif layout == "hf-2-files-bf16":
        path = FIX / "codellama-gqa" / "hf"
    elif layout == "meta-1-shard":
        path = FIX / "codellama-gqa" / "meta"
    elif layout == "meta-2-shards":
        path = tmp_path / "mp"
        split_meta(FIX / "codellama-gqa" / "meta", path, 2)
    else:
        path = tmp_path / "mp"
        split_meta(FIX / "llama2-mha" / "meta", path, 4)
    whole = read_all(path)
    if layout == "hf-bin":   # the same tensors as the safetensors file it was written from
        reference = read_all(FIX / "llama2-mha" / "hf")
        assert whole.keys() == reference.keys()
        assert all(torch.equal(t, reference[key]) for key, t in whole.items())
    for rank in range(2):
        part = read_all(path, rank, 2)
        assert part.keys() == whole.keys()
        for key, t in whole.items():
            axis = split_axis(key)
            if axis is None:
                assert torch.equal(part[key], t), key
            else:
                n = t.shape[axis] // 2
                assert torch.equal(part[key], t.narrow(axis, rank * n, n)), key


def test_truncated_safetensors_is_an_error_naming_the_tensor(tmp_path):
    dst = tmp_path / "cut"
    shutil.copytree(FIX / "llama2-mha" / "hf", dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated data for tensor"):
        read_all(dst)
    (dst / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        read_all(dst)


def test_stored_dtype_and_config_without_weights(tmp_path):
    """stored_dtype reads the dtype from the safetensors header or a memory-mapped shard;
    read_config needs only config.json (no weights: what train.py --plan sizes from)."""
    from plumbing.checkpoint import read_config, stored_dtype
    for name, dtype in [("llama2-mha", torch.float32), ("codellama-gqa", torch.bfloat16)]:
        for layout in ("hf", "meta"):
            assert stored_dtype(FIX / name / layout) == dtype
    shutil.copy(FIX / "codellama-gqa" / "hf" / "config.json", tmp_path)
    fields = open_checkpoint(FIX / "codellama-gqa" / "hf").fields
    assert read_config(tmp_path) == read_config(tmp_path / "config.json") == fields
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_config(tmp_path / "nothere")


def test_write_hf_stream_takes_one_tensor_at_a_time(tmp_path):
    """write_hf_stream lays out shards from the specs, then writes each tensor as the stream yields
    it (the stream is consumed in step with the writing: never drawn ahead); the files read back
    as write_hf's would, and a stream out of order is an error naming the file."""
    from plumbing.checkpoint import write_hf, write_hf_stream
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=50))
    state = model.state_dict()
    specs = {key: (list(t.shape), t.dtype) for key, t in state.items()}
    drawn = []

    def stream():
        for key, t in state.items():
            drawn.append(key)
            yield key, t.clone()
    write_hf_stream(tmp_path / "a", dataclasses.asdict(model.args), specs, stream(),
                    max_shard_bytes=20000)
    write_hf(tmp_path / "b", dataclasses.asdict(model.args), state, max_shard_bytes=20000)
    assert drawn == list(state)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(files) > 3
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    backwards = reversed([(k, t) for k, t in state.items()])
    with pytest.raises(ValueError, match="model-00001-of"):
        write_hf_stream(tmp_path / "c", dataclasses.asdict(model.args), specs, backwards,
                        max_shard_bytes=20000)
