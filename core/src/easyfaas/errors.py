"""Every exception the engine raises on purpose, and what a caller sees of it.

    EasyFaaSError
    ├── ConfigurationError            bad profile or plugin setup; the engine refuses to start
    │   ├── ProfileError              a profile value is wrong (names file, line, key)
    │   └── PluginNotFoundError       a plugin named in the profile is not installed
    ├── PluginError                   a plugin broke its contract (e.g. duplicate name)
    ├── FunctionSpecError             a function spec or upload is invalid (HTTP 400)
    ├── FunctionNotFoundError         no such function or version (HTTP 404)
    ├── SandboxError                  the funclet could not create/warm/reset a sandbox
    │   └── FuncletUnavailableError   the funclet process cannot be reached (retryable)
    └── InvocationError               a call failed; ``status`` is the activation status
        ├── FunctionError             the handler raised (application_error, HTTP 200/502)
        ├── LoadError                 the handler could not be imported (developer_error)
        ├── InstanceCrashedError      the instance died mid-call: exit, signal, OOM (developer_error)
        ├── FunctionTimeoutError      the call outlived the function's timeout (HTTP 504)
        ├── ThrottledError            no capacity within the queueing limit (HTTP 429)
        ├── PayloadTooLargeError      the event is over the size limit (HTTP 413)
        ├── UnauthorizedError         a protected function called without the token (HTTP 401)
        └── PlatformError             the engine itself failed (HTTP 500)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "EasyFaaSError",
    "FuncletUnavailableError",
    "FunctionError",
    "FunctionNotFoundError",
    "FunctionSpecError",
    "FunctionTimeoutError",
    "InstanceCrashedError",
    "InvocationError",
    "LoadError",
    "PayloadTooLargeError",
    "PlatformError",
    "PluginError",
    "PluginNotFoundError",
    "ProfileError",
    "SandboxError",
    "ThrottledError",
    "UnauthorizedError",
]


class EasyFaaSError(Exception):
    """Base of every engine error."""


class ConfigurationError(EasyFaaSError):
    """Raised at start when the engine's configuration cannot work; shown to the operator."""


class ProfileError(ConfigurationError):
    """Raised by the profile loader; the message names file, line, key and what was expected."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid engine profile:\n  " + "\n  ".join(problems))


class PluginNotFoundError(ConfigurationError):
    """Raised by the plugin host when the profile names a plugin that is not installed."""


class PluginError(EasyFaaSError):
    """Raised by the plugin host when a plugin breaks its contract; shown to the operator."""


class FunctionSpecError(EasyFaaSError):
    """Raised by deploy when a spec or code package is invalid; users see the message (400)."""


class FunctionNotFoundError(EasyFaaSError):
    """Raised when a function or version does not exist; users see it as 404."""


class SandboxError(EasyFaaSError):
    """Raised by the funclet or a sandbox driver when a sandbox operation fails."""


class FuncletUnavailableError(SandboxError):
    """Raised by the funclet client when the funclet cannot be reached; retryable."""


class InvocationError(EasyFaaSError):
    """A failed call. ``status`` is the activation status, ``http_status`` what triggers answer."""

    status = "platform_error"
    http_status = 500
    error_type = "PlatformError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        #: The call's request id, set by the controller once known.
        self.request_id = ""

    def to_dict(self) -> dict[str, Any]:
        """The error body callers receive."""
        return {"errorType": self.error_type, "errorMessage": self.message, "status": self.status, **self.details}


class FunctionError(InvocationError):
    """The handler raised; details carry the exception type, message and stack."""

    status = "application_error"
    http_status = 502
    error_type = "FunctionError"


class LoadError(InvocationError):
    """The handler could not be loaded (import error, missing function)."""

    status = "developer_error"
    http_status = 502
    error_type = "LoadError"


class InstanceCrashedError(InvocationError):
    """The instance exited, was killed, or ran out of memory while serving the call."""

    status = "developer_error"
    http_status = 502
    error_type = "InstanceCrashed"


class FunctionTimeoutError(InvocationError):
    """The call ran past the function's timeout; the instance was killed."""

    status = "developer_error"
    http_status = 504
    error_type = "Timeout"


class ThrottledError(InvocationError):
    """No instance could take the call in time; ``retry_after`` is in seconds."""

    status = "throttled"
    http_status = 429
    error_type = "TooManyRequests"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLargeError(InvocationError):
    """The event is bigger than the engine accepts."""

    status = "developer_error"
    http_status = 413
    error_type = "PayloadTooLarge"


class UnauthorizedError(InvocationError):
    """A trigger call to a non-public function without valid credentials."""

    status = "unauthorized"
    http_status = 401
    error_type = "Unauthorized"


class PlatformError(InvocationError):
    """The engine failed to run the call for reasons of its own."""
