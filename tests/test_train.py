"""train.py on CPU with a tiny model: loss falls, execution results get no gradient, the
global-batch loss normalisation, FSDP (2 processes, gloo) = 1 process, sharded checkpoints (kill +
resume with 1 or 2 processes = uninterrupted; a kill mid-save leaves the previous one; host memory
per rank during a save), the export (2 processes = 1) reloads, resume refuses another run, the
memory plan (against measured peak memory on the CPU; 70B on 32 GPUs), rotary tables in fp32."""
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from plumbing import checkpoint, memory_plan, storage, train_checkpoint, train_log
import lce_data
import train
from model import ModelArgs, Transformer
from tokenizer import Tokenizer, train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(i, a, b, exec_text=None, text=None):
    """A hand-made LCE solution: text, code, execution, text."""
    return {"id": f"t{i}", "messages": [
        {"role": "system", "content": [{"type": "text", "content": "Solve the problem."}]},
        {"role": "user", "content": [{"type": "text", "content": f"What is {a} times {b}?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "content": text or "We multiply the two numbers."},
            {"type": "code", "content": f"print({a} * {b})"},
            {"type": "execution", "content": exec_text or str(a * b)},
            {"type": "text", "content": f"So the answer is \\boxed{{{a * b}}}."}]}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """14 records (so each epoch ends with a partial global batch of 8) and a 300-piece
    SentencePiece model."""
    d = tmp_path_factory.mktemp("train")
    r = random.Random(0)
    recs = [record(i, r.randint(2, 99), r.randint(2, 99)) for i in range(14)]
    with open(d / "data.jsonl", "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in recs)
    with open(d / "text.txt", "w") as f:
        f.writelines(lce_data.serialize(x) + "\n" for x in recs * 3)
    tok = train_sentencepiece(str(d / "text.txt"), str(d / "tok"), 300)
    return d, tok


def config(d, tok, out, **kw):
    base = dict(data=str(d / "data.jsonl"), out=str(d / out), tokenizer=tok, dim=32, n_layers=2,
                n_heads=4, n_kv_heads=2, hidden_dim=64, epochs=6, lr=1e-2, warmup_steps=2,
                batch_size=8, micro_batch_size=2, seq_len=256, save_every=4, seed=0, quiet=True)
    base.update(kw)
    return train.TrainConfig(**base)


def log_losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(ln) for ln in f]


def cli(cfg):
    """The train.py command line for a TrainConfig."""
    return [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
            for k, v in dataclasses.asdict(cfg).items() if v is not None and v is not False]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run_and_kill(launcher, args, after_step, check=False):
    """Run train.py with `args` under `launcher` (python, or torchrun), its rank 0 SIGKILLed at a
    fixed point: right after it logs step `after_step` (an int), or ("save", K) in the middle of
    step K's checkpoint (its shards written, not yet published): a real crash, no timing race.
    ("rss", 0): no kill; each rank records its peak memory during every save (rss.rankR.json). The
    script is this file (see its end): train.py with a hook. Returns (returncode, stderr)."""
    mode = after_step if isinstance(after_step, int) else ":".join(map(str, after_step))
    cmd = [*launcher, __file__, str(mode), *args]
    env = dict(os.environ, PYTHONPATH=ROOT)         # (torchrun sets OMP_NUM_THREADS=1)
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        _, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.terminate()   # not p.kill(): on SIGTERM torchrun stops its workers (each in its session)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        raise
    if check:
        assert p.returncode == 0, err[-3000:]
    return p.returncode, err


def checkpoints(out):
    """{step: folder} of the complete checkpoints in OUT."""
    return {json.loads((p / "done.json").read_text())["step"]: p
            for p in train_checkpoint.complete_checkpoints(Path(out) / "checkpoints")}


def load_weights(folder, model):
    """The model weights of a training checkpoint into a plain model, read with DCP directly."""
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=folder, no_dist=True)
    model.load_state_dict(state["model"])
    return model


@pytest.fixture(scope="module")
def full_run(tiny):
    d, tok = tiny
    cfg = config(d, tok, "full")
    return cfg, train.train(cfg)


def test_loss_goes_down_and_log(full_run):
    cfg, res = full_run
    log = log_losses(cfg.out)
    assert [r["step"] for r in log] == list(range(1, 13))       # 14 rows / 8 = 2 steps x 6 epochs
    assert res["losses"] == pytest.approx([r["loss"] for r in log], abs=1e-6)
    vocab = Tokenizer(cfg.tokenizer).vocab_size
    assert log[0]["loss"] == pytest.approx(math.log(vocab), rel=0.15)   # ~uniform over the vocab
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert log[-1]["loss"] < min(r["loss"] for r in log[:-1])
    # warmup over 2 steps to 1e-2, then cosine towards 0 over the other 10 (step s uses progress
    # (s-2)/10)
    assert [r["lr"] for r in log[:3]] == pytest.approx([5e-3, 1e-2, 1e-2])
    assert log[-1]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in log)
    assert os.path.isfile(os.path.join(cfg.out, "summary.json"))


def _grads(model, rows, pad_id, mbs):
    model.zero_grad(set_to_none=True)
    batches = [lce_data.pad_batch(rows[i:i + mbs], pad_id) for i in range(0, len(rows), mbs)]
    train.forward_backward(model, batches)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                                 vocab_size=tok.vocab_size, max_seq_len=256))


