"""`kmodel` and `python -m kmodel`. A signal is answered in one line from the first instant:
while the CLI (click, kmodel's modules) is still loading nothing has started, so the
process says so and exits 128 + the signal (kmodel/_signals.py); once it is loaded, the
CLI's own handling (cleanup, then one line) takes over."""

from kmodel._signals import answer_quietly


def main() -> None:
    answer_quietly()
    from kmodel.cli import main as run

    run()


if __name__ == "__main__":
    main()
