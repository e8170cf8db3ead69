"""The one exception type for errors a user can cause (docs/architecture.md)."""


class ReslabError(Exception):
    """A user-facing error: bad name, bad flag, missing or corrupt data or weights.

    The message says what went wrong and what to do; the CLI prints it on one line
    and exits non-zero. Raised in a DataLoader worker, it is re-raised by torch in the
    main process as `ReslabError("Caught ReslabError in DataLoader worker process N.
    Original Traceback ...")`: the constructor keeps only the original message, so the
    user reads the same one line as without workers.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_original_message(args[0], type(self)),)
        super().__init__(*args)


def _original_message(message: str, cls: type) -> str:
    """The message of a `cls` error inside torch's re-raised form of it (`torch._utils.
    ExceptionWrapper`: a "Caught" line, then the worker's formatted traceback, ending in
    "module.Class: message"); any other message unchanged."""
    if not message.startswith(f"Caught {cls.__name__} ") or "\nOriginal Traceback" not in message:
        return message
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    at = message.rfind(marker)
    return message[at + len(marker):].strip() if at >= 0 else message
