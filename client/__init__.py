"""Clients of a sessionmesh cluster: ``client.meshctl`` is the operator CLI (``meshctl``).

Nothing is re-exported here on purpose: importing the CLI from the package would make
``python -m client.meshctl`` load it twice.
"""
