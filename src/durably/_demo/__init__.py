"""``durably demo``: the signup flow surviving a SIGKILL."""
