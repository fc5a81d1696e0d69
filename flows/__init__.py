"""The Prefect flows ``elt`` and ``dbt`` (``dbt_build``), and the tasks they share.

Importing the package makes Prefect's synchronous flow runs end without waiting on their
heartbeat thread's sleep (``tributary.prefect_fixes``): deployments load their entrypoints
through it.
"""

from tributary.prefect_fixes import quick_heartbeat_stop

quick_heartbeat_stop()
