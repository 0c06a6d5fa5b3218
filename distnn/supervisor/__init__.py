"""``python -m distnn.launch``: a supervisor that restarts a training job it watches.

It is not an MPI rank: it runs each attempt as an MPI job, listens to the ranks'
heartbeats, and restarts, shrinks or grows the job from its checkpoints
(:mod:`distnn.supervisor.supervisor`), by rules kept apart in
:mod:`distnn.supervisor.policy`.
"""
