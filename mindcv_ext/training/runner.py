"""What train.py and train_seg.py share around their training loops, so a fix lands once: claiming the run folder
(refusing one that already holds a run), the message of a run that diverged, and the script's way in and out.
Each script keeps what is its own (its data, model, schedule and what an "epoch" is to it).

    RUN = RunEnd("train", "train_seg.py")
    check_run_folder(RUN, cfg.ckpt_save_dir, resuming)                       # before any work
    claim_run_folder(RUN, cfg.ckpt_save_dir, resuming, rank, group_size)     # after init_context
    raise NonFiniteLossError(diverged(what, ckpts.latest_path, "end of epoch 3", fixes))
    if __name__ == "__main__": script_exit(RUN, main)
"""
import logging
import os
import sys
from typing import Callable

from .. import cli
from .config import ConfigError
from .run_end import RunEnd
from .run_lock import check_output_dir, claim_run_dir
from .runtime import sum_across_ranks

__all__ = ["refuse_a_finished_run", "check_run_folder", "claim_run_folder", "diverged", "script_exit"]


def refuse_a_finished_run(run: RunEnd, resuming: bool, save_dir: str) -> None:
    """A fresh start into a folder whose latest.ckpt exists would overwrite that run: refuse, with the command
    that continues it."""
    if not resuming and run.latest and os.path.exists(run.latest):
        raise ConfigError(f"{save_dir} already holds a run ({run.latest}). Continue it with: "
                          f"{run.resume_command(run.latest)}; or pick another --ckpt_save_dir.")


def check_run_folder(run: RunEnd, save_dir: str, resuming: bool) -> None:
    """Before any work: the folder can be written and holds no other run (run.latest is set here)."""
    run.latest = os.path.join(save_dir, "latest.ckpt")
    refuse_a_finished_run(run, resuming, save_dir)
    check_output_dir(save_dir)


def claim_run_folder(run: RunEnd, save_dir: str, resuming: bool, rank: int, group_size: int) -> None:
    """One live run per folder: rank 0 takes its lock (run_lock); checked again under the lock, since another run
    may have written its first checkpoint since check_run_folder."""
    run.run_dir = claim_run_dir(save_dir, rank, group_size, agree=sum_across_ranks if group_size > 1 else None)
    refuse_a_finished_run(run, resuming, save_dir)


def diverged(what: str, latest_path: str, when: str, fixes: str) -> str:
    """The one line of a run stopped on a non-finite loss or weights (exit 3). latest.ckpt is replaced only after
    the finite check, so it is the last good state; `when` says which ("end of epoch 2", "iteration 400")."""
    if os.path.exists(latest_path):
        kept = f"The last good checkpoint is {latest_path} ({when}); nothing was written after it."
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
    if any(v in os.environ for v in ("MS_ROLE", "RANK_TABLE_FILE")):
        sys.exit(exit_code)
    os._exit(exit_code)
