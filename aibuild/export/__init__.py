"""Jobs for the schedulers a team already runs: aibuild writes them, it never schedules.

- ``job``      the request checked against the profile (``ClusterJob``) and the one
               torchrun rendezvous (``Rendezvous``) that every target shares
- ``slurm``    an sbatch script: pyxis/enroot, Apptainer/Singularity or Docker per node;
               ``submit`` runs sbatch
- ``k8s``      an Indexed Job with a headless Service, a Kubeflow Trainer TrainJob, or a
               (legacy) Kubeflow PyTorchJob; Kueue's queue label
- ``skypilot`` a SkyPilot task YAML
- ``compose``  a Compose file for one multi-GPU host

``aibuild run --nodes N`` (``aibuild.run.multinode``) runs the same rendezvous in N
containers on one Docker host.
"""
