"""Model loading: dtype, remote-code gate, required packages."""
