"""`python -m soap_cuda`: the same as the `soap-cuda` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
