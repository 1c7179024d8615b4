"""`python -m toolkit` runs the `opsctl` command line."""
from .cli import main

# Guarded: the engine process is started with multiprocessing's spawn, which imports this module again.
if __name__ == "__main__":
    main()
