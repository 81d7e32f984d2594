"""Pipeline stages, one module per DVC stage; each is run as `python -m annlab.stages.<name>`."""
