"""`python -m services` is the `gvloop` command (for child processes, whatever PATH holds)."""

from services.cli import app

app()
