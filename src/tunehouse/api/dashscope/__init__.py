"""The DashScope dialect: /api/v1 files, fine-tunes and their logs, bearer API keys."""
