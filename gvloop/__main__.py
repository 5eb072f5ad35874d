"""`python -m gvloop` is the `gvloop` command (for child processes, whatever PATH holds)."""

from gvloop.cli import app

app()
