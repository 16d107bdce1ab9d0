"""`kiln serve`: the inference server for a selected, verified artifact."""
