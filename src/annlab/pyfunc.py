"""Where MLflow models logged before annlab's code was grouped into parts find their pyfunc: the
`pyfunc_entry.py` stored with each such model imports `annlab.pyfunc.AnnlabModel`, which is now
`annlab.serve.pyfunc.AnnlabModel`. A process that already imported annlab (`annlab predict`)
loads those models through this module."""

from annlab.serve.pyfunc import AnnlabModel

__all__ = ["AnnlabModel"]
