"""Workflow modules that test worker processes import (``apps.<name>:app``)."""