def test_execution_tokens_get_no_gradient(tiny):
    """§3: execution output is the interpreter's, not the model's. With the execution block last in
    the (truncated) sequence, nothing attends to it, so changing its content must leave every
    gradient unchanged; changing a text block of the same length must change them, and so must the
    execution block when --train-on-execution puts loss on it (the ablation)."""
    tok = Tokenizer(str(tiny[1]))
    model = _tiny_model(tok)

    def encode(rec, on_exec=False):
        full, _ = lce_data.encode_example(rec, tok, 10 ** 6, train_on_execution=on_exec)
        # cut after the execution content (drops its <|endofblock|>, the final text and
        # <|endofmessage|>)
        cut = len(full) - len(tok.encode("<|endofblock|><|text|>So the answer is \\boxed{1554}."
                                         "<|endofblock|><|endofmessage|>"))
        return lce_data.encode_example(rec, tok, cut, train_on_execution=on_exec)

    base = record(0, 37, 42, text="Step 1: we multiply.")
    same_len_exec = record(0, 37, 42, text="Step 1: we multiply.", exec_text="9876")
    new_text = record(0, 37, 42, text="Step 7: we multiply.")    # digits are single pieces
    a, b, c = encode(base), encode(same_len_exec), encode(new_text)
    assert len(a[0]) == len(b[0]) == len(c[0]) and a[0] != b[0] and a[0] != c[0]
    assert a[0][-4:] == tok.encode("1554")[-4:] and b[0][-4:] == tok.encode("9876")[-4:]
    assert a[1][-5:] == [-100] * 5                                 # execution block: no loss
    g_a, g_b, g_c = (_grads(model, [x], tok.pad_id, 1) for x in (a, b, c))
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], rtol=1e-6, atol=1e-8, msg=n)
    assert max((g_a[n] - g_c[n]).abs().max() for n in g_a) > 1e-4
    e_a, e_b = (_grads(model, [encode(r, on_exec=True)], tok.pad_id, 1)
                for r in (base, same_len_exec))
    assert max((e_a[n] - e_b[n]).abs().max() for n in e_a) > 1e-4


def test_loss_normalised_over_global_batch(tiny):
    """The gradient is that of one token-mean over the whole batch, however it is split into
    micro-batches (per-micro-batch averaging would weight a short example's tokens more). Reference:
    one big batch and F.cross_entropy's own mean over the non-ignored tokens. Activation
    checkpointing changes nothing."""
    d, tok_path = tiny
    tok = Tokenizer(str(tok_path))
    recs = lce_data.read_jsonl_records(str(d / "data.jsonl"))[:4]
    recs[0]["messages"][2]["content"][0]["content"] = "A much longer explanation comes first. " * 4
    rows = [lce_data.encode_example(r, tok, 256) for r in recs]
    model = _tiny_model(tok)
    model.zero_grad()
    batch = lce_data.pad_batch(rows, tok.pad_id)
    logits = model(batch["input_ids"], positions=batch["positions"])
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                      batch["labels"][:, 1:].flatten()).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    for mbs in (1, 3):
        got = _grads(model, rows, tok.pad_id, mbs)
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7)
    train.apply_grad_checkpoint(model)
    got = _grads(model, rows, tok.pad_id, 2)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7)


