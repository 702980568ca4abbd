"""Chat templates: the rendering engine and the generic built-in formats."""
