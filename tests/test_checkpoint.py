"""checkpoint.py on its own: one tensor-parallel rank's rows or columns, read in place from each
kind of file, equal the whole tensor's; pytorch_model.bin reads as the safetensors it was made from;
a cut-off file is an error. (The whole-model checks, logits against Hugging Face's, save / load
round trips and the error messages for bad configs, are in test_model.py.)"""
import shutil

import pytest
import torch

from checkpoint import hf_name, open_checkpoint
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
