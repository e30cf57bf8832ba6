"""`python -m soap_cuda`: the same as the `soap-cuda` command."""
import signal
import sys

from .cli import main

if __name__ == "__main__":
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: a late Ctrl-C cannot change the status
    sys.exit(status)
