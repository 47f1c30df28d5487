"""Executors run one forward over named, already gathered inputs. They know nothing of Triton."""
