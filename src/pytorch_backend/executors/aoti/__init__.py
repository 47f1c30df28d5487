"""AOT-Inductor packages (``model.pt2``): call-spec naming, the batch-range probe, the executor."""
