"""Executors run one forward on named, batched torch inputs; they know nothing of Triton.

``registry`` maps each model kind to the factory that loads its artifact.
"""
