"""Tools around a server (CLI, tritonserver launcher, examples builder).

Nothing imported to serve a model imports this subpackage.
"""
