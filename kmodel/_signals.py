"""The answer to a signal when nothing is running: before the CLI has loaded, or after the
command is over (the interpreter shutting down). One line, exit 128 + the signal, never a
traceback. While a command runs, kmodel/cli.py's handler lets its cleanup run first."""

import os
import signal


def quit_now(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"Error [KM800]: interrupted by {name}; nothing was left running\n".encode())
    os._exit(128 + signum)


def answer_quietly() -> None:
    """From now on, SIGINT and SIGTERM end the process at once, in one line (not where
    they are ignored: nohup, background jobs)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, quit_now)
