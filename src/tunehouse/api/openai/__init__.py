"""The OpenAI dialect: /v1/files and /v1/fine_tuning, bearer API keys."""
