"""Helpers shared by the test suites: validators and fixtures built in code."""
