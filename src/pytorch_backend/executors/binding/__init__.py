"""How config names bind to a model's inputs and outputs, shared by the kinds.

``forward``: a forward's argument names and returned values (TorchScript, nn.Module);
``callspec``: a ``.pt2``'s call-spec leaves (AOT-Inductor packages, torch.export programs);
``describe``: what a forward's signature says about a model's I/O, for auto-completion.
"""
