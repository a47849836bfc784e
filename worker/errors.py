"""Errors that end a command rather than an entry: the operator must fix a setting.

Everything an entry can cause ends as that entry's outcome (see
:mod:`worker.outcomes`); an outage is waited out. What is left is configuration the
worker cannot work with. It is raised as :class:`Misconfigured`, whose message is one
line naming the setting, and the command line prints it and exits with status 1.
"""

from __future__ import annotations


class Misconfigured(Exception):
    """The worker cannot run with this configuration; the message names the setting."""
