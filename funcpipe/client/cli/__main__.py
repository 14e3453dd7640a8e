"""``python -m funcpipe.client.cli``: the ``funcpipe`` command."""

from funcpipe.client.cli import main

main()
