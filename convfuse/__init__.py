import convfuse.ops  # noqa: F401  registers torch.ops.convfuse.*
