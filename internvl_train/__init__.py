"""internvl-train: InternVL's three-stage progressive alignment, from a laptop CPU to a SLURM cluster."""

__version__ = "0.1.0"
