"""One module per `opsctl` command; each exposes a typer app or a command function."""