def test_packed_rows_match_padded(tiny):
    """--pack puts several examples in one row with document-masked attention: same loss and
    gradient."""
    d, tok_path = tiny
    tok = Tokenizer(str(tok_path))
    records = lce_data.read_jsonl_records(str(d / "data.jsonl"))[:4]
    rows = [lce_data.encode_example(r, tok, 256) for r in records]
    model = _tiny_model(tok)
    ref = _grads(model, rows, tok.pad_id, 4)
    model.zero_grad(set_to_none=True)
    packed = lce_data.pack_examples(rows, sum(len(r[0]) for r in rows[:3]) + 5, tok.pad_id)
    assert len(packed) == 2
    train.forward_backward(model, [{k: torch.stack([p[k] for p in packed]) for k in packed[0]}])
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6)


def test_micro_batches_data_position_is_the_step():
    """Resuming needs no data-loader state: step s's micro-batches are a pure function of (seed,
    s). Over an epoch's steps and all ranks each row appears exactly once, in a seeded order that
    changes per epoch; the partial last batch is topped up with rows that carry no loss; 2 ranks see
    the 1-process global batch."""
    rows = [([1, 100 + k], [-100, 100 + k]) for k in range(14)]      # row k is labelled 100 + k
    packed = [dict(input_ids=torch.tensor(i), labels=torch.tensor(lab), positions=torch.arange(2),
                   doc_ids=torch.zeros(2, dtype=torch.long)) for i, lab in rows]
    for pack, data in ((False, rows), (True, packed)):
        cfg = train.TrainConfig(batch_size=8, micro_batch_size=2, seq_len=2, pack=pack, seed=0)

        def labels(step, world):
            mbs = [mb for rank in range(world)
                   for mb in train.micro_batches(data, step, cfg, rank, world, 0)]
            assert [len(mb["labels"]) for mb in mbs] == [2] * 4
            return [lab for mb in mbs for lab in mb["labels"][:, -1].tolist()]

        epoch0, epoch1 = labels(0, 2) + labels(1, 2), labels(2, 2) + labels(3, 2)
        assert sorted(epoch0) == sorted(epoch1) == [-100, -100] + list(range(100, 114))
        assert epoch0 != epoch1 and labels(1, 2)[-2:] == [-100, -100]
        assert labels(0, 1) + labels(1, 1) == epoch0


def test_kill_and_resume_equals_uninterrupted(tiny, full_run):
    """`python train.py` SIGKILLed after step 6 (checkpoint at step 4, so log.jsonl runs 2 steps
    past it, as in a real crash), then `python train.py --resume`: every step's loss is the
    uninterrupted run's, each logged once."""
    d, tok = tiny
    cfg, res = full_run
    out = d / "killed"
    args = cli(config(d, tok, "killed"))
    rc, err = run_and_kill([sys.executable], args, after_step=6)
    assert rc == -signal.SIGKILL, err[-3000:]
    assert [r["step"] for r in log_losses(out)] == list(range(1, 7))
    assert list(checkpoints(out)) == [4] and not os.path.exists(out / "final")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args, "--resume"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    log = log_losses(out)
    assert [r["step"] for r in log] == list(range(1, 13))
    assert [r["loss"] for r in log] == pytest.approx(res["losses"], abs=1e-6)
    assert list(checkpoints(out)) == [12] and os.path.isdir(out / "final")


