"""serveflow: a workflow/task DAG service on Ray Serve.

Packages by role: ``core`` (shared by client and server: errors, envelopes,
the wire codec, JSON parsing, retry), ``client`` (SDK, CLI, load tool),
``ingress`` (the one request pipeline and its HTTP/gRPC adapters),
``runtime`` (config, handlers, dispatch, tracing, health), ``workflow``
(spec, engine, store). Nothing here imports Ray except ``core.connect``.
"""
