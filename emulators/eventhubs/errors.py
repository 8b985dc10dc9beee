"""The emulator's errors, and the AMQP error conditions it sends to clients.

``EmulatorError`` is the base of everything raised here. ``AmqpError`` carries an
AMQP ``error`` (condition, description): the connection layer turns it into the
matching frame (a link detach, a session end or a connection close), which is
how the SDK learns what went wrong and which exception to raise.
"""

from __future__ import annotations

# Conditions (AMQP 1.0 part 2, section 2.8.15 to 2.8.18, plus the ones Event Hubs uses).
NOT_FOUND = "amqp:not-found"
UNAUTHORIZED = "amqp:unauthorized-access"
DECODE_ERROR = "amqp:decode-error"
NOT_ALLOWED = "amqp:not-allowed"
NOT_IMPLEMENTED = "amqp:not-implemented"
INVALID_FIELD = "amqp:invalid-field"
INTERNAL_ERROR = "amqp:internal-error"
RESOURCE_LIMIT_EXCEEDED = "amqp:resource-limit-exceeded"
FRAMING_ERROR = "amqp:connection:framing-error"
CONNECTION_FORCED = "amqp:connection:forced"
UNATTACHED_HANDLE = "amqp:session:unattached-handle"
HANDLE_IN_USE = "amqp:session:handle-in-use"
LINK_DETACH_FORCED = "amqp:link:detach-forced"
MESSAGE_SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
LINK_STOLEN = "amqp:link:stolen"
ARGUMENT_OUT_OF_RANGE = "com.microsoft:argument-out-of-range"
ARGUMENT_ERROR = "com.microsoft:argument-error"


class EmulatorError(Exception):
    """Base of the emulator's errors."""


class ConfigError(EmulatorError):
    """The configuration file is missing, malformed or outside the emulator's limits."""


class StorageError(EmulatorError):
    """A ``--data-dir`` log cannot be created, read or rewritten, or is damaged before its end."""


class DecodeError(EmulatorError):
    """Bytes from a peer are not valid AMQP."""


class AmqpError(EmulatorError):
    """An error to report to the peer with an AMQP ``condition`` and ``description``."""

    def __init__(self, condition: str, description: str) -> None:
        super().__init__(f"{condition}: {description}")
        self.condition = condition
        self.description = description


class ConnectionFatal(AmqpError):
    """An error that ends the whole connection (sent in the close frame)."""
