"""Application graphs: wiring only (``build_app(args) -> Application``)."""