def test_resume_of_a_finished_run_keeps_its_final_loss(tiny):
    """--resume where the run had already ended (its last step checkpointed): no step runs again,
    and the result and summary.json still give the run's final loss (it became null)."""
    d, tok = tiny
    cfg = config(d, tok, "finished", epochs=1)
    first = train.train(cfg)
    again = train.train(dataclasses.replace(cfg, resume=True))
    assert again["losses"] == [] and log_losses(cfg.out)[-1]["step"] == first["steps"]
    summary = json.loads((d / "finished" / "summary.json").read_text())
    assert again["final_loss"] == summary["final_loss"] == pytest.approx(first["final_loss"],
                                                                         abs=1e-6)


@pytest.fixture(scope="module")
def fsdp_killed(tiny):
    """torchrun --nproc_per_node=2 (gloo, FSDP2), rank 0 SIGKILLed after step 6 (torchrun then
    stops rank 1): OUT holds the sharded checkpoint of step 4 and the log of steps 1-6."""
    d, tok = tiny
    rc, err = run_and_kill(TORCHRUN, cli(config(d, tok, "fsdp")), after_step=6)
    assert rc != 0 and "SIGKILL" in err, err[-3000:]
    return d / "fsdp"


def test_fsdp_two_processes_match_one_and_checkpoint_is_sharded(fsdp_killed, full_run):
    """Each rank takes half of every global batch: the losses equal the 1-process run's. The
    checkpoint is one file per rank, none holding more than 65% of its bytes (a gathered
    checkpoint is 100% in one file)."""
    cfg, res = full_run
    out = fsdp_killed
    fsdp, one = log_losses(out), log_losses(cfg.out)
    assert len(fsdp) == 6 and not os.path.exists(out / "final")
    for a, b in zip(fsdp, one):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    folder = checkpoints(out)[4]
    sizes = {f.name: f.stat().st_size for f in folder.iterdir()}
    assert sorted(n for n in sizes if n.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert max(sizes.values()) / sum(sizes.values()) < 0.65, sizes


@pytest.mark.parametrize("nproc", [1, 2])
def test_fsdp_checkpoint_resumes_on_one_or_two_processes(tiny, full_run, fsdp_killed, nproc):
    """The 2-process checkpoint of step 4 resumes with 1 process (DCP reshards) and with 2: the
    uninterrupted run's losses, each step logged once. The export (2 processes: one whole tensor
    at a time, gathered) equals the 1-process run's: names, shapes, dtypes, values."""
    d, tok = tiny
    cfg, res = full_run
    out = d / f"fsdp-resumed-{nproc}"
    shutil.copytree(fsdp_killed, out)
    resumed = config(d, tok, out.name, resume=True)
    if nproc == 1:
        train.train(resumed)
    else:
        subprocess.run([*TORCHRUN, os.path.join(ROOT, "train.py"), *cli(resumed)], cwd=ROOT,
                       check=True, capture_output=True, timeout=300)
    log = log_losses(out)
    assert [r["step"] for r in log] == list(range(1, 13))
    assert [r["loss"] for r in log] == pytest.approx(res["losses"], abs=1e-4)
    mine, ref = (checkpoint.open_checkpoint(p) for p in (out / "final", res["final"]))
    assert mine.fields == ref.fields
    ref_tensors = {name: read() for _, name, _, read in ref.stored}
    got = {name: read() for _, name, _, read in mine.stored}
    assert list(got) == list(ref_tensors)
    for name, t in got.items():
        assert t.dtype == ref_tensors[name].dtype == torch.float32
        torch.testing.assert_close(t, ref_tensors[name], rtol=0, atol=1e-4)


def test_kill_during_save_leaves_previous_checkpoint(tiny, full_run):
    """2 processes, rank 0 SIGKILLed in the middle of step 8's save (every shard written, the
    checkpoint not yet published): step 4's checkpoint is the newest complete one and resumes to
    the uninterrupted losses; the half-made step-8 folder is never read, and the next save sweeps
    it away."""
    d, tok = tiny
    cfg, res = full_run
    out = d / "killed-in-save"
    rc, err = run_and_kill(TORCHRUN, cli(config(d, tok, out.name)), after_step=("save", 8))
    assert rc != 0 and "SIGKILL" in err, err[-3000:]
    assert list(checkpoints(out)) == [4]
    assert (out / "checkpoints" / "step-000008.tmp" / "__1_0.distcp").is_file()
    resumed = train.train(config(d, tok, out.name, resume=True))
    assert resumed["losses"] == pytest.approx(res["losses"][4:], abs=1e-4)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000012"]


def test_save_memory_per_rank_is_its_shard_not_the_model(tiny):
    """Peak host memory growth of each of 2 ranks while it saves a checkpoint (VmHWM around
    train.save_checkpoint), against that rank's shard of the state (its float32 weights and Adam
    moments, ~18 MB here) and the largest tensor: a rank never holds the whole state (gathering
    it on rank 0 would grow rank 0 by twice its shard)."""
    d, tok = tiny
    cfg = config(d, tok, "rss", dim=256, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=688,
                 max_steps=2, save_every=1, seq_len=64)
    run_and_kill(TORCHRUN, cli(cfg), after_step=("rss", 0), check=True)
    for rank in range(2):
        seen = json.loads((d / "rss" / f"rss.rank{rank}.json").read_text())
        assert len(seen) == 2
        for growth, shard, largest in seen:
            assert 10e6 < shard < 25e6
            assert growth < shard + largest, (rank, growth / shard)


def test_resume_refuses_another_run_and_a_bad_checkpoint(tiny, full_run, tmp_path):
    """--resume fingerprints the data's content, the model's shape and the hyper-parameters:
    another data file with as many rows, another --lr or another --dim is refused in one line
    saying what differs; a truncated or mangled checkpoint is one line naming the file. Nothing
    trains, and no traceback."""
    d, tok = tiny
    cfg, res = full_run
    out = tmp_path / "run"
    shutil.copytree(cfg.out, out)
    other = tmp_path / "other.jsonl"                   # 14 rows too, other numbers
    r = random.Random(1)
    other.write_text("".join(json.dumps(record(i, r.randint(2, 99), r.randint(2, 99))) + "\n"
                             for i in range(14)))
    base = dataclasses.replace(cfg, out=str(out), resume=True, quiet=True)

    def refused(**kw):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                            *cli(dataclasses.replace(base, **kw))],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, p.stderr[-2000:]
        return lines[0]
    line = refused(data=str(other))
    assert "step-000012 is another run's checkpoint: data_sha256" in line and "lr" not in line
    assert "lr 0.01 there, 0.02 here" in refused(lr=0.02)
    assert "model {" in refused(dim=64)
    assert log_losses(out) == log_losses(cfg.out)       # nothing ran
    folder = checkpoints(out)[12]
    with open(folder / "__0_0.distcp", "r+b") as f:     # truncated: a disk that filled up
        f.truncate(1000)
    line = refused()
    assert str(folder / "__0_0.distcp") in line and "truncated" in line
    shutil.rmtree(out / "checkpoints")
    shutil.copytree(Path(cfg.out) / "checkpoints", out / "checkpoints")
    meta = checkpoints(out)[12] / ".metadata"            # same size, garbage inside
    meta.write_bytes(b"\0" * meta.stat().st_size)
    line = refused()
    assert str(checkpoints(out)[12]) in line and "unreadable training checkpoint" in line
    meta.write_bytes((Path(cfg.out) / "checkpoints" / meta.parent.name / ".metadata").read_bytes())
    shard = checkpoints(out)[12] / "__0_0.distcp"        # same size, its tensors overwritten
    shard.write_bytes(b"\7" * shard.stat().st_size)
    line = refused()
    assert str(checkpoints(out)[12]) in line and "unreadable training checkpoint" in line
    assert "weights_only" not in line                   # no advice to load it unsafely


