"""The commands, one module a group: ``worker``, ``listen``, the installer's, ``demo``.

Each ``cmd_*`` function takes the parsed arguments and returns the exit
status; its docstring is the command's ``--help`` description.
"""
