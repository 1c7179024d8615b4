"""`python -m toolkit` runs the `opsctl` command line."""
from .cli import main

main()
