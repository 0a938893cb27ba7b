"""The pool and backend documents: one schema for the admin API, the state file and the tools."""
