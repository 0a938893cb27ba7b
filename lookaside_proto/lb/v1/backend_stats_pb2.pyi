from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientStatsExtension(_message.Message):
    __slots__ = ("calls_per_backend",)
    CALLS_PER_BACKEND_FIELD_NUMBER: _ClassVar[int]
    calls_per_backend: _containers.RepeatedCompositeFieldContainer[BackendCallStats]
    def __init__(self, calls_per_backend: _Optional[_Iterable[_Union[BackendCallStats, _Mapping]]] = ...) -> None: ...

class BackendCallStats(_message.Message):
    __slots__ = ("load_balance_token", "num_calls_finished", "num_calls_finished_with_client_failed_to_send", "num_calls_finished_known_received", "num_calls_finished_with_deadline_exceeded")
    LOAD_BALANCE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FINISHED_WITH_CLIENT_FAILED_TO_SEND_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FINISHED_KNOWN_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FINISHED_WITH_DEADLINE_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    load_balance_token: str
    num_calls_finished: int
    num_calls_finished_with_client_failed_to_send: int
    num_calls_finished_known_received: int
    num_calls_finished_with_deadline_exceeded: int
    def __init__(self, load_balance_token: _Optional[str] = ..., num_calls_finished: _Optional[int] = ..., num_calls_finished_with_client_failed_to_send: _Optional[int] = ..., num_calls_finished_known_received: _Optional[int] = ..., num_calls_finished_with_deadline_exceeded: _Optional[int] = ...) -> None: ...
