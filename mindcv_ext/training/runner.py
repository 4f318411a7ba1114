"""What train.py and train_seg.py share in and around their training loops, so a fix lands once: claiming the run
folder (refusing one that already holds a run), the step / evaluate / end-of-epoch guards of the loop (Runner),
the message of a run that diverged, and the script's way in and out. Each script keeps what is its own: its data,
model and schedule, what an "epoch" is to it (train_seg.py: val_interval iterations), what it logs and saves.

    RUN = RunEnd("train", "train_seg.py")
    check_run_folder(RUN, cfg.ckpt_save_dir, resume_from)                    # before any work ("": a fresh start)
    claim_run_folder(RUN, cfg.ckpt_save_dir, resume_from, rank, group_size)  # after init_context
    runner = Runner(RUN, train_step, progress, log.info, graph_mode=cfg.mode == 0)
    loss, overflow = runner.step(images, labels)                             # in the loop
    runner.end_epoch(rank_local, all_reduce, group_size, lambda bad: diverged(...))
    result = runner.evaluate(lambda: evaluate(...))
    if __name__ == "__main__": script_exit(RUN, main)
"""
import contextlib
import logging
import os
import sys
from typing import Callable

from .. import cli
from ..checkpoint import nonfinite_tensors
from .ckpt_manager import training_state
from ..config import ConfigError
from .run_end import RunEnd
from .run_lock import check_output_dir, claim_run_dir
from .runtime import LAUNCHER_VARS, average_across_ranks, sum_across_ranks
from .step import NonFiniteLossError

__all__ = ["refuse_existing_run", "check_run_folder", "claim_run_folder", "Runner", "diverged", "script_exit"]


def refuse_existing_run(run: RunEnd, resume_from: str, save_dir: str) -> None:
    """A folder whose latest.ckpt exists holds a run; only that run may write there again (a resume from a file in
    that folder). A fresh start, or a resume of a checkpoint from another folder, would overwrite its checkpoints
    and metrics.jsonl: refused, with the way out."""
    if not (run.latest and os.path.exists(run.latest)):
        return
    if not resume_from:
        raise ConfigError(f"{save_dir} already holds a run ({run.latest}). Continue it with: "
                          f"{run.resume_command(run.latest)}; or pick another --ckpt_save_dir.")
    source = os.path.dirname(os.path.abspath(resume_from))
    if not os.path.samefile(source, save_dir):
        raise ConfigError(f"ckpt_save_dir {save_dir} holds another run ({run.latest}); resuming {resume_from} there "
                          f"would overwrite it. Continue in the checkpoint's own folder (--ckpt_save_dir {source}) "
                          f"or pick a --ckpt_save_dir without a latest.ckpt.")


def check_run_folder(run: RunEnd, save_dir: str, resume_from: str) -> None:
    """Before any work: the folder can be written and holds no other run (run.latest is set here). `resume_from`:
    the checkpoint a resumed run continues, "" for a fresh start."""
    run.latest = os.path.join(save_dir, "latest.ckpt")
    refuse_existing_run(run, resume_from, save_dir)
    check_output_dir(save_dir)


def claim_run_folder(run: RunEnd, save_dir: str, resume_from: str, rank: int, group_size: int) -> None:
    """One live run per folder: rank 0 takes its lock (run_lock) and, under it, checks again for another run
    (one may have written its first checkpoint since check_run_folder); every rank learns the outcome through the
    lock's one agreement, so none is left waiting in a collective."""
    run.run_dir = claim_run_dir(save_dir, rank, group_size, agree=sum_across_ranks if group_size > 1 else None,
                                check=lambda: refuse_existing_run(run, resume_from, save_dir))


class Runner:
    """The guards every step, evaluation and epoch end of a training loop needs, the same for both scripts."""

    def __init__(self, run: RunEnd, train_step, progress, log: Callable[[str], None], graph_mode: bool = True):
        self.run, self.train_step, self.progress, self.log = run, train_step, progress, log
        self.graph_mode = graph_mode
        self.first_step, self.evaluated = True, False

    def step(self, images, labels):
        """One optimizer step: (loss as a float, the overflow flag). The first one compiles the graph: a signal
        there ends the process at once (cli.exit_at_once; an exception raised inside the compiler turns into
        pages of analyzer dump). From its end on the run folder holds work and is kept."""
        first = self.first_step
        # A data pipeline's first batch installs MindData's own SIGTERM handler (it exits 0): put ours back now,
        # from this thread, before a compile that can keep cli's watchdog from getting the GIL to do it.
        cli.keep_sigint()
        with cli.exit_at_once() if first else contextlib.nullcontext():
            if first and self.graph_mode:
                self.log("compiling the training graph (first step; ~20-40 s for the demos on CPU, minutes for the "
                         "large models)...")
            self.progress.start_step()
            loss, overflow = self.train_step(images, labels)
            loss = float(loss.asnumpy())  # waits for the step: the time below is real
        self.run.trained = True
        cli.keep_sigint()  # each graph run installs MindSpore's SIGINT handler again (see mindcv_ext.cli)
        seconds = self.progress.end_step(first)
        if first and self.graph_mode:
            self.log(f"compiled; the first step took {seconds:.1f} s")
        self.first_step = False
        return loss, overflow

    def evaluate(self, evaluate: Callable[[], object]):
        """evaluate()'s result; the first one compiles the eval graph: a signal there ends the process at once."""
        with cli.exit_at_once() if not self.evaluated else contextlib.nullcontext():
            result = evaluate()
        self.evaluated = True
        return result

    def end_epoch(self, rank_local, all_reduce, group_size: int, message: Callable[[list], str]) -> None:
        """Before evaluating or saving: BN statistics (`rank_local`, they differ per rank) averaged over the ranks,
        then the whole training state checked finite (the loss can stay finite while weights or BN statistics are
        NaN already): NonFiniteLossError(message(the bad tensors)). Every rank sees the same values."""
        self.progress.clear()
        average_across_ranks(rank_local, all_reduce, group_size)
        bad = nonfinite_tensors(training_state(self.train_step))
        if bad:
            raise NonFiniteLossError(message(bad))


def diverged(what: str, latest_path: str, when: str, fixes: str) -> str:
    """The one line of a run stopped on a non-finite loss or weights (exit 3). latest.ckpt is replaced only after
    the finite check, so it is the last good state (metrics.jsonl holds that evaluation's row and the step rows
    logged after it); `when` says which ("end of epoch 2", "iteration 400")."""
    if os.path.exists(latest_path):
        kept = f"The last good checkpoint is {latest_path} ({when}); no checkpoint was written after it."
    else:
        kept = "No checkpoint was written (it happened before the first one of this run)."
    return f"{what}: training stopped. {kept} Usual fixes: {fixes}."


def script_exit(run: RunEnd, main: Callable[[], int]) -> None:
    """The __main__ block of a training script: Ctrl-C / SIGTERM end the run within seconds wherever it is blocked
    (cli), main() runs under RunEnd's exit-code table, and the process ends without MindSpore's teardown
    destructors (pages of ignored exceptions); under msrun a normal exit, which reports the worker's end to the
    scheduler."""
    cli.install_signals(on_forced_exit=run.on_forced_exit)
    exit_code = run.run(main)
    logging.shutdown()
    if any(v in os.environ for v in LAUNCHER_VARS):
        sys.exit(exit_code)
    cli.quiet_exit(exit_code)
