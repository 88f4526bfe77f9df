"""A ValidationError as the one line a command, a page notice or a log shows."""

from django.core.exceptions import ValidationError


def validation_message(error: ValidationError) -> str:
    """ "field: message; field: message" for errors raised per field, else the messages."""
    if hasattr(error, "error_dict"):
        return "; ".join(f"{field}: {' '.join(m)}" for field, m in error.message_dict.items())
    return "; ".join(error.messages)
