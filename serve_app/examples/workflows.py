"""Example workflows built with the Python builder (load with workflows.modules)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from serve_app.workflow import Workflow


class FanoutInput(BaseModel):
    """The run input of ``fanout``: a run with anything else is refused (422) before it exists."""

    seconds: float = Field(ge=0, le=60)


# Fan-out/fan-in: four independent sleeps, then one step that waits for all of them.
fanout = Workflow("fanout", "Four parallel sleeps joined by an echo", input_model=FanoutInput)
sleeps = [fanout.step(f"sleep{i}", "sleep", {"seconds": Workflow.input("seconds")}) for i in range(4)]
fanout.step("join", "echo", {"message": "all done"}, depends_on=sleeps)

# A chain whose middle step is retried on failure.
flaky_chain = Workflow("fib_chain", "fib(n) then echo it")
f = flaky_chain.step("fib", "fib", {"n": Workflow.input("n")}, retry={"max_attempts": 3, "initial_backoff_s": 0.1})
flaky_chain.step("say", "echo", {"message": "computed"}, depends_on=[f])
flaky_chain.output({"value": f.result("value")})

# A map over a run-time list with one child run (fib_chain) per element, at most four at once;
# runs for the same customer wait in line (status queued) until the previous one has finished.
fib_many = Workflow(
    "fib_many",
    "fib_chain for every n in the input, one run per customer at a time",
    concurrency={"key": "${input.customer}", "max_runs": 1},
)
fib_many.step("each", workflow="fib_chain", input={"n": Workflow.item()}, map={"over": Workflow.input("ns"), "max_parallel": 4})