def test_export_loads_and_matches_checkpoint(tiny, full_run):
    """OUT/final (written tensor by tensor + tokenizer.save) reloads with from_pretrained and
    gives the logits of the trained weights, read independently from the end-of-run checkpoint;
    float32, as a model trained from scratch is."""
    d, tok_path = tiny
    cfg, res = full_run
    tok = Tokenizer.from_checkpoint(res["final"])
    assert tok.special == Tokenizer(str(tok_path)).special
    loaded = Transformer.from_pretrained(res["final"])
    assert loaded.output.weight.dtype == torch.float32
    trained = load_weights(res["checkpoint"], _tiny_model(tok))
    text = "<|assistant|><|text|>We multiply 12 and 34.<|endofblock|>"
    ids = torch.tensor([tok.encode(text, bos=True)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), trained(ids), rtol=1e-5, atol=1e-5)
    assert loaded.tok_embeddings.weight.shape[0] == tok.vocab_size


def test_every_config_field_is_a_flag():
    """TrainConfig's fields are train.py's flags (plumbing/cli.py, which infer.py's GenConfig uses
    too), with TrainConfig's defaults: a config written out as flags parses back to itself
    (switches, int | None, str | None, floats), and a flag of the wrong type is refused."""
    assert train.parse_args([]) == train.TrainConfig()
    cfg = train.TrainConfig(data="d.jsonl", out="o", tokenizer="t.model", n_kv_heads=2,
                            warmup_steps=0, lr=3e-4, pack=True, resume=True, precision="bf16",
                            max_steps=7, timeout_minutes=2.5)
    assert train.parse_args(cli(cfg)) == cfg
    with pytest.raises(SystemExit):
        train.parse_args(["--max-steps", "seven"])


