"""Operator tools behind the CLI: the dev broker, the demo, targets check, the
dead-letter tool, the rebuild client and entity history."""
