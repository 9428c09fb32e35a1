"""gRPC service definition and its generated modules (regenerate with scripts/gen_proto.py)."""
