"""The orchestration service: REST API, persistence and settings (never imports torch)."""
