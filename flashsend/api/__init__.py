"""Cross-cutting API pieces: errors, strict input, health endpoints."""
