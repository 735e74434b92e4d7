"""The replay engine: positions, matching against the journal, suspension.

Nothing in here knows about SQL or workers; a driver feeds it the journal and
completions and executes the commands it emits.
"""