def test_bad_input_fails_before_model(tiny, tmp_path, monkeypatch):
    d, tok = tiny
    monkeypatch.setattr(train, "build_model",
                        lambda *a, **k: pytest.fail("model built before input check"))
    with pytest.raises(ValueError, match="missing.jsonl"):
        train.train(config(d, tok, "x", data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="multiple of"):
        train.train(config(d, tok, "x", batch_size=7))
    with pytest.raises(ValueError, match="--log-every must be >= 1, got 0"):
        train.train(config(d, tok, "x", log_every=0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record(0, 2, 3)) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        train.train(config(d, tok, "x", data=str(bad)))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "--micro-batch-size" in p.stdout and "--resume" in p.stdout


def test_init_from_pretrained_grows_vocab(tmp_path):
    """--init: the fixture HF checkpoint (vocab 320) + the Llama-2 tokenizer grow to 32008 rows,
    new rows = the mean of the old ones; step 1's loss equals one computed by hand from the fixture
    weights."""
    fixture = os.path.join(ROOT, "tests/fixtures/models/llama2-mha/hf")
    tok_path = os.path.join(ROOT, "tests/fixtures/tokenizer/llama2-tokenizer.model")
    recs = [record(0, 12, 34), record(1, 5, 7)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = train.TrainConfig(data=str(tmp_path / "d.jsonl"), out=str(tmp_path / "o"), init=fixture,
                            tokenizer=tok_path, batch_size=2, micro_batch_size=1, max_steps=1,
                            seq_len=256, lr=1e-3, quiet=True)
    res = train.train(cfg)
    tok = Tokenizer(tok_path)
    ref = Transformer.from_pretrained(fixture)
    old_rows = ref.tok_embeddings.weight.mean(0)
    ref.grow_vocab(32008)
    torch.testing.assert_close(ref.tok_embeddings.weight[tok.special["<|code|>"]], old_rows)
    batch = lce_data.pad_batch([lce_data.encode_example(r, tok, 256) for r in recs], tok.pad_id)
    with torch.no_grad():
        logits = ref(batch["input_ids"])
    want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                             batch["labels"][:, 1:].flatten())
    assert res["losses"][0] == pytest.approx(want.item(), rel=1e-5)
    out = Transformer.from_pretrained(res["final"])
    assert out.tok_embeddings.weight.shape == (32008, 64) and out.output.weight.shape == (32008, 64)
    assert Tokenizer.from_checkpoint(res["final"]).special == tok.special


def test_bf16_mixed_precision_tracks_fp32(tiny):
    """--precision bf16 (what GPUs use; autocast in one process, FSDP's MixedPrecisionPolicy in
    two) runs on CPU too: the losses really change (bf16 matmuls) but stay within bf16 rounding of
    the fp32 run's, and the master weights (checkpoint) stay float32."""
    d, tok = tiny
    one = train.train(config(d, tok, "bf16", precision="bf16", max_steps=6))["losses"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", os.path.join(ROOT, "train.py")]
                   + cli(config(d, tok, "bf16_fsdp", precision="bf16", max_steps=6)),
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    two = [r["loss"] for r in log_losses(d / "bf16_fsdp")]
    # (max_steps=6 also ends the cosine schedule at 6: compare with fp32 runs of the same schedule)
    fp32 = train.train(config(d, tok, "fp32_6", max_steps=6))["losses"]
    for losses in (one, two):
        assert losses != pytest.approx(fp32, abs=1e-6)                  # bf16 was really used
        assert losses == pytest.approx(fp32, abs=0.05)                  # ... and tracks fp32
    for out in ("bf16", "bf16_fsdp"):
        meta = dcp.FileSystemReader(checkpoints(d / out)[6]).read_metadata()
        weights = {k: v for k, v in meta.state_dict_metadata.items() if k.startswith("model.")}
        assert len(weights) == 21 and all(
            v.properties.dtype == torch.float32 for v in weights.values())


def test_fsdp_bf16_keeps_rotary_tables_fp32(tiny, tmp_path, monkeypatch):
    """Under FSDP with bf16 compute the blocks get the hidden state in bf16 but the rotary cos/sin
    tables in float32, as inference has them (FSDP's default input cast would round them to
    bf16). One rank, gloo, in this process."""
    import torch.distributed as dist
    import model as M
    d, tok = tiny
    seen = []
    real_rope = M.apply_rope
    monkeypatch.setattr(M, "apply_rope", lambda x, cos, sin: (
        seen.append((x.dtype, cos.dtype, sin.dtype)), real_rope(x, cos, sin))[1])
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        cfg = config(d, tok, "x", precision="bf16")
        args = memory_plan.plan_args(cfg, Tokenizer(str(tok)))
        model = train.build_model(cfg, args, torch.device("cpu"), 1, True, lambda msg: None)
        model(torch.tensor([[1, 5, 9, 4]]))
    finally:
        dist.destroy_process_group()
    assert seen and set(seen) == {(torch.bfloat16, torch.float32, torch.float32)}


def _plan_and_peak(checkpointing):
    """(planned, measured) bytes of grads + activations + logits for one training step of a small
    model, one process, float32; run in a fresh process (see below)."""
    args = ModelArgs(dim=256, n_layers=4, n_heads=8, hidden_dim=688, vocab_size=2000,
                     max_seq_len=512)
    B, T = 4, 512
    torch.manual_seed(0)
    ids = torch.randint(3, 2000, (B, T))
    mb = {"input_ids": ids, "labels": ids, "positions": torch.arange(T).expand(B, T),
          "doc_ids": None}
    model = Transformer(args)
    if checkpointing:
        train.apply_grad_checkpoint(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        train.forward_backward(model, [mb])
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()                        # Adam's moments now exist; the grads are freed
    growth = max(peak_rss_growth(step) for _ in range(2))
    plan = memory_plan.memory_plan(args, 1, B, T, bf16=False, sharded=False)
    acts = plan["activations_checkpointed" if checkpointing else "activations"]
    return (plan["grads"] + acts + plan["logits"]) * 1e9, growth


def test_memory_plan_matches_measured_cpu_peak():
    """The plan for a small model, one process, float32 (what the CPU runs), against the peak
    resident memory measured during a training step (VmHWM growth over the step, the weights and
    Adam's moments already allocated): grads + activations + logits, within 20%, with and without
    activation checkpointing. Each in a fresh process: in this one, memory that earlier tests
    freed (and the allocator kept) would hide part of the growth. (Multi-head attention: with
    grouped KV heads the CPU's attention falls back to a kernel that stores the T x T scores,
    which the plan, made for GPUs' fused kernels, does not count.)"""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for checkpointing in (False, True):
            predicted, growth = pool.apply(_plan_and_peak, (checkpointing,))
            print(f"checkpointing {checkpointing}: measured {growth / 1e6:.0f} MB, planned "
                  f"{predicted / 1e6:.0f} MB")
            assert 0.8 < growth / predicted < 1.2, (checkpointing, growth / 1e6,
                                                    predicted / 1e6)


def test_plan_flags_70b_on_32_gpus_without_checkpointing():
    """`train.py --plan` from a config.json alone (Llama-2-70B's shape, no weights), 32 x 80 GB,
    micro-batch 4 x 2048, bf16: the activations do not fit without checkpointing, the run fits
    with it (which train.py then turns on by itself); the sharded state alone is ~35 GB a GPU."""
    fields = dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, hidden_dim=28672,
                  vocab_size=32000, norm_eps=1e-5, rope_theta=10000.0, max_seq_len=4096)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(checkpoint._hf_config(fields,
                                                                                 torch.bfloat16)))
        p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--plan", "--init",
                            str(Path(tmp) / "config.json"), "--gpus", "32", "--micro-batch-size",
                            "4", "--seq-len", "2048"], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
    assert p.returncode == 0, p.stderr
    assert "68.98B parameters on 32 GPU(s)" in p.stdout
    assert "turning activation checkpointing on" in p.stdout, p.stdout
    args = ModelArgs(**fields)
    plan = memory_plan.memory_plan(args, 32, 4, 2048, bf16=True)
    sharded = plan["params"] + plan["grads"] + plan["optimizer"]
    assert 16 * 68.98e9 / 32 / 1e9 == pytest.approx(sharded, rel=1e-3)
    assert plan["total"] > 0.9 * 80 > plan["total_checkpointed"]
    with pytest.raises(ValueError, match="does not fit.*--micro-batch-size 4 --grad-checkpoint on "
                                         "32 GPUs fits"):
        memory_plan.plan_verdict(memory_plan.memory_plan(args, 16, 4, 2048, bf16=True), 80,
                                 False, train.TrainConfig(micro_batch_size=4, seq_len=2048,
                                                          batch_size=128), args, True)


def peak_rss_growth(fn):
    """Bytes by which the process's peak resident memory (VmHWM) rose while fn() ran."""
    from test_parallel import peak_rss_growth as measured
    return measured(fn)[1]


if __name__ == "__main__":
    # `python tests/test_train.py MODE ARGS...` (run_and_kill): `train.py ARGS` with a hook. MODE
    # K: rank 0 dies by SIGKILL right after appending step K to OUT/log.jsonl, as a crash would
    # kill it; save:K: rank 0 dies in step K's save, its shards written but not yet published;
    # rss:0: each rank records [peak memory growth, its shard's bytes, the largest tensor's] for
    # every save in OUT/rss.rankR.json
    mode = sys.argv.pop(1)
    cfg = train.parse_args(sys.argv[1:])
    rank = int(os.environ.get("RANK", 0))
    if mode.startswith("save:"):
        kill_in = int(mode.split(":")[1])
        publish = train_checkpoint.publish

        def publish_or_die(tmp, final):
            if rank == 0 and final.name == f"step-{kill_in:06d}":
                os.kill(os.getpid(), signal.SIGKILL)
            publish(tmp, final)
        train_checkpoint.publish = publish_or_die
    elif mode.startswith("rss:"):
        save, seen = train.save_checkpoint, []

        def measured_save(folder, model, opt, *args):
            moments = [v for s in opt.state.values() for v in s.values()]
            local = [t.to_local() if hasattr(t, "to_local") else t
                     for t in [*model.state_dict().values(), *moments]]
            shard = sum(t.numel() * t.element_size() for t in local if t.dim() > 0)
            largest = max(p.numel() * p.element_size() for p in model.parameters())  # global
            growth = peak_rss_growth(lambda: save(folder, model, opt, *args))
            seen.append([growth, shard, largest])
            storage.write_json(Path(folder).parent / f"rss.rank{rank}.json", seen)
        train.save_checkpoint = measured_save
    else:
        kill_after = int(mode)
        append_jsonl = train_log.append_jsonl

        def append_then_die(f, record):
            append_jsonl(f, record)
            if record["step"] == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        train_log.append_jsonl = append_then_die
    train.main(sys.argv[1:])
