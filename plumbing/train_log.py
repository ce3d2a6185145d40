"""What a train.py run reports, and where (rank 0 writes, the other ranks only count):
    OUT/config.json   the flags, the data's sha256, the model's shape, the memory plan
    OUT/log.jsonl     one line per step (line k is step k): loss, lr, grad norm, tokens, tokens/s,
                      TFLOP/s per rank, MFU on GPU
    the progress line every --log-every steps, with the rate and the ETA
    OUT/loss.svg      loss and learning rate per step, redrawn at each checkpoint
    OUT/summary.json  the final loss, the steps, where the model and the last checkpoint are
"""
import json
import os
import time

from plumbing import html_views
from plumbing.storage import append_jsonl, atomic_write, write_json


class TrainLog:
    """The run's log: call it with a line for the terminal; begin, step, curve, summary write."""

    def __init__(self, out: str, rank: int, world: int, quiet: bool = False, cuda: bool = False,
                 peak_tflops: float = 989.0):
        self.out, self.rank, self.world, self.quiet = out, rank, world, quiet
        self.cuda, self.peak_tflops = cuda, peak_tflops
        self.path = os.path.join(out, "log.jsonl")
        self.start, self.total, self.t_start = 0, 0, time.time()

    def __call__(self, msg: str):
        """One line on rank 0's terminal."""
        if self.rank == 0 and not self.quiet:
            print(f"[train] {msg}", flush=True)

    def begin(self, start: int, total: int, config: dict):
        """Write config.json; keep the first `start` lines of log.jsonl (a crash leaves lines past
        the checkpoint, the last one maybe torn in half, and those steps run again); start the
        clock. last_loss: the loss of the last step kept (the final loss of a run resumed at its
        end, where no step runs again)."""
        self.start, self.total, self.t_start = start, total, time.time()
        self.last_loss = None
        if self.rank == 0:
            write_json(os.path.join(self.out, "config.json"), config)
            kept = []
            if start and os.path.isfile(self.path):
                with open(self.path, encoding="utf-8") as f:
                    kept = f.readlines()[:start]
            atomic_write(self.path, "".join(kept))
            if kept:
                self.last_loss = json.loads(kept[-1])["loss"]

    def step(self, step: int, epoch: int, loss: float, lr: float, grad_norm: float, figures: dict,
             dt: float, log_every: int):
        """Step `step` (from 1) took dt seconds; figures: forward_backward's sums over all ranks
        (loss tokens, real and padded tokens, FLOPs). Its line goes to log.jsonl; the progress
        line every log_every steps and at the last."""
        record = dict(step=step, epoch=epoch, loss=round(loss, 6), lr=lr,
                      grad_norm=round(grad_norm, 6), loss_tokens=int(figures["loss_tokens"]),
                      padded_tokens=int(figures["padded_tokens"]),
                      tokens_per_s=round(figures["tokens"] / dt, 1), step_s=round(dt, 4),
                      tflops_per_rank=round(figures["flops"] / dt / self.world / 1e12, 6))
        if self.cuda:
            record["mfu"] = round(figures["flops"] / dt / (self.peak_tflops * 1e12 * self.world),
                                  4)
        if self.rank == 0:
            with open(self.path, "a", encoding="utf-8") as f:
                append_jsonl(f, record)
        if step % log_every == 0 or step == self.total:
            done = step - self.start
            elapsed = time.time() - self.t_start
            eta = elapsed / done * (self.total - step)
            mfu = f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
            self(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} gnorm "
                 f"{record['grad_norm']:.3f} {record['tokens_per_s']:,.0f} tok/s{mfu} | "
                 f"{done / elapsed:.2f} steps/s, eta {eta / 60:.1f} min")

    def curve(self):
        """OUT/loss.svg from log.jsonl: the curve so far."""
        if self.rank == 0:
            html_views.write_loss_svg(self.path, os.path.join(self.out, "loss.svg"))

    def summary(self, result: dict):
        """OUT/summary.json: the result without the per-step losses (log.jsonl has them)."""
        if self.rank == 0:
            write_json(os.path.join(self.out, "summary.json"),
                       {key: value for key, value in result.items() if key != "losses"})
        self(f"done: final loss {result['final_loss']}, model in {result['final']}")
