"""Application configuration: the ``args`` block of ``serve_config.yaml``.

Validated once when the graph is built, so a bad config fails the deploy with
a message naming the field, instead of failing later inside a replica.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.core.models import NAME_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(_Strict):
    """Ray Serve's autoscaling for a deployment (the fields Serve documents; typos fail the deploy)."""

    min_replicas: int = Field(1, ge=0, description="0 lets an idle pool scale to zero; its next request starts one.")
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(2.0, gt=0, description="Requests in flight per replica Serve aims for.")
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    downscale_to_zero_delay_s: float | None = Field(None, ge=0)
    metrics_interval_s: float = Field(10.0, gt=0)
    look_back_period_s: float = Field(30.0, gt=0)
    upscaling_factor: float | None = Field(None, gt=0)
    downscaling_factor: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must be between min_replicas and max_replicas")
        return self


def with_env(options: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Deployment ``options`` whose replicas start with ``env`` in their environment (through
    ``runtime_env.env_vars``); values the user set there win. No ``env``: ``options`` unchanged."""
    if not env:
        return options
    actor = dict(options.get("ray_actor_options", {}))
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    actor["runtime_env"] = runtime_env
    return {**options, "ray_actor_options": actor}


class ReplicaOptions(_Strict):
    """What a deployment asks of Ray Serve: replicas (fixed or autoscaled) and resources per replica."""

    num_replicas: int | None = Field(None, ge=1, description="Fixed replica count (default 1); not with autoscaling_config.")
    autoscaling_config: AutoscalingConfig | None = None
    num_cpus: float = Field(0.1, ge=0, description="Logical CPUs per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (fractions share one GPU).")
    memory: int | None = Field(None, ge=0, description="Bytes of memory Ray reserves per replica.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per replica (node labels).")
    accelerator_type: str | None = Field(None, min_length=1, description="e.g. A100, H100 (Ray's accelerator type).")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env of the replicas (pip, env_vars, ...).")

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> ReplicaOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both")
        if any(v < 0 for v in self.resources.values()):
            raise ValueError("resources must be non-negative")
        return self

    @property
    def can_scale_to_zero(self) -> bool:
        return self.autoscaling_config is not None and self.autoscaling_config.min_replicas == 0

    @property
    def max_replicas(self) -> int:
        return self.autoscaling_config.max_replicas if self.autoscaling_config is not None else self.num_replicas or 1

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options`` for these settings (no Ray import here)."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.memory is not None:
            actor["memory"] = self.memory
        if self.resources:
            actor["resources"] = dict(self.resources)
        if self.accelerator_type:
            actor["accelerator_type"] = self.accelerator_type
        if self.runtime_env is not None:
            actor["runtime_env"] = dict(self.runtime_env)
        options: dict[str, Any] = {"ray_actor_options": actor}
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


class PoolConfig(ReplicaOptions):
    """One HandlerWorker pool: which modules it loads and which task types it serves."""

    handler_modules: list[str] = Field(min_length=1, description="Importable modules that define @handler functions.")
    task_types: list[str] = Field(min_length=1, description="Task types routed to this pool.")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Free-form settings handed to the modules' @startup hooks."
    )
    default_timeout_s: float = Field(30.0, gt=0, le=3600, description="Handler deadline when the request sets none.")
    idempotent_task_types: list[str] = Field(
        default_factory=list, description="Task types always safe to re-run when a replica dies mid-task."
    )
    max_stuck_calls: int = Field(
        2,
        ge=1,
        description="Sync handler calls still running past their deadline before the replica reports unhealthy "
        "(threads cannot be killed; Serve replaces the replica to reclaim them).",
    )
    max_concurrency: int = Field(16, ge=1, le=1024, description="Threads for sync handlers per replica.")
    reuse_results_bytes: int = Field(
        268_435_456,
        ge=0,
        description="Bytes of workflow step results (bytes, kept by reference) that a replica of this pool holds "
        "in its own process for a reader of this pool. A result whose one reader is in this pool stays there "
        "alone, with no copy in Ray's object store, and the reader is sent to that replica (if it does not fit, "
        "it goes to the object store, and the replica keeps its reference). A result with other readers is in "
        "the object store and held here for 10 s as well, so that a reader landing on this replica takes it "
        "without a copy out. With several replicas, a maker and its reader go to one replica (other calls are "
        "routed as Serve routes them). 0: off (everything in the object store).",
    )
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(256, ge=-1, description="-1 = unbounded; beyond it callers get 'overloaded'.")

    @property
    def result_affinity(self) -> bool:
        """Whether a run's by-reference makers and readers are routed to one replica by key
        (``WorkItem.affinity``): reuse is on and the pool can have several replicas."""
        return self.reuse_results_bytes > 0 and self.max_replicas > 1


class WorkflowsConfig(_Strict):
    """Workflow definitions and where run state is persisted."""

    store: Literal["sqlite", "memory", "postgres"] = Field(
        "sqlite",
        description="sqlite (default; one Coordinator per file), postgres (several Coordinators), memory (nothing survives).",
    )
    store_path: str = Field("~/.serveflow/serveflow.sqlite3", description="SQLite file (created if missing).")
    dsn: str | None = Field(
        None,
        repr=False,
        description="Postgres DSN (postgresql://user:pass@host:5432/db); env SERVEFLOW_DATABASE_URL wins. Never logged.",
    )
    lease_s: float = Field(10.0, gt=0, le=600, description="How long a Coordinator owns a run without renewing.")
    step_start_timeout_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="How long a step may be refused by its pool (not ready, overloaded) before it fails, retryable.",
    )
    max_inflight_steps: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Steps (and map elements) one Coordinator has at its pools at once; beyond it they wait, "
        "highest run priority first.",
    )
    result_by_ref_bytes: int | None = Field(
        1_048_576,
        ge=0,
        description="A step result larger than this (rendered as JSON), or one that is not JSON (bytes, arrays), "
        "stays in Ray's object store and goes straight to the steps that read it whole; the run store keeps "
        "a marker. null: every result inline.",
    )
    definitions: list[dict[str, Any]] = Field(default_factory=list, description="Inline workflow definitions.")
    schedules: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Cron schedules: {name, workflow, cron, timezone, input, overlap: skip|allow|queue, catch_up: none|last|all}.",
    )
    schedule_poll_s: float = Field(1.0, gt=0, le=60, description="How often each Coordinator looks for due ticks.")
    subscriptions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Event subscriptions: {name, types, workflow | task_type, max_attempts, backoff_s}.",
    )
    subscription_poll_s: float = Field(1.0, gt=0, le=60, description="How often each Coordinator delivers new events.")
    files: list[str] = Field(default_factory=list, description="YAML files with definitions, read at deploy time.")
    modules: list[str] = Field(
        default_factory=list, description="Python modules whose Workflow/WorkflowSpec objects are loaded at deploy time."
    )


class TracingConfig(_Strict):
    exporter: str = Field(
        "none",
        pattern=r"^(none|console|otlp|file:.+)$",
        description="none | console | otlp | file:/path (JSON lines); env SERVEFLOW_TRACE_EXPORTER overrides.",
    )


class AppConfig(_Strict):
    """Top-level application arguments."""

    pools: dict[str, PoolConfig] = Field(min_length=1)
    workflows: WorkflowsConfig = Field(default_factory=WorkflowsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    auth_token: str | None = Field(
        None, min_length=16, description="Bearer token required on /v1/* and gRPC; env SERVEFLOW_AUTH_TOKEN wins."
    )
    max_timeout_s: float = Field(300.0, gt=0, le=3600, description="Upper bound for any task deadline.")
    timeout_grace_s: float = Field(2.0, ge=0, description="Extra time the Coordinator waits beyond a handler deadline.")
    idempotent_retries: int = Field(3, ge=0, le=20, description="Re-sends of an idempotent task whose replica died.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest accepted request body.")
    readiness_poll_s: float = Field(0.5, gt=0, description="How often the Coordinator refreshes pool readiness.")
    probe_interval_s: float = Field(1.0, gt=0, description="How often the OrganismManager probes pools.")
    probe_timeout_s: float = Field(2.0, gt=0, description="Deadline for one pool probe.")
    metrics_refresh_s: float = Field(5.0, gt=0, description="How often the MetricsCollector samples resources.")
    coordinator: ReplicaOptions = Field(
        default_factory=ReplicaOptions,
        description="Coordinator replicas: several (or autoscaled) need the postgres store; resources per replica.",
    )
    manager_cpus: float = Field(0.05, ge=0)
    metrics_cpus: float = Field(0.05, ge=0)

    @model_validator(mode="after")
    def _check_coordinators(self) -> AppConfig:
        scaling = self.coordinator.autoscaling_config
        several = (self.coordinator.num_replicas or 1) > 1 or (scaling is not None and scaling.max_replicas > 1)
        if several and self.workflows.store != "postgres":
            raise ValueError(
                f"several Coordinator replicas need workflows.store: postgres (the {self.workflows.store} store"
                " is local to one replica)"
            )
        if scaling is not None and scaling.min_replicas == 0:
            raise ValueError("the Coordinator is the ingress: coordinator.autoscaling_config.min_replicas must be >= 1")
        return self

    @model_validator(mode="after")
    def _check_routes(self) -> AppConfig:
        seen: dict[str, str] = {}
        for pool, cfg in self.pools.items():
            if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", pool):
                raise ValueError(f"pool name {pool!r} must be letters, digits and '_', starting with a letter")
            for task_type in cfg.task_types:
                if not re.match(NAME_PATTERN, task_type):
                    raise ValueError(f"pool {pool!r}: task type {task_type!r} is not a valid name")
                if task_type in seen:
                    raise ValueError(f"task type {task_type!r} is routed to both pool {seen[task_type]!r} and {pool!r}")
                seen[task_type] = pool
        return self

    def routes(self) -> dict[str, str]:
        """task type -> pool name."""
        return {t: pool for pool, cfg in self.pools.items() for t in cfg.task_types}

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> AppConfig:
        return cls.model_validate(args or {})


def pool_deployment_name(pool: str) -> str:
    """Serve deployment name of a pool, as shown by ``serve status``."""
    return f"HandlerWorker_{pool}"
