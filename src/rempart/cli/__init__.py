"""The ``rempart`` command: one module per command, thin (parse, call, exit code)."""
