"""cluctl: continual learning with continual unlearning.

The Python API (see README "Python API"):

    from cluctl import api
    ck = api.learn(task=0, dataset="digits", model="mlp", store="store")
    ck = api.learn(task=1, from_ref=ck)
    ck = api.unlearn(task=1, from_ref=ck, algo="neggem")
    table = api.evaluate(ck)
"""

__version__ = "0.1.0"
