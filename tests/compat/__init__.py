"""A manual compatibility check of the POP3 client against real servers other than Dovecot.

``python -m tests.compat.run`` (or ``make compat``); not part of the CI test command.
"""
