import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadBalanceRequest(_message.Message):
    __slots__ = ("initial_request", "client_stats")
    INITIAL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STATS_FIELD_NUMBER: _ClassVar[int]
    initial_request: InitialLoadBalanceRequest
    client_stats: ClientStats
    def __init__(self, initial_request: _Optional[_Union[InitialLoadBalanceRequest, _Mapping]] = ..., client_stats: _Optional[_Union[ClientStats, _Mapping]] = ...) -> None: ...

class InitialLoadBalanceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ClientStatsPerToken(_message.Message):
    __slots__ = ("load_balance_token", "num_calls")
    LOAD_BALANCE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FIELD_NUMBER: _ClassVar[int]
    load_balance_token: str
    num_calls: int
    def __init__(self, load_balance_token: _Optional[str] = ..., num_calls: _Optional[int] = ...) -> None: ...

class ClientStats(_message.Message):
    __slots__ = ("timestamp", "num_calls_started", "num_calls_finished", "num_calls_finished_with_client_failed_to_send", "num_calls_finished_known_received", "calls_finished_with_drop")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_STARTED_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FINISHED_WITH_CLIENT_FAILED_TO_SEND_FIELD_NUMBER: _ClassVar[int]
    NUM_CALLS_FINISHED_KNOWN_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    CALLS_FINISHED_WITH_DROP_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    num_calls_started: int
    num_calls_finished: int
    num_calls_finished_with_client_failed_to_send: int
    num_calls_finished_known_received: int
    calls_finished_with_drop: _containers.RepeatedCompositeFieldContainer[ClientStatsPerToken]
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_calls_started: _Optional[int] = ..., num_calls_finished: _Optional[int] = ..., num_calls_finished_with_client_failed_to_send: _Optional[int] = ..., num_calls_finished_known_received: _Optional[int] = ..., calls_finished_with_drop: _Optional[_Iterable[_Union[ClientStatsPerToken, _Mapping]]] = ...) -> None: ...

class LoadBalanceResponse(_message.Message):
    __slots__ = ("initial_response", "server_list", "fallback_response")
    INITIAL_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SERVER_LIST_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    initial_response: InitialLoadBalanceResponse
    server_list: ServerList
    fallback_response: FallbackResponse
    def __init__(self, initial_response: _Optional[_Union[InitialLoadBalanceResponse, _Mapping]] = ..., server_list: _Optional[_Union[ServerList, _Mapping]] = ..., fallback_response: _Optional[_Union[FallbackResponse, _Mapping]] = ...) -> None: ...

class FallbackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InitialLoadBalanceResponse(_message.Message):
    __slots__ = ("client_stats_report_interval",)
    CLIENT_STATS_REPORT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    client_stats_report_interval: _duration_pb2.Duration
    def __init__(self, client_stats_report_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ServerList(_message.Message):
    __slots__ = ("servers",)
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedCompositeFieldContainer[Server]
    def __init__(self, servers: _Optional[_Iterable[_Union[Server, _Mapping]]] = ...) -> None: ...

class Server(_message.Message):
    __slots__ = ("ip_address", "port", "load_balance_token", "drop")
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    LOAD_BALANCE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    ip_address: bytes
    port: int
    load_balance_token: str
    drop: bool
    def __init__(self, ip_address: _Optional[bytes] = ..., port: _Optional[int] = ..., load_balance_token: _Optional[str] = ..., drop: _Optional[bool] = ...) -> None: ...
