"""The team stack on one machine: PostgreSQL, SeaweedFS S3 and an MLflow server with accounts.

    python -m fmnist.team up        # start what is not running (make team-up); idempotent
    python -m fmnist.team status    # which of the three answer, on which port
    python -m fmnist.team env       # shell exports that point this shell at the stack (eval "$(...)")
    python -m fmnist.team remote    # the DVC remote `team` (S3 on SeaweedFS) in .dvc/config.local
    python -m fmnist.team add-user NAME [--password P]     # an MLflow account; prints its password
    python -m fmnist.team grant NAME EDIT [--experiment E]  # let NAME log runs into E too
    python -m fmnist.team down      # end all three (make team-down); no process is left behind

``fmnist-team`` is the same command. Everything listens on 127.0.0.1 and keeps its data under
``$TEAM_HOME`` (default ``.team/`` in the project's checkout, git-ignored); see ``stack.py`` for
the layout, the ports and the secrets. One module per service (``postgres``, ``seaweedfs``,
``mlflow_server``), the accounts (``accounts``), the process helpers (``process``) and the
command line (``cli``). Nothing here is imported by ``import fmnist``; boto3 and psycopg are
imported only where they are used.
"""
