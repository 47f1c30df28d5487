"""torch.export programs (``.pt2`` from ``torch.export.save``): the executor and its describer."""
