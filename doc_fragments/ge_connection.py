"""Connection options shared by the great-escape modules: one libpq endpoint per side."""

_ENDPOINT = r"""
    type: dict
    required: true
    suboptions:
      host:
        description: Host name or address of the PostgreSQL server.
        type: str
        default: localhost
      port:
        description: Port of the PostgreSQL server.
        type: int
        default: 5432
      dbname:
        description: Database to connect to.
        type: str
        required: true
      user:
        description: User to log in as.
        type: str
        required: true
      password:
        description: Password of I(user). Never logged. Prefer I(passfile).
        type: str
      passfile:
        description: A libpq password file (mode 0600) holding the password of I(user).
        type: path
      sslmode:
        description: libpq sslmode, for example C(verify-full) against Aurora.
        type: str
      sslrootcert:
        description: CA bundle for I(sslmode=verify-full).
        type: path
"""

_NOTES = r"""
notes:
  - Runs where the great_escape engine is installed (the replication host, or the controller for local runs).
"""


class ModuleDocFragment:
    # The side changes come from (the on-premises server forward, the target after cutover).
    DOCUMENTATION = r"""
options:
  source:
    description:
      - Where changes come from (the on-premises server for the forward sync, the target after cutover).
      - A dict of libpq parameters.
""" + _ENDPOINT + _NOTES

    # Both sides, for modules that compare or copy between them.
    TARGET = r"""
options:
  target:
    description:
      - Where changes are applied (Aurora for the forward sync). A dict of libpq parameters.
""" + _ENDPOINT
