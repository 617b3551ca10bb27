"""Server-side decisions: device selection, cut-layer planning, round loops."""
