"""cuelog.runtime: the event log, the actor system, logging. Knows nothing of agents or HTTP."""

from cuelog.runtime._actor import Actor as Actor
from cuelog.runtime._actor import ActorConfig as ActorConfig
from cuelog.runtime._actor import ActorContext as ActorContext
from cuelog.runtime._actor import ActorFactory as ActorFactory
from cuelog.runtime._actor import ActorRef as ActorRef
from cuelog.runtime._actor import ActorSystem as ActorSystem
from cuelog.runtime._actor import ActorSystemStatistics as ActorSystemStatistics
from cuelog.runtime._actor import TaskHandle as TaskHandle
from cuelog.runtime._actor import open_actor_system as open_actor_system
from cuelog.runtime._actor_sourced import ActorFailed as ActorFailed
from cuelog.runtime._actor_sourced import EventSourcedActor as EventSourcedActor
from cuelog.runtime._actor_sourced import Handed as Handed
from cuelog.runtime._codec import Event as Event
from cuelog.runtime._codec import EventCodec as EventCodec
from cuelog.runtime._codec import event_type as event_type
from cuelog.runtime._content import ContentMissing as ContentMissing
from cuelog.runtime._content import ContentStore as ContentStore
from cuelog.runtime._content import LocalContentStore as LocalContentStore
from cuelog.runtime._copy import copy_log as copy_log
from cuelog.runtime._envelope import NO_STREAM as NO_STREAM
from cuelog.runtime._envelope import AppendPart as AppendPart
from cuelog.runtime._envelope import RawEvent as RawEvent
from cuelog.runtime._envelope import decode_record as decode_record
from cuelog.runtime._errors import ActorError as ActorError
from cuelog.runtime._errors import ActorOwnedElsewhere as ActorOwnedElsewhere
from cuelog.runtime._errors import ActorStopped as ActorStopped
from cuelog.runtime._errors import CommandRejected as CommandRejected
from cuelog.runtime._errors import CuelogError as CuelogError
from cuelog.runtime._errors import IdempotencyConflict as IdempotencyConflict
from cuelog.runtime._errors import LeaseLost as LeaseLost
from cuelog.runtime._errors import LogClosed as LogClosed
from cuelog.runtime._errors import LogError as LogError
from cuelog.runtime._errors import LogFormatError as LogFormatError
from cuelog.runtime._errors import LogLocked as LogLocked
from cuelog.runtime._errors import LogLost as LogLost
from cuelog.runtime._errors import LogUnavailable as LogUnavailable
from cuelog.runtime._errors import MailboxFull as MailboxFull
from cuelog.runtime._errors import PayloadTooLarge as PayloadTooLarge
from cuelog.runtime._errors import ProjectionFailed as ProjectionFailed
from cuelog.runtime._errors import StorageFull as StorageFull
from cuelog.runtime._errors import WrongExpectedVersion as WrongExpectedVersion
from cuelog.runtime._gc import GcPauses as GcPauses
from cuelog.runtime._gc import GcStatistics as GcStatistics
from cuelog.runtime._gc import gc_probe as gc_probe
from cuelog.runtime._gc import tune_gc_for_serving as tune_gc_for_serving
from cuelog.runtime._leases import ClusterConfig as ClusterConfig
from cuelog.runtime._leases import LeaseStatistics as LeaseStatistics
from cuelog.runtime._leases import LeaseTable as LeaseTable
from cuelog.runtime._leases import open_leases as open_leases
from cuelog.runtime._logging import configure_logging as configure_logging
from cuelog.runtime._open import LogLocation as LogLocation
from cuelog.runtime._open import open_event_log as open_event_log
from cuelog.runtime._open import parse_log_location as parse_log_location
from cuelog.runtime._open import shared_data_keys as shared_data_keys
from cuelog.runtime._projection import Checkpoint as Checkpoint
from cuelog.runtime._projection import LmdbProjectionStore as LmdbProjectionStore
from cuelog.runtime._projection import MemoryProjectionStore as MemoryProjectionStore
from cuelog.runtime._projection import Projection as Projection
from cuelog.runtime._projection import ProjectionGroup as ProjectionGroup
from cuelog.runtime._projection import ProjectionPhase as ProjectionPhase
from cuelog.runtime._projection import ProjectionRunner as ProjectionRunner
from cuelog.runtime._projection import ProjectionState as ProjectionState
from cuelog.runtime._projection import ProjectionStatus as ProjectionStatus
from cuelog.runtime._projection import ProjectionStore as ProjectionStore
from cuelog.runtime._projection import open_projection_store as open_projection_store
from cuelog.runtime._protocol import EventLog as EventLog
from cuelog.runtime._records import Anchor as Anchor
from cuelog.runtime._records import Head as Head
from cuelog.runtime._records import LogStatistics as LogStatistics
from cuelog.runtime._records import RecordedEvent as RecordedEvent
from cuelog.runtime._records import StoredRecord as StoredRecord
from cuelog.runtime._records import VerifyReport as VerifyReport
from cuelog.runtime._verify import default_verify_jobs as default_verify_jobs

__all__ = [
    "NO_STREAM",
    "Actor",
    "ActorConfig",
    "ActorContext",
    "ActorError",
    "ActorFactory",
    "ActorFailed",
    "ActorOwnedElsewhere",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "ActorSystemStatistics",
    "Anchor",
    "AppendPart",
    "Checkpoint",
    "ClusterConfig",
    "CommandRejected",
    "ContentMissing",
    "ContentStore",
    "CuelogError",
    "Event",
    "EventCodec",
    "EventLog",
    "EventSourcedActor",
    "GcPauses",
    "GcStatistics",
    "Handed",
    "Head",
    "IdempotencyConflict",
    "LeaseLost",
    "LeaseStatistics",
    "LeaseTable",
    "LmdbProjectionStore",
    "LocalContentStore",
    "LogClosed",
    "LogError",
    "LogFormatError",
    "LogLocation",
    "LogLocked",
    "LogLost",
    "LogStatistics",
    "LogUnavailable",
    "MailboxFull",
    "MemoryProjectionStore",
    "PayloadTooLarge",
    "Projection",
    "ProjectionFailed",
    "ProjectionGroup",
    "ProjectionPhase",
    "ProjectionRunner",
    "ProjectionState",
    "ProjectionStatus",
    "ProjectionStore",
    "RawEvent",
    "RecordedEvent",
    "StorageFull",
    "StoredRecord",
    "TaskHandle",
    "VerifyReport",
    "WrongExpectedVersion",
    "configure_logging",
    "copy_log",
    "decode_record",
    "default_verify_jobs",
    "event_type",
    "gc_probe",
    "open_actor_system",
    "open_event_log",
    "open_leases",
    "open_projection_store",
    "parse_log_location",
    "shared_data_keys",
    "tune_gc_for_serving",
]
