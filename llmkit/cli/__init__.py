"""The `llmkit` command line."""
