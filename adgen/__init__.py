"""adgen: streaming nearline ad retrieval with a generative language model."""

__version__ = "0.1.0"
