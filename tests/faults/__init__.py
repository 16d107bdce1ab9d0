"""Fault injection for tests (and nothing else): wrappers that make real code fail at a chosen
moment. Each says what it injects."""
