"""Command-line tools: ``python -m tools.<name> --help``. Each parses its arguments and calls
the library under ``utils/`` and ``networks/``; the project's errors end in one line, exit 2."""
