"""Workflow DAGs: definitions, validation, persistence and execution."""

from serve_app.workflow.spec import StepRetry, StepSpec, Workflow, WorkflowError, WorkflowSpec, validate

__all__ = ["StepRetry", "StepSpec", "Workflow", "WorkflowError", "WorkflowSpec", "validate"]
