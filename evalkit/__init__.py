"""evalkit: evaluate code-generation models in isolated sandboxes."""
