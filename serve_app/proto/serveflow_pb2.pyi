from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskRequest(_message.Message):
    __slots__ = ("task_type", "payload_json", "task_id", "timeout_s", "idempotent")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    payload_json: str
    task_id: str
    timeout_s: float
    idempotent: bool
    def __init__(self, task_type: _Optional[str] = ..., payload_json: _Optional[str] = ..., task_id: _Optional[str] = ..., timeout_s: _Optional[float] = ..., idempotent: _Optional[bool] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("code", "message", "retryable", "details_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retryable: bool
    details_json: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., details_json: _Optional[str] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "task_type", "success", "result_json", "error", "duration_ms", "trace_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_type: str
    success: bool
    result_json: str
    error: ErrorInfo
    duration_ms: float
    trace_id: str
    def __init__(self, task_id: _Optional[str] = ..., task_type: _Optional[str] = ..., success: _Optional[bool] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., duration_ms: _Optional[float] = ..., trace_id: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status", "status_json")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status: str
    status_json: str
    def __init__(self, status: _Optional[str] = ..., status_json: _Optional[str] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("workflow", "input_json", "idempotency_key", "wait", "wait_timeout_s", "priority")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    workflow: str
    input_json: str
    idempotency_key: str
    wait: bool
    wait_timeout_s: float
    priority: int
    def __init__(self, workflow: _Optional[str] = ..., input_json: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[float] = ..., priority: _Optional[int] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class EventRequest(_message.Message):
    __slots__ = ("type", "key", "id", "payload_json")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    type: str
    key: str
    id: str
    payload_json: str
    def __init__(self, type: _Optional[str] = ..., key: _Optional[str] = ..., id: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("type", "after", "limit")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    type: str
    after: int
    limit: int
    def __init__(self, type: _Optional[str] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class DeadLettersRequest(_message.Message):
    __slots__ = ("subscription", "seq", "limit")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    seq: int
    limit: int
    def __init__(self, subscription: _Optional[str] = ..., seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class EventReply(_message.Message):
    __slots__ = ("success", "event_json", "created", "events_json", "dead_letters_json", "dead_letter_json", "error", "duration_ms", "trace_id")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_JSON_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    success: bool
    event_json: str
    created: bool
    events_json: str
    dead_letters_json: str
    dead_letter_json: str
    error: ErrorInfo
    duration_ms: float
    trace_id: str
    def __init__(self, success: _Optional[bool] = ..., event_json: _Optional[str] = ..., created: _Optional[bool] = ..., events_json: _Optional[str] = ..., dead_letters_json: _Optional[str] = ..., dead_letter_json: _Optional[str] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., duration_ms: _Optional[float] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ScheduleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ScheduleReply(_message.Message):
    __slots__ = ("success", "schedules_json", "schedule_json", "run_id", "error", "duration_ms", "trace_id")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULES_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_JSON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    success: bool
    schedules_json: str
    schedule_json: str
    run_id: str
    error: ErrorInfo
    duration_ms: float
    trace_id: str
    def __init__(self, success: _Optional[bool] = ..., schedules_json: _Optional[str] = ..., schedule_json: _Optional[str] = ..., run_id: _Optional[str] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., duration_ms: _Optional[float] = ..., trace_id: _Optional[str] = ...) -> None: ...

class SignalRequest(_message.Message):
    __slots__ = ("run_id", "name", "signal_id", "payload_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    signal_id: str
    payload_json: str
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ..., signal_id: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("status", "workflow", "limit", "parent_run_id", "before")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    status: str
    workflow: str
    limit: int
    parent_run_id: str
    before: float
    def __init__(self, status: _Optional[str] = ..., workflow: _Optional[str] = ..., limit: _Optional[int] = ..., parent_run_id: _Optional[str] = ..., before: _Optional[float] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("success", "run_id", "workflow", "created", "run_json", "runs_json", "error", "duration_ms", "trace_id")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    RUN_JSON_FIELD_NUMBER: _ClassVar[int]
    RUNS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    success: bool
    run_id: str
    workflow: str
    created: bool
    run_json: str
    runs_json: str
    error: ErrorInfo
    duration_ms: float
    trace_id: str
    def __init__(self, success: _Optional[bool] = ..., run_id: _Optional[str] = ..., workflow: _Optional[str] = ..., created: _Optional[bool] = ..., run_json: _Optional[str] = ..., runs_json: _Optional[str] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., duration_ms: _Optional[float] = ..., trace_id: _Optional[str] = ...) -> None: ...
