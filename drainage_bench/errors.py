"""The one exception type that reaches the user as a single line (exit status 2)."""


class UserError(Exception):
    """Bad input from the user: an unknown name, a value out of range, a missing file.

    The message is one line that names the problem and what to do about it. The CLI prints it
    without a traceback and exits with status 2; library callers get an ordinary exception.
    """


def lookup(kind: str, name: str, registry: dict):
    """``registry[name]``; for an unknown name, ``UserError("unknown <kind> 'name'; valid: ...")``."""
    if name not in registry:
        raise UserError(f"unknown {kind} {name!r}; {did_you_mean(name, registry)}")
    return registry[name]


def did_you_mean(value: str, valid) -> str:
    """``"valid: a, b, c"`` for error messages (sorted, comma separated)."""
    return "valid: " + ", ".join(sorted(map(str, valid)))
