"""AOT-Inductor packages (``model.pt2``): the batch-range probe, the input checks, the executor."""
