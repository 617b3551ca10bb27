"""The data plane: tensors as bytes, and the per-round stream between device and server."""
